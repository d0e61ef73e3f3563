"""An epoch counter that persistent DataLoader workers see.

A DataLoader with ``persistent_workers=True`` keeps the dataset copies it made when the workers
started, so a plain ``dataset.epoch = n`` in the main process never reaches them and every epoch
would repeat the first one's order. The counter lives in a one-element shared-memory tensor:
forked workers inherit the mapping and spawned ones receive it through torch.multiprocessing's
shared-memory pickling, so ``set(n)`` before an epoch's ``iter(loader)`` is what every worker
reads when that epoch's iterator starts.
"""

from __future__ import annotations

import torch


class SharedEpoch:
    def __init__(self, epoch: int = 0) -> None:
        self._t = torch.full((1,), int(epoch), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._t[0] = int(epoch)

    def get(self) -> int:
        return int(self._t[0])

    def __int__(self) -> int:
        return self.get()

    def __repr__(self) -> str:
        return f"SharedEpoch({self.get()})"
