"""What the 2-process gloo tests share: a free port, the environment torchrun gives each rank, and
ranks started in spawned processes that cannot block the test run for ever."""

from __future__ import annotations

import socket
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world: int, timeout_s: float = 120) -> dict[str, str]:
    """The variables torchrun sets for ``rank`` on one node (without its agent; MASTER_PORT is the
    caller's), and a process-group timeout short enough that a hang fails the test in minutes."""
    return {"MASTER_ADDR": "127.0.0.1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "LOSSYVISION_DIST_TIMEOUT_S": str(timeout_s)}


def spawn_ranks(fn: Callable, args: tuple, world: int = 2, timeout_s: float = 300) -> None:
    """Run ``fn(rank, *args)`` in ``world`` spawned processes; fail if one exits non-zero or is still
    running after ``timeout_s`` (then every rank left is killed)."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=fn, args=(rank, *args), daemon=True) for rank in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    finally:
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert not hung, f"rank(s) {hung} still running after {timeout_s} s"
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world, f"exit codes {codes}"
