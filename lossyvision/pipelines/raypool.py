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

    # ray.init installs its own SIGTERM handler (log and exit 1); the caller's one (cancel in-flight
    # work, say how to resume, exit 130) must stay in charge.
    main_thread = threading.current_thread() is threading.main_thread()
    term = signal.getsignal(signal.SIGTERM) if main_thread else None
    # A SIGTERM that lands while ray.init runs (its first 3-5 s) meets Ray's C++ fatal-signal handler,
    # which aborts the driver (exit -6; 4 of 6 trials at 4.5-5.8 s, tools/faults/kill_trials.py
    # --signals TERM --executor ray); the rerun is identical all the same. Blocking the signals
    # across ray.init avoids it but Ray's processes inherit the mask, ignore the SIGTERM of
    # ray.shutdown and cost 4 s more per job (12.1-12.4 vs 7.9-8.3 s on the samples), so it is not done.
    try:
        _init(ray, workers, address)
    finally:
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
                ray.shutdown()
            except BaseException:
                pass
        raise
