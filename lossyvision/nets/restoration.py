"""Restoration networks by name: what a generator file's ``arch`` block rebuilds.

``arch`` is ``{"net": NAME, **constructor arguments}``; files written before the registry existed
carry the FineNet generator's arguments only (``width``, ``n_blocks``, ``norm``), so a missing
``net`` means ``finenet``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .finenet import Generator
from .rdn import RDN

#: name -> network class; each takes its ``arch`` entries as keyword arguments and has a ``stride``
RESTORATION_NETS: dict[str, Callable[..., nn.Module]] = {"finenet": Generator, "rdn": RDN}


def normalize_arch(arch: dict) -> dict:
    """``arch`` with its ``net`` entry filled in (old files: finenet)."""
    return {"net": "finenet", **arch}


def build_restoration_net(arch: dict) -> nn.Module:
    """The network an ``arch`` block describes, freshly initialised."""
    kwargs = normalize_arch(arch)
    name = kwargs.pop("net")
    if name not in RESTORATION_NETS:
        raise ValueError(f"unknown restoration network {name!r}; known: {', '.join(sorted(RESTORATION_NETS))}")
    return RESTORATION_NETS[name](**kwargs)


def net_stride(net: nn.Module) -> int:
    """What the input sides of ``net`` must be multiples of (1: anything)."""
    return int(getattr(net, "stride", 1))
