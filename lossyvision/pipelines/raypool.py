"""Run picklable tasks on Ray: one task per item, ``num_cpus=1``, bounded in flight, completion order.

``ray.init`` joins a cluster when ``address`` or ``RAY_ADDRESS`` is given (``host:port`` of the
head, or ``ray://host:10001`` through Ray Client) and starts a quiet local instance otherwise (no
dashboard, no usage stats, logs under the system temp dir).

Failures: a task whose worker process or node dies is retried by Ray (``max_retries``), and once
more here if Ray gives up on it (the tasks must be idempotent, as shard writes are); an exception
raised by the task itself is not retried and reaches the caller as the original exception.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)

# Set in the driver before ray.init so the local raylet and its workers inherit them.
_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
# Storage settings a cluster's workers need to reach the same --src/--out (endpoint, not secrets).
_FORWARD_PREFIXES = ("FSSPEC_",)

MAX_RETRIES = 5  # per task, by Ray, for dead workers and nodes
RESUBMITS = 2  # per task, by us, after Ray's retries are used up
CANCEL_WAIT_S = 10.0  # for force-cancelled tasks to end once the job fails


def init_ray(workers: int | None = None, address: str | None = None) -> int:
    """Start or join Ray; returns the number of CPUs tasks may use."""
    address = address or os.environ.get("RAY_ADDRESS")
    # Ray reads these when it is imported, so they are settled first.
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if not address:
        # A private local instance: its token-auth notice is noise, since nothing else can reach it.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    elif "RAY_AUTH_MODE" not in os.environ and _have_token():
        # A head started with `ray start` turns token auth on when it finds a token, but a driver
        # joining it sends none unless told to, and is refused (InvalidAuthToken). Sending the
        # token to a cluster without auth is harmless (tried both ways).
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    if ray.is_initialized():
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return min(cpus, workers) if workers else cpus
    import signal
    import threading

    # ray.init installs its own SIGTERM handlers (sys.exit(15) from ray.init, exit 1 from the node it
    # starts); the caller's one (cancel in-flight work, say how to resume, exit 130) must stay in
    # charge, during ray.init too: a SIGTERM that came while it ran exited 15 (1 of 5 trials at 6.0 s,
    # tools/faults/kill_trials.py --signals TERM --executor ray). So Ray's Python-level installs are
    # skipped while it runs (through ray._private.utils, where both go), and the caller's handler is
    # put back after it, over the C++ one below.
    main_thread = threading.current_thread() is threading.main_thread()
    term = signal.getsignal(signal.SIGTERM) if main_thread else None
    # Still open: a SIGTERM in the last part of ray.init, once the core worker exists, meets Ray's C++
    # fatal-signal handler, which aborts the driver (exit -6; 4 of 6 trials at 4.5-5.8 s); the rerun
    # is identical all the same. Blocking the signals across ray.init avoids it but Ray's processes
    # inherit the mask, ignore the SIGTERM of ray.shutdown and cost 4 s more per job (12.1-12.4 vs
    # 7.9-8.3 s on the samples), so it is not done.
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    keep = main_thread and callable(term) and callable(getattr(utils, "set_sigterm_handler", None))
    if keep:
        ray_set = utils.set_sigterm_handler
        utils.set_sigterm_handler = lambda handler: None
    try:
        _init(ray, workers, address)
    finally:
        if keep:
            utils.set_sigterm_handler = ray_set
        if main_thread and callable(term):
            signal.signal(signal.SIGTERM, term)
    return _cpus(workers)


def _init(ray, workers: int | None, address: str | None) -> None:
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARD_PREFIXES)}
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
        kwargs.pop("include_dashboard")  # a setting of the cluster, not of a connecting driver
        _connect(ray, address, kwargs)
    else:
        # "local": always a new instance, never one found through /tmp/ray (another user's, or a dead job's)
        ray.init(address="local", num_cpus=workers or os.cpu_count(), **kwargs)


def _connect(ray, address: str, kwargs: dict) -> None:
    """ray.init on a cluster. Through Ray Client (ray://), the head starts a server process per
    driver, and that start sometimes fails at once with nothing in its logs (seen in about 1 of 4
    first connections to a fresh cluster here); a second attempt gets a new server."""
    tries = 3 if address.startswith("ray://") else 1
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, **kwargs)
            return
        except ConnectionError as e:
            if attempt == tries or "Initialization failure from server" not in str(e):
                raise
            log.warning("Ray Client could not start a server for this driver (attempt %d of %d); trying again", attempt, tries)
            ray.shutdown()
            time.sleep(2.0)


def _have_token() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def _cpus(workers: int | None) -> int:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(cpus, workers) if workers else cpus)


# How often the in-flight limit follows the cluster's CPU count (an autoscaler adding nodes mid-job).
RESIZE_EVERY_S = 15.0


def run_ray(fn: Callable[[Any], Any], tasks: Iterable[Any], workers: int | None = None, address: str | None = None) -> Iterator[Any]:
    """Yield ``fn(task)`` results in completion order, keeping about 2 tasks per CPU in flight."""
    cpus = init_ray(workers, address)  # first: it sets the environment Ray reads on import
    import ray
    from ray.exceptions import RayError, RayTaskError

    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(fn)
    limit = max(1, 2 * cpus)
    resized = time.monotonic()
    it = iter(tasks)
    in_flight: dict = {}  # ref -> (task, resubmits so far)
    try:
        while True:
            if time.monotonic() - resized > RESIZE_EVERY_S:
                resized, new = time.monotonic(), 2 * _cpus(workers)
                if new != limit:
                    log.info("cluster now has %d CPUs for this job: %d tasks in flight", new // 2, new)
                    limit = new
            while len(in_flight) < limit:
                try:
                    t = next(it)
                except StopIteration:
                    break
                in_flight[remote.remote(t)] = (t, 0)
            if not in_flight:
                return
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            t, tries = in_flight.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except RayTaskError as e:
                if isinstance(e.cause, Exception):
                    raise e.cause from None  # the task's own error (disk full, bad input), as itself
                raise
            except RayError as e:  # the worker or node died more often than Ray retries
                if tries >= RESUBMITS:
                    raise
                log.warning("a task failed outside its code (%s); submitting it again", type(e).__name__)
                in_flight[remote.remote(t)] = (t, tries + 1)
                continue
            yield res
    except BaseException as e:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        if in_flight and isinstance(e, Exception):
            # A failed job (disk full...): let the cancelled tasks end before the caller removes the
            # temp files their workers die holding. Not on a signal: Ray is shutting down then, and
            # the next run's start-up cleanup removes them.
            try:
                ray.wait(list(in_flight), num_returns=len(in_flight), timeout=CANCEL_WAIT_S)
            except Exception:
                pass
        if not isinstance(e, Exception):
            # Interrupted: shut Ray down here, in the main flow. Left to its atexit hook after a
            # KeyboardInterrupt, the driver's core worker segfaulted (exit -11) in 3 of 5 SIGINT trials
            # (tools/faults/kill_trials.py --signals INT --executor ray, Ray 2.x); here in 0 of 10.
            try:
                shutdown_ray()  # a second Ctrl-C waits for it (see there), then ends the job all the same
            except BaseException:
                pass
        raise


def ray_started() -> bool:
    """True when this process has a Ray up, or half up (a ray.init that a signal cut short)."""
    import sys

    worker = sys.modules.get("ray._private.worker")
    if worker is None:
        return False
    return bool(getattr(worker, "_global_node", None) is not None or getattr(worker.global_worker, "connected", False))


def shutdown_ray(as_interrupt: bool = False) -> None:
    """``ray.shutdown()`` that SIGINT and SIGTERM cannot cut short: one that lands meanwhile is held
    and delivered (to the handler of before) once Ray is down; with ``as_interrupt``, either ends as
    a KeyboardInterrupt then (a command's Ctrl-C path: ``interrupted``, exit 130).

    A KeyboardInterrupt raised inside ray.shutdown (seen in its 0.5 s log-flush sleep, in disconnect,
    just after the core worker's shutdown_driver, and while it stops the raylet) leaves the driver half
    torn down for the interpreter's teardown: the core worker still running, or its Python object
    outliving its C++ side, and the node's processes up. A signal that came as a job ended did that
    to atexit's ray.shutdown (18 of 18 such trials here: exit 0 after "Exception ignored in atexit
    callback"), and that is the window of the one SIGINT that segfaulted (exit -11, 8.9 s into an
    11 s job, tools/faults/kill_trials.py --executor ray). A four-task driver with a SIGINT in that
    sleep crashed at exit in 3 of 4 runs (abort: libc's exit handlers destroy the core worker,
    CoreWorkerProcess::HandleAtExit -> ~CoreWorker -> TaskEventBufferImpl::FlushEvents, std::bad_alloc),
    and in 0 of 6 with this. Only the main thread can hold signals; elsewhere this is a plain
    ray.shutdown()."""
    import signal
    import sys
    import threading

    import ray

    if threading.current_thread() is not threading.main_thread():
        ray.shutdown()
        _refresh_faulthandler()
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)

    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        h = signal.getsignal(s)
        # None: a handler set outside Python, which could not be put back; SIG_IGN: ignored (a job
        # started with nohup or `&`), and it stays so
        if h is not None and h != signal.SIG_IGN:
            old[s] = signal.signal(s, hold)
    # The core worker's shutdown puts Ray's fatal-signal handlers back to SIG_DFL at the C level,
    # SIGTERM's and SIGSEGV's among them (Python's record of them stays as it was): a SIGTERM in the
    # rest of the shutdown then killed the driver at once (-15), so the holding starts again before
    # the node's processes are stopped, and faulthandler (PYTHONFAULTHANDLER=1) is put back after.
    node = getattr(sys.modules.get("ray._private.worker"), "_global_node", None)
    if node is not None and old:
        kill_all = node.kill_all_processes

        def kill_all_held(*args: Any, **kwargs: Any) -> Any:
            for s in old:
                signal.signal(s, hold)
            return kill_all(*args, **kwargs)

        node.kill_all_processes = kill_all_held
    try:
        ray.shutdown()
    finally:
        if node is not None:
            node.__dict__.pop("kill_all_processes", None)  # its atexit hook gets the method itself
        for s, h in old.items():
            signal.signal(s, h)
        _refresh_faulthandler()
    if held:
        if as_interrupt:
            raise KeyboardInterrupt
        signal.raise_signal(held[0])  # the handler of before runs now: KeyboardInterrupt, or the caller's own


def _refresh_faulthandler() -> None:
    """faulthandler's SIGSEGV handler again, when it was on: ray.init replaced it with Ray's and
    ray.shutdown left SIG_DFL, so a crash after it printed nothing."""
    import faulthandler

    if faulthandler.is_enabled():
        faulthandler.disable()
        faulthandler.enable(all_threads=True)
