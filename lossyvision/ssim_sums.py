"""SSIM's Gaussian filtering, per-pixel algebra and sums in one pass per row, compiled with numba.

For each variant of an image SSIM filters three planes (y, y^2, x y) with the 11x11 Gaussian and
then needs per pixel ``p = mu_x mu_y``, ``cs = (2 (E[xy] - p) + C2) / (E[y^2] - mu_y^2 + sigma_x^2 +
C2)`` and ``ssim = (2 p + C1) / (mu_y^2 + mu_x^2 + C1) cs``, but only their per-channel sums over
the valid interior. With OpenCV that is one ``sepFilter2D`` over the three planes and 13 array
operations, each a pass over megabytes of float32 maps, bound by memory traffic. Here each output
row is filtered vertically, then horizontally, into row buffers that stay in the L1 cache and is
combined and summed at once; no map is written. Per 224x224 RGB variant (SSIM + MS-SSIM) on the
development machine: 1.9 ms with OpenCV, see ``tools/bench/prepare.py`` for the effect on a job.

What makes the loops fast (each measured at 224x224x3, the full-scale pass): row slices, so that the
inner loops are plain stride-1 loops that LLVM vectorises (indexing the 2-D arrays inside them
stayed scalar: 470 against 160 us for the algebra); the 11 taps in two passes of at most six input
rows (LLVM vectorises a loop only while the runtime checks that its arrays do not overlap stay under
its limit: one pass over 11 rows stayed scalar, 1.5 ms; one pass per tap stores the buffer 11 times,
0.79 ms; two passes 0.66 ms); the symmetric taps added in pairs before the multiply; and contraction
of multiply-add into FMA (numba's ``fastmath={"contract"}``, which changes only the rounding of
each multiply-add, nothing else of IEEE arithmetic).

The numbers: float32 like the OpenCV path and pytorch-msssim, but the filter sums in another order
(and with FMA), so SSIM and MS-SSIM differ from the OpenCV path's by float32 rounding: up to 1.2e-5
on 64x80 crops at JPEG quality 5, where each path is up to 4e-5 from a float64 computation (this
one the closer in 14 of 18 cases), ~1e-6 on 224x224 crops. tests/test_quality.py runs every
metric test on both paths (pytorch-msssim to 1e-4) and compares them; the maps are accumulated in
float64. quality.py uses the OpenCV path where numba cannot be imported.

Compiled on first use (a second or two) and cached on disk (numba's ``cache=True``: next to this
file, or in the user's cache folder when that is read-only), so later processes only load it.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["kernel"]

_FLAGS = dict(nogil=True, boundscheck=False, error_model="numpy", fastmath={"contract"})
_inline = numba.njit(inline="always", **_FLAGS)


def kernel():
    """The compiled ``sums(y, x, mu_x, den2, g, channels, r0, r1, c0, c1, c1, c2, with_ssim,
    f32, f64) -> (ssim_sums, cs_sums)``: the per-channel float64 sums of the SSIM map (zeros when
    ``with_ssim`` is false) and of the contrast-structure map over output pixels rows [r0, r1) x
    columns [c0, c1), which must lie at least ``len(g) // 2`` pixels inside the planes. ``y`` is the
    variant (uint8 or float32), ``x`` the reference (its own dtype: uint8 reads a quarter of the bytes), ``mu_x, den2 =
    sigma_x^2 + C2`` the reference statistics (``mu_x^2 + C1`` is recomputed: cheaper than reading it), all (H, W * channels) and C-contiguous;
    ``g`` the 11 float32 taps of the Gaussian; ``f32`` and ``f64`` scratch (1-D, at least
    :func:`scratch_sizes` long). (This module imports numba: import it only where
    numba is wanted.)"""
    return _sums


def scratch_sizes(width: int, channels: int, taps: int) -> tuple[int, int]:
    """The float32 and float64 scratch lengths the kernel needs for rows of ``width`` pixels."""
    nv = (width + taps) * channels
    return (3 * taps + 6) * nv, 2 * nv


@_inline
def _taps(r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, g, n, out):
    g0, g1, g2, g3, g4, g5 = g[0], g[1], g[2], g[3], g[4], g[5]
    for k in range(n):
        out[k] = g0 * (r0[k] + r10[k]) + g1 * (r1[k] + r9[k]) + g2 * (r2[k] + r8[k])
    for k in range(n):
        out[k] += g3 * (r3[k] + r7[k]) + g4 * (r4[k] + r6[k]) + g5 * r5[k]


@_inline
def _vertical(ring, g, i0, out):
    """Rows i0 .. i0 + 10 (modulo the ring's 11 slots) of ``ring`` filtered into ``out``."""
    t = ring.shape[0]
    _taps(ring[i0 % t], ring[(i0 + 1) % t], ring[(i0 + 2) % t], ring[(i0 + 3) % t], ring[(i0 + 4) % t],
          ring[(i0 + 5) % t], ring[(i0 + 6) % t], ring[(i0 + 7) % t], ring[(i0 + 8) % t], ring[(i0 + 9) % t],
          ring[(i0 + 10) % t], g, ring.shape[1], out)


@_inline
def _load(y, x, i, k0, k1, ring_y, ring_yy, ring_xy):
    """Row i of the variant (any dtype), its square and its product with the reference, columns
    [k0, k1), into slot i % 11 of the rings (in float32, the products as OpenCV's multiply would)."""
    s = i % ring_y.shape[0]
    yr, xr = y[i, k0:k1], x[i, k0:k1]
    ry, ryy, rxy = ring_y[s], ring_yy[s], ring_xy[s]
    for k in range(k1 - k0):
        a = np.float32(yr[k])
        ry[k] = a
        ryy[k] = a * a
        rxy[k] = xr[k] * a


@_inline
def _horizontal(v, g, c, n, out):
    """``v`` (interleaved channels, ``n + 10 c`` values) filtered along the row into ``out`` (n)."""
    _taps(v[0:n], v[c:c + n], v[2 * c:2 * c + n], v[3 * c:3 * c + n], v[4 * c:4 * c + n], v[5 * c:5 * c + n],
          v[6 * c:6 * c + n], v[7 * c:7 * c + n], v[8 * c:8 * c + n], v[9 * c:9 * c + n], v[10 * c:10 * c + n],
          g, n, out)


def _sums(y, x, mu_x, den2, g, channels, r0, r1, c0, c1, c1_const, c2_const, with_ssim, f32, f64):
    c = channels
    taps = g.shape[0]
    radius = taps // 2
    kv0, kv1 = (c0 - radius) * c, (c1 + radius) * c  # the columns the horizontal pass reads
    k0, n = c0 * c, (c1 - c0) * c
    # the 11 input rows an output row needs, as float32, squared and times the reference: each input
    # row is converted and multiplied once, into a ring of row buffers that stays in the cache
    # row buffers cut from the caller's scratch (no allocation per call: freed and re-allocated
    # buffers cost page faults, which two processes on one machine pay more for than one)
    nv = kv1 - kv0
    ring_y = f32[0:taps * nv].reshape((taps, nv))
    ring_yy = f32[taps * nv:2 * taps * nv].reshape((taps, nv))
    ring_xy = f32[2 * taps * nv:3 * taps * nv].reshape((taps, nv))
    o = 3 * taps * nv
    v0, v1, v2 = f32[o:o + nv], f32[o + nv:o + 2 * nv], f32[o + 2 * nv:o + 3 * nv]
    o += 3 * nv
    mu_y, e_yy, e_xy = f32[o:o + n], f32[o + n:o + 2 * n], f32[o + 2 * n:o + 3 * n]
    acc_cs, acc_ssim = f64[0:n], f64[n:2 * n]
    acc_cs[:] = 0.0
    acc_ssim[:] = 0.0
    two = np.float32(2.0)
    C1 = np.float32(c1_const)
    C2 = np.float32(c2_const)
    for i in range(r0 - radius, r0 + radius):
        _load(y, x, i, kv0, kv1, ring_y, ring_yy, ring_xy)
    for i in range(r0, r1):
        _load(y, x, i + radius, kv0, kv1, ring_y, ring_yy, ring_xy)
        _vertical(ring_y, g, i - radius, v0)
        _vertical(ring_yy, g, i - radius, v1)
        _vertical(ring_xy, g, i - radius, v2)
        _horizontal(v0, g, c, n, mu_y)
        _horizontal(v1, g, c, n, e_yy)
        _horizontal(v2, g, c, n, e_xy)
        mx, d2 = mu_x[i, k0:k0 + n], den2[i, k0:k0 + n]
        # one loop per case: a test inside the loop would stop its vectorisation
        if with_ssim:
            for j in range(n):
                m = mu_y[j]
                p = mx[j] * m
                m2 = m * m
                cs = (two * (e_xy[j] - p) + C2) / ((e_yy[j] - m2) + d2[j])
                acc_cs[j] += cs
                acc_ssim[j] += (two * p + C1) / (m2 + (mx[j] * mx[j] + C1)) * cs
        else:
            for j in range(n):
                m = mu_y[j]
                p = mx[j] * m
                acc_cs[j] += (two * (e_xy[j] - p) + C2) / ((e_yy[j] - m * m) + d2[j])
    ssim_sums = np.zeros(c, np.float64)
    cs_sums = np.zeros(c, np.float64)
    for j in range(n):
        cs_sums[j % c] += acc_cs[j]
        ssim_sums[j % c] += acc_ssim[j]
    return ssim_sums, cs_sums


try:
    _sums = numba.njit(cache=True, **_FLAGS)(_sums)
except RuntimeError:  # numba finds no writable cache folder (read-only install, no home): compile per process
    _sums = numba.njit(**_FLAGS)(_sums)
