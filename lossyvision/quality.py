"""Image-quality metrics on uint8 RGB: PSNR, SSIM, MS-SSIM.

Bottom layer of the package (imports only its own kernel, lossyvision.ssim_sums): shard preparation and
evaluation both use it.

Definitions
-----------
- **PSNR** as CompressAI computes it: MSE over all pixels and all three channels of the uint8
  images, ``20 log10(255) - 10 log10(MSE)``; ``inf`` for identical images.
- **SSIM** of Wang et al. 2004 (the definition both papers cite), exactly as pytorch-msssim
  computes it: 11x11 Gaussian window with sigma 1.5, K1=0.01, K2=0.03, data range 255, "valid"
  filtering (no padding), mean over the map of each channel, then over the three channels.
  scikit-image's *default* SSIM (7x7 box window, sample covariance) is a different number.
- **MS-SSIM** of Wang et al. 2003 as pytorch-msssim computes it (5 scales, its weights, 2x2
  average pooling with zero padding for odd sizes). It needs a short side larger than
  ``(11 - 1) * 2**4 = 160`` pixels; for smaller images :func:`ms_ssim` returns ``None``.

Speed and memory: the reference-side statistics are computed once per image and reused for every
variant (:class:`Reference`), MS-SSIM's four coarser scales are packed into one canvas (scale 2
beside a column of scales 3-5) so that they cost one pass instead of four, and the per-variant work
(filtering y, y^2 and x y, the per-pixel algebra and the sums) runs in one compiled pass per row
(:mod:`lossyvision.ssim_sums`, numba) that writes no map: 1.38-1.41 against 1.82-1.90 ms per 224x224
variant (SSIM + MS-SSIM + PSNR) for the OpenCV path, A/B in one process (6 photos x 3 settings, 4
rounds). Where numba is missing the OpenCV path runs: one ``sepFilter2D`` call per statistic set (the
variant's square and its product with the reference stacked into one float32 array, the variant's
mean filtered straight from uint8), SSIM's luminance term only where it is used, products in float32
(OpenCV multiplies float32 pairs in SIMD, uint8 pairs into float32 not: 57 against 25 us per
224x224x3), OpenCV's ``sumElems`` for the sums, and scratch arrays kept per thread for the next call
(:func:`_workspace`: fresh ones cost more in page faults than the arithmetic). Its history per
variant: 5.5-6.4 ms at first, 3.4-3.7 ms with one filter call per set, 2.7 ms with the scratch reuse,
1.9 ms with the packing, the uint8 filter and the float32 products; numexpr (1.1 against 0.22 ms for
the algebra) and a first numba version of the algebra alone (indexing 2-D arrays in the inner loop,
which LLVM left scalar) were slower. The two paths agree to float32 rounding (3e-5; tested). PSNR
uses OpenCV's ``norm`` (exact integer sums).

Images larger than ``STRIP_PIXELS`` are measured in horizontal strips of rows with a 10-row halo,
so the float32 working set is bounded by the strip, not the image: 'valid' filtering makes every
output row depend on its 11 input rows only, so the strips give the same maps (summation order
differs by < 1e-6). Such images recompute the reference statistics per strip (the filtering costs
5/3 of the cached path) rather than keeping ~48 bytes per pixel for the whole image. Memory of one
:class:`Reference` of an H x W image: the caller's uint8 arrays, the reference's coarser MS-SSIM
scales (4 bytes per pixel in float32: 1/4 + 1/16 + ... of 12), and at most ~170 bytes per pixel
of one strip (~45 MB). The reference holds no reference cycle, so it is freed as soon as it goes
out of scope (the old pyramid listed the object itself and waited for the cycle collector: 1.1 GB
per 12 MP image).
Results agree with pytorch-msssim to 1e-4 (tests/test_quality.py), strips or not.
"""

from __future__ import annotations

import importlib
import math
import os
import threading

import numpy as np

__all__ = ["psnr", "mse", "ssim", "ms_ssim", "Reference", "MS_SSIM_WEIGHTS", "MS_SSIM_MIN_SIDE"]

WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03
DATA_RANGE = 255.0
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIDE = (WIN_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1  # 161

_C1 = (K1 * DATA_RANGE) ** 2
_C2 = (K2 * DATA_RANGE) ** 2


def _gauss_1d() -> np.ndarray:
    coords = np.arange(WIN_SIZE, dtype=np.float32) - WIN_SIZE // 2
    g = np.exp(-(coords**2) / (2 * WIN_SIGMA**2))
    return (g / g.sum()).astype(np.float32)


_GAUSS = _gauss_1d()


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}; compare the same crop")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {a.shape}")


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error over all pixels and channels (uint8 scale)."""
    _check_pair(a, b)
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == np.uint8 and b.dtype == np.uint8 and a.size:
        # the exact integer sum of squared differences (OpenCV accumulates in double), ~10x numpy
        return _cv2().norm(np.ascontiguousarray(a), np.ascontiguousarray(b), _cv2().NORM_L2SQR) / a.size
    d = a.astype(np.float32) - b.astype(np.float32)
    return float(np.mean(d * d, dtype=np.float64))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (``inf`` when identical)."""
    m = mse(a, b)
    if m == 0:
        return math.inf
    return 20 * math.log10(DATA_RANGE) - 10 * math.log10(m)


# Strips of at most this many pixels (per channel) bound the float32 working set of the metrics;
# images up to this size are one strip, and their reference statistics are cached across variants.
STRIP_PIXELS = 1 << 18
_R = WIN_SIZE // 2


def _cv2():
    import cv2  # heavy import kept out of module import time

    return cv2


def _hwc(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)  # OpenCV takes C-contiguous arrays; no copy when already so
    return a[..., None] if a.ndim == 2 else a


def _strips(h: int, w: int) -> list[tuple[int, int]]:
    """Input row ranges covering the valid output rows [0, h - 2r) in strips of <= STRIP_PIXELS."""
    if h * w <= STRIP_PIXELS:
        return [(0, h)]
    step = max(1, STRIP_PIXELS // w - 2 * _R)
    return [(o0, min(o0 + step, h - 2 * _R) + 2 * _R) for o0 in range(0, h - 2 * _R, step)]


def _stack(x: np.ndarray, k: int, st: np.ndarray | None = None) -> np.ndarray:
    """A (k, n, W, C) float32 stack whose plane 0 holds ``x`` (n x W x C), the others to be filled
    (``st``, when given, is reused)."""
    if st is None:
        st = np.empty((k, *x.shape), dtype=np.float32)
    st[0] = x
    return st


def _filter(st: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gaussian filtering of every plane of a (k, n, W, C) stack in one OpenCV call ('same' size,
    reflect borders: the caller keeps only the valid interior, which equals unpadded filtering).
    Rows near the seams between planes mix them, but those are exactly the rows dropped.
    ``out``, when given, is a float32 array of the same shape written in place."""
    cv2 = _cv2()
    k, n, w, c = st.shape
    if out is None:
        out = cv2.sepFilter2D(st.reshape(k * n, w, c), cv2.CV_32F, _GAUSS, _GAUSS, borderType=cv2.BORDER_REFLECT)
        return out.reshape(k, n, w, c)
    cv2.sepFilter2D(st.reshape(k * n, w, c), cv2.CV_32F, _GAUSS, _GAUSS, dst=out.reshape(k * n, w, c),
                    borderType=cv2.BORDER_REFLECT)
    return out


def _interior(n: int, w: int) -> tuple[int, int, int, int]:
    """The valid pixels (rows r0:r1, columns c0:c1) of the 'same'-size maps of an n x w strip."""
    return _R, n - _R, _R, w - _R


def _sums(m: np.ndarray) -> np.ndarray:
    """Per-channel float64 sums over the valid interior of an (n, W, C) map."""
    return _sum_rect(m, _interior(*m.shape[:2]))


def _ref_stats(x: np.ndarray, work: tuple | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mu_x, mu_x^2 + C1, sigma_x^2 + C2) of a strip: the terms that depend on the reference
    only; x as float32 for the OpenCV path, as it is for the fused kernel (which reads uint8 as is).
    With ``work`` (:func:`_workspace` of the strip's shape) the square is taken in its scratch
    stack; the returned arrays are fresh either way."""
    st = _stack(x, 2, work[0][:2] if work is not None else None)
    xf = x if _kernel() is not None else st[0].copy()
    np.multiply(st[0], st[0], out=st[1])
    f = _filter(st)
    mu, fxx = f[0], f[1]
    mu_sq = mu * mu
    fxx -= mu_sq
    fxx += _C2
    mu_sq += _C1
    # float32, because OpenCV multiplies float32 by float32 in SIMD and uint8 by uint8 to float32 not
    return xf, mu, mu_sq, fxx


# Scratch arrays of _maps, per thread, for the last few strip shapes (a 224x224 job uses two: the
# full scale and the canvas of the coarser ones) and only up to WORKSPACE_BYTES each.
WORKSPACE_BYTES = 16 << 20
_WORKSPACE_SHAPES = 2
_local = threading.local()


def _workspace(shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Scratch arrays of :func:`_maps` for an (n, W, C) strip (the stack, its filtered copy, a map),
    reused by later calls of the same thread with the same shape; ``None`` when too large to keep.

    Fresh megabyte-sized arrays on every call cost more than the arithmetic on them: each is
    mmapped or the heap is trimmed and grown again, and the page faults of touching ~4 MB took
    2/3 of the time of a 224x224 variant (4.4 ms against 1.9 ms), depending on how earlier
    allocations happened to lie. Callers use what :func:`_maps` returns before the next call."""
    shape = tuple(shape)
    if 28 * math.prod(shape) > WORKSPACE_BYTES:
        return None
    cache = getattr(_local, "work", None)
    if cache is None:
        cache = _local.work = {}
    work = cache.pop(shape, None)
    if work is None:
        work = (np.empty((3, *shape), dtype=np.float32), np.empty((3, *shape), dtype=np.float32),
                np.empty((shape[0], shape[1] * shape[2]), dtype=np.float32))
        while len(cache) >= _WORKSPACE_SHAPES:
            del cache[next(iter(cache))]  # the least recently used
    cache[shape] = work  # most recent last
    return work


def _filtered(x: np.ndarray, y: np.ndarray, work: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """The variant's 'same'-size filtered statistics (mu_y, E[y^2], E[xy]) against the reference
    strip ``x`` (float32), as one (3, n, W, C) float32 array, and ``y`` as float32."""
    cv2 = _cv2()
    st = _stack(y, 3, work[0] if work is not None else None)
    yf = st[0]
    cv2.multiply(yf, yf, dst=st[1])  # exact: products of integers below 2^24 in float32
    cv2.multiply(x, yf, dst=st[2])
    if y.dtype == np.uint8:
        # mu_y filtered straight from uint8: OpenCV's 8U -> 32F filter reads a quarter of the bytes
        f = work[1] if work is not None else np.empty_like(st)
        _filter(st[1:], f[1:])
        _filter(y[None], f[:1])
    else:
        f = _filter(st, work[1] if work is not None else None)
    return f, yf


def _maps(ref: tuple, y: np.ndarray, with_ssim: bool | tuple[int, int, int, int],
          work: tuple | None = None) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """SSIM map (or None), contrast-structure map (both 'same'-size, n x W x C; only the interior is
    valid) of ``y`` against the reference statistics ``ref`` of the same rows, and ``y`` as float32:
    the OpenCV path, where numba is missing (:mod:`lossyvision.ssim_sums` does the same arithmetic
    in one pass). ``with_ssim`` may be a window (r0, r1, c0, c1) of the map: the SSIM map is then
    that window's only (MS-SSIM needs SSIM at its coarsest scale alone, a corner of the canvas of
    scales 2-5). ``work`` (from :func:`_workspace`), when given, holds every array it returns."""
    cv2 = _cv2()
    x, mu_x, den1, den2 = ref
    x = np.asarray(x, dtype=np.float32)  # statistics made for the fused kernel hold x as it was
    p_buf = work[2] if work is not None else None
    f, yf = _filtered(x, y, work)
    shape = f.shape[1:]
    flat = (-1, shape[1] * shape[2])
    mu_y, fyy, fxy = (f[i].reshape(flat) for i in range(3))
    p = cv2.multiply(mu_x.reshape(flat), mu_y, dst=p_buf)  # mu_x mu_y
    my2 = cv2.multiply(mu_y, mu_y, dst=mu_y)
    sxy = cv2.subtract(fxy, p, dst=fxy)
    # 2 sigma_xy + C2; sigma_xy first, as sigma_y^2 below, so identical images give exactly 1
    cs = cv2.addWeighted(sxy, 2.0, sxy, 0.0, _C2, dst=sxy)
    den = cv2.subtract(fyy, my2, dst=fyy)
    den = cv2.add(den, den2.reshape(flat), dst=den)  # sigma_x^2 + sigma_y^2 + C2
    cs = cv2.divide(cs, den, dst=cs)
    cs_map = cs.reshape(shape)
    if with_ssim is False:
        return None, cs_map, yf
    d1 = den1.reshape(flat)
    if with_ssim is not True:
        r0, r1, c0, c1 = with_ssim
        c = shape[2]
        shape = (r1 - r0, c1 - c0, c)
        p, my2, d1, cs = (a[r0:r1, c0 * c:c1 * c] for a in (p, my2, d1, cs))
    lum = cv2.addWeighted(p, 2.0, p, 0.0, _C1, dst=p)  # 2 mu_x mu_y + C1
    ld = cv2.add(my2, d1, dst=my2)
    lum = cv2.divide(lum, ld, dst=lum)
    lum = cv2.multiply(lum, cs, dst=lum)
    return lum.reshape(shape), cs_map, yf


# The fused kernel (lossyvision.ssim_sums): None = use it when numba imports, False = always the
# OpenCV path (tests and A/B benchmarks set this), True = require it. The environment variable
# LOSSYVISION_SSIM_KERNEL=numba|opencv sets it for every process of a job (Ray workers included).
FUSED: bool | None = {"numba": True, "opencv": False}.get(os.environ.get("LOSSYVISION_SSIM_KERNEL", "").lower())
_NO_NUMBA = False
_FUSED_MODULE = None  # lossyvision.ssim_sums once imported: the hot path looks it up, not the import system


def _kernel():
    global _NO_NUMBA, _FUSED_MODULE
    if FUSED is False or (_NO_NUMBA and not FUSED):
        return None
    if _FUSED_MODULE is None:
        try:
            ssim_sums = importlib.import_module(".ssim_sums", __package__)
        except ImportError:
            if FUSED:
                raise
            _NO_NUMBA = True
            return None
        _FUSED_MODULE = ssim_sums
    return _FUSED_MODULE.kernel()


def _scratch(shape: tuple) -> tuple | None:
    """:func:`_workspace` for the OpenCV path; None with the fused kernel, which needs none."""
    return _workspace(shape) if _kernel() is None else None


Rect = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1 of a map, in pixels


def _rect_sums(ref: tuple, y: np.ndarray, cs_rects: list[Rect], ssim_rect: Rect | None,
               work: tuple | None = None) -> tuple[np.ndarray | None, list[np.ndarray], np.ndarray]:
    """Per-channel float64 sums of the SSIM map over ``ssim_rect`` (None: not wanted) and of the
    contrast-structure map over each of ``cs_rects`` (rectangles of valid map pixels, i.e. at least
    the filter radius from the strip's edges), ``y`` against the reference statistics ``ref`` of
    the same rows; and ``y`` as float32 where the OpenCV path made it (None from the fused kernel,
    which never converts ``y`` whole). ``work`` is the OpenCV path's scratch (:func:`_scratch`)."""
    kern = _kernel()
    if kern is None:
        n, w = y.shape[:2]
        window: bool | Rect = False
        if ssim_rect is not None:
            r0, r1, c0, c1 = ssim_rect
            window = (r0 - _R, r1 + _R, c0 - _R, c1 + _R)
            window = True if window == (0, n, 0, w) else window
        ssim_map, cs_map, yf = _maps(ref, y, window, work)
        ssim_sum = None if ssim_map is None else _sums(ssim_map)
        return ssim_sum, [_sum_rect(cs_map, r) for r in cs_rects], yf
    x, mu_x, den1, den2 = ref
    n, w, c = y.shape
    planes = tuple(a.reshape(n, w * c) for a in (np.ascontiguousarray(y), np.ascontiguousarray(x), mu_x, den2)) + (_GAUSS,)
    f32, f64 = _kernel_scratch(w, c)
    ssim_sum = both = None
    if ssim_rect is not None:
        r0, r1, c0, c1 = ssim_rect
        ssim_sum, both = kern(*planes, c, r0, r1, c0, c1, _C1, _C2, True, f32, f64)  # the cs sums come with it
    cs_sums = [both if rect == ssim_rect else kern(*planes, c, *rect, _C1, _C2, False, f32, f64)[1]
               for rect in cs_rects]
    return ssim_sum, cs_sums, None


def _kernel_scratch(width: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The fused kernel's row buffers for rows up to ``width`` pixels, kept per thread (a few hundred
    kB; a wider image replaces them)."""
    n32, n64 = _FUSED_MODULE.scratch_sizes(width, channels, WIN_SIZE)
    have = getattr(_local, "kernel_scratch", None)
    if have is None or have[0].size < n32 or have[1].size < n64:
        have = _local.kernel_scratch = (np.empty(n32, np.float32), np.empty(n64, np.float64))
    return have


def _sum_rect(m: np.ndarray, rect: Rect) -> np.ndarray:
    r0, r1, c0, c1 = rect
    v = m[r0:r1, c0:c1]
    if v.shape[2] <= 4:  # OpenCV's sum: double accumulators, one pass over interleaved channels
        return np.asarray(_cv2().sumElems(v)[: v.shape[2]], dtype=np.float64)
    return v.sum(axis=1).sum(axis=0, dtype=np.float64)


class _Level:
    """One scale of the reference (HxWxC, any numeric dtype) and, when it is a single strip, its
    cached statistics."""

    __slots__ = ("x", "h", "w", "cache")

    def __init__(self, x: np.ndarray):
        self.x = x
        self.h, self.w = x.shape[:2]
        self.cache: tuple | None = None

    def stats(self) -> tuple:
        """The reference statistics of the whole level, computed once (single-strip levels only)."""
        if self.cache is None:
            self.cache = _ref_stats(self.x, _workspace(self.x.shape))
        return self.cache

    def sums(self, y: np.ndarray, cs_only: bool) -> tuple[np.ndarray | None, np.ndarray, int, np.ndarray | None]:
        """Per-channel sums of the SSIM and contrast-structure maps against ``y`` (same shape), the
        number of map pixels per channel, and ``y`` as float32 when it was converted in one piece."""
        ssim_sum = cs_sum = None
        strips = _strips(self.h, self.w)
        single = len(strips) == 1
        y32 = None
        for r0, r1 in strips:
            ref = self.stats() if single else _ref_stats(self.x[r0:r1])
            inner = _interior(r1 - r0, self.w)
            part_ssim, (part,), yf = _rect_sums(ref, y[r0:r1], [inner], None if cs_only else inner,
                                                _scratch(self.x.shape) if single else None)
            if single:
                y32 = yf
            cs_sum = part if cs_sum is None else cs_sum + part
            if part_ssim is not None:
                ssim_sum = part_ssim if ssim_sum is None else ssim_sum + part_ssim
        return ssim_sum, cs_sum, (self.h - 2 * _R) * (self.w - 2 * _R), y32


class _Canvas:
    """MS-SSIM's coarser scales of a small image packed into one array, so that every scale is
    filtered and combined in one pass of calls instead of one per scale: scale 2 at the left, scales
    3.. stacked in a column to its right (they are at most half as tall, so together they fit beside
    it), zeros in the gaps. Each scale's valid interior only reaches its own pixels, so the bands do
    not mix; on a 224x224 crop this halves the cost of scales 2-5, and the 2-D packing fills 89 % of
    the canvas against 71 % for the bands stacked in one column."""

    __slots__ = ("bands", "buf", "level")

    def __init__(self, levels: list[np.ndarray]):
        self.bands, height, width = self.layout(levels)
        # one zeroed buffer for the variants' scales: the bands are overwritten, the gaps stay zero
        self.buf = np.zeros((height, width, levels[0].shape[2]), dtype=np.float32)
        self.level = _Level(self.fill(levels).copy())

    @staticmethod
    def layout(levels: list[np.ndarray]) -> tuple[list[tuple[int, int, int, int]], int, int]:
        """The bands (row, column, height, width) of these scales and the canvas's height and width."""
        first, rest = levels[0], levels[1:]
        bands = [(0, 0, first.shape[0], first.shape[1])]
        row, col = 0, first.shape[1]
        for lv in rest:
            bands.append((row, col, lv.shape[0], lv.shape[1]))
            row += lv.shape[0]
        return bands, max(first.shape[0], row), col + max((lv.shape[1] for lv in rest), default=0)

    def fill(self, levels: list[np.ndarray]) -> np.ndarray:
        for (r0, c0, h, w), lv in zip(self.bands, levels):
            self.buf[r0:r0 + h, c0:c0 + w] = lv
        return self.buf

    def per_scale(self, levels: list[np.ndarray]) -> list[np.ndarray]:
        """Per-channel contrast-structure means of scales 2..n-1 and the SSIM mean of the last."""
        inner = [(r + _R, r + h - _R, c + _R, c + w - _R) for r, c, h, w in self.bands]
        ssim_sum, cs_sums, _ = _rect_sums(self.level.stats(), self.fill(levels), inner[:-1], inner[-1],
                                          _scratch(self.level.x.shape))
        valid = [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in inner]
        return [s / n for s, n in zip(cs_sums, valid)] + [ssim_sum / valid[-1]]


class Reference:
    """Reference-side SSIM statistics, computed once and reused for every variant of an image.

    Holds the caller's array (no copy when it is C-contiguous) and, lazily, float32 coarser scales for MS-SSIM; nothing
    refers back to the object, so it is freed as soon as the caller drops it."""

    def __init__(self, ref: np.ndarray):
        a = _hwc(ref)
        if a.ndim != 3:
            raise ValueError(f"expected an HxW or HxWxC image, got shape {np.shape(ref)}")
        if min(a.shape[:2]) < WIN_SIZE:
            raise ValueError(f"SSIM needs images of at least {WIN_SIZE}x{WIN_SIZE} pixels, got {a.shape[:2]}")
        self.shape = a.shape
        self._top = _Level(a)
        self._coarser: list[_Level] | _Canvas | None = None

    def _check(self, other: np.ndarray) -> np.ndarray:
        b = _hwc(other)
        if b.shape != self.shape:
            raise ValueError(f"images differ in shape: {self.shape} vs {b.shape}; compare the same crop")
        return b

    def ssim(self, other: np.ndarray) -> float:
        s, _, n, _ = self._top.sums(self._check(other), cs_only=False)
        return float((s / n).mean())

    def scores(self, other: np.ndarray, with_ms_ssim: bool = True) -> tuple[float, float | None]:
        """(SSIM, MS-SSIM) against ``other``; the full-scale pass is shared by both, and the
        reference's coarser scales are built once per reference."""
        b = self._check(other)
        s, cs, n, b32 = self._top.sums(b, cs_only=False)
        ssim_val = float((s / n).mean())
        if not with_ms_ssim or min(self.shape[:2]) < MS_SSIM_MIN_SIDE:
            return ssim_val, None
        if self._coarser is None:
            lv = _pyramid(self._top.x)
            # small images: all coarser scales in one canvas; large ones: scale by scale, in strips
            _, height, width = _Canvas.layout(lv)
            self._coarser = _Canvas(lv) if height * width <= STRIP_PIXELS else [_Level(x) for x in lv]
        mcs = [np.maximum(cs / n, 0.0)]
        ys = _pyramid(b32 if b32 is not None else b)
        if isinstance(self._coarser, _Canvas):
            mcs += [np.maximum(v, 0.0) for v in self._coarser.per_scale(ys)]
        else:
            for i, (level, y) in enumerate(zip(self._coarser, ys)):
                last = i == len(ys) - 1
                s_i, cs_i, n_i, _ = level.sums(y, cs_only=not last)
                # the coarsest scale contributes its full SSIM, the others their contrast-structure term
                mcs.append(np.maximum((s_i if last else cs_i) / n_i, 0.0))
        w = np.asarray(MS_SSIM_WEIGHTS)
        return ssim_val, float(np.prod(np.stack(mcs, axis=0) ** w[:, None], axis=0).mean())


def _pyramid(x: np.ndarray) -> list[np.ndarray]:
    """Scales 2..5 of MS-SSIM: repeated 2x2 average pooling."""
    lv = [_avg_pool2(x)]
    while len(lv) < len(MS_SSIM_WEIGHTS) - 1:
        lv.append(_avg_pool2(lv[-1]))
    return lv


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, Gaussian 11x11, sigma 1.5) of two uint8 images, in [-1, 1]."""
    _check_pair(a, b)
    return Reference(a).ssim(b)


def _avg_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling of an HxWxC image to float32, with zero padding on odd sides as torch's
    avg_pool2d(padding=s%2) (the output is (h + 2p - 2)//2 + 1 rows). Works in strips of rows, so a
    uint8 image is never copied whole to float32; OpenCV's INTER_AREA at exactly 1/2 is the 2x2 mean."""
    h, w, c = x.shape
    ph, pw = h % 2, w % 2
    oh, ow = h // 2 + ph, w // 2 + pw
    cv2 = _cv2()
    out = np.empty((oh, ow, c), dtype=np.float32)
    step = max(1, STRIP_PIXELS // (2 * w))
    for j0 in range(0, oh, step):
        j1 = min(oh, j0 + step)
        s0, s1 = 2 * j0 - ph, 2 * j1 - ph  # source rows; row -1 is the zero padding at the top
        if ph or pw:
            block = np.zeros((s1 - s0, 2 * ow, c), dtype=np.float32)
            block[max(0, -s0):, pw:pw + w] = x[max(s0, 0):s1]
        else:
            block = np.asarray(x[s0:s1], dtype=np.float32)
        out[j0:j1] = cv2.resize(block, (ow, j1 - j0), interpolation=cv2.INTER_AREA).reshape(j1 - j0, ow, c)
    return out


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM of two uint8 images; ``None`` when the short side is <= 160 px (too few scales)."""
    _check_pair(a, b)
    if min(np.asarray(a).shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    return Reference(a).scores(b)[1]


def ms_ssim_db(value: float | None) -> float | None:
    """MS-SSIM on a decibel scale, ``-10 log10(1 - MS-SSIM)`` (paper 2's Table III); ``inf`` at 1,
    ``None`` for ``None``. It spreads out the values near 1 that high-quality images all have."""
    if value is None:
        return None
    if value >= 1:
        return math.inf
    return -10 * math.log10(1 - value)
