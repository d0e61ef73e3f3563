"""Rate control: per image, the native parameter whose rate is closest to a target without exceeding it;
per dataset, the one parameter whose mean rate over a sample is closest to a target (:func:`choose_parameter`).

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
from dataclasses import dataclass, field
from typing import Any, Callable

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


# -- one parameter for a whole dataset -----------------------------------------------------------


@dataclass
class MeanRateChoice:
    """The parameter :func:`choose_parameter` picked, with every probe's mean rate."""

    q: Any
    mean_bpp: float
    tried: list[tuple[Any, float]] = field(default_factory=list)  # (q, mean bpp) in probe order
    bracketed: bool = True  # False: the target lies beyond what the parameter range reaches


def parameter_ladder(cls: type[Codec]) -> list[Any] | None:
    """Every integer parameter of ``cls`` from the lowest rate to the highest; None for continuous ones."""
    if cls.lossless or cls.q_range is None:
        raise CodecError(f"codec '{cls.name}' is lossless; a rate target needs a lossy codec")
    if not cls.q_integer:
        return None
    lo, hi = int(cls.q_range[0]), int(cls.q_range[1])
    return list(range(lo, hi + 1)) if cls.q_direction > 0 else list(range(hi, lo - 1, -1))


def round_continuous(q: float) -> float:
    """A continuous parameter at 3 significant digits: variant names stay short (j2k-r187) and one
    step (~0.5 %) moves the rate far less than the sample's own spread."""
    v = float(f"{q:.3g}")
    return int(v) if v == int(v) else v


def choose_parameter(cls: type[Codec], target: float, mean_bpp: Callable[[Any], float]) -> MeanRateChoice:
    """The parameter whose ``mean_bpp(q)`` is closest to ``target`` bits per pixel.

    Integer parameters: bisection over the ladder with virtual ends (the extremes are only encoded
    when the target lies near them), ending on two neighbours whose rates bracket the target, of
    which the closer wins; about log2(range) probes (6 for a QP, 7 for JPEG quality, 3-4 for MSH's
    eight levels). Continuous ones (the J2K ratio): bisection in log space between the harshest
    ratio and 1, on 3-significant-digit values, until the midpoint repeats or CONTINUOUS_STEPS."""
    seen: dict[Any, float] = {}
    tried: list[tuple[Any, float]] = []

    def f(q: Any) -> float:
        if q not in seen:
            seen[q] = float(mean_bpp(q))
            tried.append((q, seen[q]))
        return seen[q]

    ladder = parameter_ladder(cls)
    if ladder is not None:
        lo, hi = -1, len(ladder)  # invariant: rate(lo) <= target < rate(hi), the ends being virtual
        while hi - lo > 1:
            m = (lo + hi) // 2
            if f(ladder[m]) <= target:
                lo = m
            else:
                hi = m
        found = [ladder[i] for i in (lo, hi) if 0 <= i < len(ladder)]
        bracketed = lo >= 0 and hi < len(ladder)
    else:
        harsh = float(cls.q_range[1])
        mild = 1.0 if cls.q_range[0] <= 0 else float(cls.q_range[0])  # ratio 0 means lossless, not "mildest lossy"
        if cls.q_direction > 0:
            harsh, mild = mild, harsh
        a, b = math.log(harsh), math.log(mild)
        for _ in range(CONTINUOUS_STEPS):
            m = round_continuous(math.exp((a + b) / 2))
            if m in seen:
                break
            if f(m) <= target:
                a = math.log(m)
            else:
                b = math.log(m)
        found = list(seen)
        bracketed = any(v <= target for v in seen.values()) and any(v > target for v in seen.values())
    best = min(found, key=lambda q: (abs(seen[q] - target), -seen[q]))
    return MeanRateChoice(best, seen[best], tried, bracketed)
