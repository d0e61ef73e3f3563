"""torch.distributed for the trainers: a process group that cannot hang for ever, per-rank
randomness, global batches, and work that only one process per node should do.

Timeout: NCCL's watchdog kills a collective that waits longer than the process group's timeout
(10 minutes by default). Every long phase that used to run on rank 0 while the others waited in a
barrier (the teacher-cache build, the final segmentation evaluation) is now split over the ranks,
so no barrier waits for more than ~1/world of such a phase; the timeout is 30 minutes by default
(``LOSSYVISION_DIST_TIMEOUT_S`` or ``timeout_s=``), room for one rank's share of an ImageNet-sized
phase on a slow node, and short enough that a hung job fails within the hour instead of burning
its allocation.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from lossyvision.pipelines.stream import OptionError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800
TIMEOUT_ENV = "LOSSYVISION_DIST_TIMEOUT_S"


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def timeout_seconds(timeout_s: float | None = None) -> float:
    """``timeout_s``, else ``$LOSSYVISION_DIST_TIMEOUT_S``, else 1800."""
    if timeout_s is not None:
        value = timeout_s
    else:
        raw = os.environ.get(TIMEOUT_ENV)
        try:
            value = float(raw) if raw else DEFAULT_TIMEOUT_S
        except ValueError:
            raise OptionError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise OptionError(f"the process-group timeout must be positive, got {value!r} s")
    return float(value)


def init_distributed(device_type: str, timeout_s: float | None = None) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistInfo(local_rank=local_rank)
    import torch.distributed as dist

    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_seconds(timeout_s)))
        here = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, here)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        torch.distributed.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over the ranks in place (a no-op with one process); returns ``t``."""
    if info.distributed:
        torch.distributed.all_reduce(t)
    return t


def destroy(info: DistInfo) -> None:
    """Leave the process group if this module created it (a clean NCCL shutdown, no warning at exit)."""
    if info.initialized_here and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def local_rank_zero_first(info: DistInfo) -> Iterator[None]:
    """Run the body on each node's local rank 0 first, then on the other ranks: one download of
    pretrained weights per node into the shared cache instead of one per GPU at once. Local rank 0
    reaches the barrier even when its body raises, so the others then run the body themselves (and
    fail the same way, or succeed) instead of waiting for the process-group timeout."""
    if info.distributed and info.local_rank != 0:
        barrier(info)
    try:
        yield
    finally:
        if info.distributed and info.local_rank == 0:
            barrier(info)


def per_rank_seed(seed: int, rank: int) -> int:
    """A distinct, reproducible seed per rank (rank 0 keeps ``seed``)."""
    return int(seed) + 1_000_003 * int(rank)


def seed_rank(seed: int, rank: int) -> int:
    s = per_rank_seed(seed, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def per_process_batch(global_batch: int, world_size: int) -> int:
    """The per-process batch for a global batch over ``world_size`` processes."""
    if global_batch < 1:
        raise OptionError(f"--global-batch must be at least 1, got {global_batch}")
    if global_batch % world_size:
        raise OptionError(f"--global-batch {global_batch} does not divide over {world_size} processes; "
                          f"use a multiple of {world_size}")
    return global_batch // world_size


def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch CPU, this process's CUDA device), as plain
    lists and tensors so a checkpoint loads with ``weights_only=True``."""
    v, state, gauss = random.getstate()
    s = np.random.get_state()
    out = {"python": [v, list(state), gauss],
           "numpy": [s[0], torch.from_numpy(s[1].astype(np.int64)), s[2], s[3], s[4]],
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict) -> None:
    v, st, gauss = state["python"]
    random.setstate((v, tuple(st), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states(info: DistInfo) -> list[dict]:
    """Every rank's ``rng_state()``, in rank order (a collective: call it on every rank)."""
    mine = rng_state()
    if not info.distributed:
        return [mine]
    out: list = [None] * info.world_size
    torch.distributed.all_gather_object(out, mine)
    return out


def restore_rng_states(states: list[dict] | None, info: DistInfo, seed: int, epoch: int = 0) -> str:
    """Restore this rank's saved RNG state; with another world size (or no per-rank states) re-seed
    every rank from ``seed``, the epoch and its rank instead. Returns a line saying which it did."""
    if states and len(states) == info.world_size:
        set_rng_state(states[info.rank])
        return f"restored the RNG state of each of {info.world_size} rank(s)"
    s = seed_rank(seed + 7919 * int(epoch), info.rank)
    saved = len(states) if states else 0
    return (f"the checkpoint holds RNG states for {saved} rank(s) and this run has {info.world_size}: "
            f"re-seeded each rank from seed {seed}, epoch {epoch} and its rank (rank {info.rank}: {s})")
