"""Run picklable tasks on Ray: one task per item, ``num_cpus=1``, bounded in flight, completion order.

``ray.init`` joins a cluster when ``address`` or ``RAY_ADDRESS`` is given and starts a quiet
local instance otherwise (no dashboard, no usage stats, logs under the system temp dir).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)

# Set in the driver before ray.init so the local raylet and its workers inherit them.
_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def init_ray(workers: int | None = None, address: str | None = None) -> int:
    """Start or join Ray; returns the number of CPUs tasks may use."""
    import ray

    if ray.is_initialized():
        return int(ray.cluster_resources().get("CPU", 1))
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A private local instance: its token-auth notice is noise, since nothing else can reach it.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=workers or os.cpu_count(), **kwargs)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return min(cpus, workers) if workers else cpus


def run_ray(fn: Callable[[Any], Any], tasks: Iterable[Any], workers: int | None = None, address: str | None = None) -> Iterator[Any]:
    """Yield ``fn(task)`` results in completion order, keeping about 2 tasks per CPU in flight."""
    import ray

    cpus = init_ray(workers, address)
    remote = ray.remote(num_cpus=1, max_retries=3)(fn)
    limit = max(1, 2 * cpus)
    it = iter(tasks)
    in_flight: list = []
    try:
        while True:
            while len(in_flight) < limit:
                try:
                    in_flight.append(remote.remote(next(it)))
                except StopIteration:
                    break
            if not in_flight:
                return
            ready, in_flight = ray.wait(in_flight, num_returns=1)
            yield ray.get(ready[0])
    except BaseException:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise
