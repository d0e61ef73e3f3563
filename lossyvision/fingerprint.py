"""Fingerprints of model weights: one sha256 that names a state dict exactly (bottom level: imports nothing of lossyvision)."""

from __future__ import annotations

import hashlib
from typing import Any


def state_dict_sha256(module_or_state_dict: Any, *, dtypes: bool = True) -> str:
    """sha256 over a state dict's entries in name order: name, shape, dtype and raw bytes of each.

    The algorithm of ``lossyvision.train.teacher_cache.weights_fingerprint`` plus the dtype (a
    float32 and an int32 tensor of the same shape and bytes are different weights); with
    ``dtypes=False`` it is exactly that function, so its existing cache files keep their fingerprint.
    """
    import torch

    state = module_or_state_dict.state_dict() if hasattr(module_or_state_dict, "state_dict") else module_or_state_dict
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        if dtypes:
            h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

