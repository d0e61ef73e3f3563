"""Rate control: per image, the native parameter whose rate is closest to a target without exceeding it.

Bisection over the codec's monotone parameter: integer parameters (JPEG quality, QP) are searched
exactly (about log2(range) encodes); continuous ones (the J2K ratio) in log space for a fixed
number of steps. The result is the best *achievable* rate <= target: for integer parameters
the achievable rates are a discrete set (one HEVC QP step is ~10 % of the rate), so the landing
point can be further below the target than for J2K. If even the harshest setting exceeds the
target, that setting is used and the sample is flagged ``over_target``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .base import Codec, CodecError, EncodeResult, check_rgb

CONTINUOUS_STEPS = 14


class RateControlled(Codec):
    """A codec wrapper whose ``encode`` picks q per image for a target bpp."""

    def __init__(self, cls: type[Codec], bpp: float, options: dict | None = None):
        if cls.lossless or cls.q_range is None:
            raise CodecError(f"codec '{cls.name}' is lossless; rate control needs a lossy codec")
        try:
            bpp = float(bpp)
        except (TypeError, ValueError):
            raise CodecError(f"target bpp must be a number, got {bpp!r}") from None
        if not 0 < bpp < 48:
            raise CodecError(f"target bpp {bpp} is out of range; use a value in (0, 48), e.g. 0.5")
        self.base = cls(q=None, options=dict(options or {}))
        self.bpp = bpp
        self.q = None
        self.options = dict(options or {})
        self.name = cls.name
        self.q_name = cls.q_name
        self.last_over_target = False

    @property
    def ext(self) -> str:  # type: ignore[override]
        return self.base.ext

    @property
    def spec(self) -> str:
        return f"{self.name}-bpp{self.bpp:g}{self.base.spec_suffix()}"

    def versions(self) -> dict[str, str]:  # type: ignore[override]
        return self.base.versions()

    def info(self) -> dict:
        d = self.base.info()
        d.update(spec=self.spec, q=None, target_bpp=self.bpp)
        return d

    def search(self, rgb: np.ndarray) -> tuple[Any, bytes, bool]:
        """(q, bitstream, over_target) for the best rate <= target."""
        rgb = check_rgb(rgb)
        h, w = rgb.shape[:2]
        budget = self.bpp * h * w / 8.0  # bytes
        cls = type(self.base)
        lo, hi = cls.q_range
        cache: dict[Any, bytes] = {}

        def enc(q: Any) -> bytes:
            if q not in cache:
                cache[q] = self.base.with_q(q).encode(rgb)
            return cache[q]

        # Orient the search so that t in [a, b] grows with the rate.
        if cls.q_direction > 0:
            harsh, mild = lo, hi
        else:
            harsh, mild = hi, lo
        if cls.name == "j2k":
            harsh, mild = hi, 1.0  # ratio 0 means lossless, not "mildest lossy"
        if len(enc(harsh)) > budget:
            return harsh, enc(harsh), True
        if len(enc(mild)) <= budget:
            return mild, enc(mild), False
        if cls.q_integer:
            a, b = int(harsh), int(mild)  # invariant: rate(a) <= budget < rate(b)
            while abs(b - a) > 1:
                m = (a + b) // 2
                if len(enc(m)) <= budget:
                    a = m
                else:
                    b = m
            best = a
        else:
            la, lb = math.log(harsh), math.log(mild)
            for _ in range(CONTINUOUS_STEPS):
                m = round(math.exp((la + lb) / 2), 4)
                if len(enc(m)) <= budget:
                    la = math.log(m)
                else:
                    lb = math.log(m)
            # the largest rate under budget among every setting tried (rates are not strictly monotone)
            best = max((q for q, d in cache.items() if len(d) <= budget), key=lambda q: len(cache[q]))
        return best, enc(best), False

    def encode(self, rgb: np.ndarray) -> bytes:
        q, data, over = self.search(rgb)
        self.q, self.last_over_target = q, over
        return data

    def decode(self, data: bytes) -> np.ndarray:
        return self.base.decode(data)

    def roundtrip(self, rgb: np.ndarray) -> EncodeResult:
        rgb = check_rgb(rgb)
        t0 = time.perf_counter()
        q, data, over = self.search(rgb)
        t1 = time.perf_counter()
        dec = self.base.decode(data)
        t2 = time.perf_counter()
        self.q, self.last_over_target = q, over
        return EncodeResult(data, dec, q, (t1 - t0) * 1e3, (t2 - t1) * 1e3)
