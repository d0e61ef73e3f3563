"""Codec base class: input checks, timing, rate maths and version reporting live here once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = ["Codec", "CodecError", "EncodeResult", "check_rgb"]


class CodecError(ValueError):
    """A codec could not encode or decode; the message says what to change."""


@dataclass
class EncodeResult:
    """One encode + decode round trip with its cost."""

    data: bytes  # the whole bitstream as transmitted, headers included
    decoded: np.ndarray  # uint8 HxWx3
    q: float | int | None  # native parameter actually used (the chosen one under rate control)
    enc_ms: float
    dec_ms: float

    @property
    def bytes(self) -> int:
        return len(self.data)

    def bpp(self) -> float:
        h, w = self.decoded.shape[:2]
        return len(self.data) * 8.0 / (h * w)


def check_rgb(rgb: Any) -> np.ndarray:
    """Return ``rgb`` as a C-contiguous uint8 HxWx3 array or raise a CodecError saying why not."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        raise CodecError(f"expected a uint8 image, got dtype {a.dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)")
    if a.ndim != 3 or a.shape[2] != 3:
        hint = "convert grey images with np.stack([g]*3, -1) and drop alpha with rgb[..., :3]"
        raise CodecError(f"expected an HxWx3 RGB image, got shape {a.shape}; {hint}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise CodecError(f"empty image of shape {a.shape}")
    return np.ascontiguousarray(a)


@dataclass
class Codec:
    """Base class: subclasses implement ``_encode``/``_decode`` and declare their parameter.

    ``q`` is the codec's native parameter (JPEG quality, J2K compression ratio, HEVC QP, ...).
    """

    q: Any = None
    options: dict = field(default_factory=dict)

    name: ClassVar[str] = ""
    ext: ClassVar[str] = ""
    q_name: ClassVar[str] = "q"  # what q means, for tables and errors
    q_range: ClassVar[tuple[float, float] | None] = None  # inclusive; None for parameterless codecs
    q_integer: ClassVar[bool] = True
    q_default: ClassVar[Any] = None
    # +1 when larger q means more bytes (JPEG quality), -1 when it means fewer (QP, ratio)
    q_direction: ClassVar[int] = 1
    lossless: ClassVar[bool] = False
    spec_prefix: ClassVar[str] = "q"  # spec is f"{name}-{spec_prefix}{q}"
    spec_tokens: ClassVar[dict[str, tuple[str, Any]]] = {}  # spec suffix -> (option, value)
    description: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.q is None:
            self.q = self.q_default
        if self.q_range is not None:
            self.q = self._check_q(self.q)
        self._check_options()

    # -- subclass hooks -------------------------------------------------------------
    def _encode(self, rgb: np.ndarray) -> bytes:
        raise NotImplementedError

    def _decode(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def _check_options(self) -> None:
        """Validate ``self.options``; subclasses with options override this."""
        if self.options:
            raise CodecError(f"codec '{self.name}' takes no options, got {sorted(self.options)}")

    def spec_suffix(self) -> str:
        """Extra spec text for non-default options (e.g. '-nomct')."""
        return ""

    def check_ready(self) -> None:
        """Raise CodecError now if this codec cannot run here (missing weights or library), so a job
        fails before any work instead of listing every image as a failure."""

    @staticmethod
    def versions() -> dict[str, str]:
        return {}

    # -- public API -----------------------------------------------------------------
    @property
    def spec(self) -> str:
        """Short stable id such as 'jpeg-q10', 'j2k-r200', 'bpg-qp41' (used as variant name)."""
        if self.q_range is None:
            return self.name + self.spec_suffix()
        return f"{self.name}-{self.spec_prefix}{_fmt_q(self.q)}{self.spec_suffix()}"

    def with_q(self, q: Any) -> "Codec":
        """A copy of this codec at another native parameter."""
        return type(self)(q=q, options=dict(self.options))

    def encode(self, rgb: np.ndarray) -> bytes:
        """uint8 HxWx3 RGB -> the whole bitstream (headers included)."""
        return bytes(self._encode(check_rgb(rgb)))

    def decode(self, data: bytes) -> np.ndarray:
        """Bitstream -> uint8 HxWx3 RGB; a corrupt bitstream raises CodecError."""
        if not data:
            raise CodecError(f"{self.spec}: empty bitstream")
        try:
            out = self._decode(bytes(data))
        except CodecError:
            raise
        except Exception as e:  # libraries raise anything from RuntimeError to their own types
            raise CodecError(f"{self.spec}: cannot decode bitstream ({type(e).__name__}: {e})") from e
        out = np.asarray(out)
        if out.ndim == 2:
            out = np.repeat(out[..., None], 3, axis=2)
        return np.ascontiguousarray(out[..., :3], dtype=np.uint8)

    def roundtrip(self, rgb: np.ndarray) -> EncodeResult:
        """Encode and decode once, timing both (milliseconds of wall time)."""
        rgb = check_rgb(rgb)
        t0 = time.perf_counter()
        data = self.encode(rgb)
        t1 = time.perf_counter()
        dec = self.decode(data)
        t2 = time.perf_counter()
        if dec.shape != rgb.shape:
            raise CodecError(f"{self.spec}: decoded shape {dec.shape} differs from input {rgb.shape}")
        return EncodeResult(data, dec, self.q, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    def info(self) -> dict:
        """Name, spec, parameters and library versions, for manifests."""
        return {
            "name": self.name,
            "spec": self.spec,
            "ext": self.ext,
            "q": self.q,
            "q_name": self.q_name,
            "options": dict(self.options),
            "versions": self.versions(),
        }

    # -- helpers --------------------------------------------------------------------
    def _check_q(self, q: Any) -> Any:
        lo, hi = self.q_range
        try:
            v = float(q)
        except (TypeError, ValueError):
            raise CodecError(f"codec '{self.name}': {self.q_name} must be a number in [{_fmt_q(lo)}, {_fmt_q(hi)}], got {q!r}") from None
        if self.q_integer and v != int(v):
            raise CodecError(f"codec '{self.name}': {self.q_name} must be an integer in [{_fmt_q(lo)}, {_fmt_q(hi)}], got {q!r}")
        if not lo <= v <= hi:
            raise CodecError(f"codec '{self.name}': {self.q_name} {_fmt_q(v)} is out of range; use {_fmt_q(lo)}..{_fmt_q(hi)}")
        return int(v) if self.q_integer else (int(v) if v == int(v) else v)

    def _bool_option(self, key: str, default: bool) -> bool:
        v = self.options.get(key, default)
        if isinstance(v, str):
            if v.lower() in ("1", "true", "yes", "on"):
                return True
            if v.lower() in ("0", "false", "no", "off"):
                return False
            raise CodecError(f"codec '{self.name}': option {key} must be true or false, got {v!r}")
        return bool(v)

    def _only_options(self, *allowed: str) -> None:
        bad = sorted(set(self.options) - set(allowed))
        if bad:
            raise CodecError(f"codec '{self.name}': unknown option(s) {bad}; valid options: {', '.join(allowed) or 'none'}")


def _fmt_q(q: Any) -> str:
    v = float(q)
    return str(int(v)) if v == int(v) else f"{v:g}"
