"""Reading PyTorch files given by users: a file of another kind is one clear error, not an unpickling trace."""

from __future__ import annotations

import os
from typing import Any

import torch


class CheckpointError(ValueError):
    """A file given as a checkpoint or state dict is not one (or not of the right kind): a user error."""


def load_torch_file(path: str | os.PathLike, what: str, weights_only: bool = True) -> Any:
    """`torch.load` on the CPU; `what` names the option in the error (e.g. "--checkpoint")."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except MemoryError:
        raise
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ValueError, ... for a file of another kind
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{what} {path} is not a PyTorch checkpoint ({type(e).__name__}: {first})") from None
