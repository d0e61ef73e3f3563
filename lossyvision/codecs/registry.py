"""Codec registry: one decorator, one lookup, wildcard listing (the timm / CompressAI zoo pattern)."""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from .base import Codec, CodecError

__all__ = ["register_codec", "get_codec_class", "names", "create", "from_spec", "parse_spec"]

_REGISTRY: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator adding a codec under ``cls.name``; duplicate names are an error."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"codec name '{cls.name}' is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def names(pattern: str = "*") -> list[str]:
    """Registered codec names matching a shell-style wildcard, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_codec_class(name: str) -> type[Codec]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CodecError(f"unknown codec '{name}'; choose one of {', '.join(names())} (see 'lossyvision codecs')") from None


def create(name: str, q: Any = None, *, bpp: float | None = None, **options: Any) -> Codec:
    """Make a codec by name at native parameter ``q``, or rate-controlled to ``bpp`` bits per pixel.

    >>> create("jpeg", 10).spec
    'jpeg-q10'
    >>> create("j2k", bpp=0.12).spec
    'j2k-bpp0.12'
    """
    cls = get_codec_class(name)
    if bpp is not None:
        if q is not None:
            raise CodecError(f"codec '{name}': give either q or bpp, not both")
        from .ratecontrol import RateControlled

        return RateControlled(cls, bpp, options)
    return cls(q=q, options=dict(options))


_SPEC_RE = re.compile(r"^(?P<name>[a-z0-9]+)(?:-(?P<rest>.*))?$")


def parse_spec(spec: str) -> tuple[str, Any, float | None, dict]:
    """'j2k-r200-nomct' -> ('j2k', 200, None, {'mct': False}); 'jpeg-bpp0.5' -> ('jpeg', None, 0.5, {})."""
    base = spec.split("+", 1)[0]  # derived variants such as 'bpg-qp41+restored' decode as their source
    m = _SPEC_RE.match(base)
    if not m:
        raise CodecError(f"cannot parse codec spec '{spec}'; expected e.g. jpeg-q10, j2k-r200, bpg-qp41, png")
    cls = get_codec_class(m.group("name"))
    tokens = m.group("rest").split("-") if m.group("rest") else []
    q, bpp, options = None, None, {}
    if cls.q_range is not None:
        if not tokens:
            raise CodecError(f"codec spec '{spec}' lacks its parameter, e.g. {cls.name}-{cls.spec_prefix}{cls.q_default}")
        head = tokens.pop(0)
        try:
            if head.startswith("bpp"):
                bpp = float(head[3:])
            elif head.startswith(cls.spec_prefix):
                v = float(head[len(cls.spec_prefix):])
                q = int(v) if v == int(v) else v
            else:
                raise ValueError
        except ValueError:
            raise CodecError(f"codec spec '{spec}': cannot read '{head}'; expected {cls.spec_prefix}<number> or bpp<number>") from None
    for t in tokens:
        if t not in cls.spec_tokens:
            raise CodecError(f"codec spec '{spec}': unknown suffix '{t}'; valid: {', '.join(cls.spec_tokens) or 'none'}")
        key, value = cls.spec_tokens[t]
        options[key] = value
    return cls.name, q, bpp, options


def from_spec(spec: str) -> Codec:
    """The codec a spec string (a variant name) stands for, e.g. for decoding a shard."""
    name, q, bpp, options = parse_spec(spec)
    return create(name, q, bpp=bpp, **options)
