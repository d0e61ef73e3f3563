"""Image-quality metrics on uint8 RGB: PSNR, SSIM, MS-SSIM.

Bottom layer of the package (imports nothing else of lossyvision): shard preparation and
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

Speed: the Gaussian filtering uses OpenCV's separable float32 filter (about 1 ms for a 224x224
RGB pair here, against 3-6 ms for pytorch-msssim or scikit-image on the CPU), and the
reference-side statistics can be computed once and reused for every variant of the same
image (:class:`Reference`). Results agree with pytorch-msssim to 1e-4 (tests/test_quality.py).
"""

from __future__ import annotations

import math

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
    d = a.astype(np.float32) - b.astype(np.float32)
    return float(np.mean(d * d, dtype=np.float64))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (``inf`` when identical)."""
    m = mse(a, b)
    if m == 0:
        return math.inf
    return 20 * math.log10(DATA_RANGE) - 10 * math.log10(m)


def _filter(x: np.ndarray) -> np.ndarray:
    """Gaussian 'valid' filtering of a planar CxHxW float32 array (each plane separately)."""
    import cv2  # heavy import kept out of module import time

    c, h, w = x.shape
    r = WIN_SIZE // 2
    # The planes are stacked vertically into one 2-D image: one single-channel call (OpenCV's fastest
    # path). Rows near the seams mix planes, but those are exactly the border rows cropped below.
    out = cv2.sepFilter2D(x.reshape(c * h, w), cv2.CV_32F, _GAUSS, _GAUSS, borderType=cv2.BORDER_REFLECT)
    # 'same' filtering then cropping the border equals pytorch-msssim's unpadded convolution.
    return out.reshape(c, h, w)[:, r:-r, r:-r]


def _planar(x: np.ndarray) -> np.ndarray:
    """HxW or HxWxC -> contiguous CxHxW float32."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[..., None]
    return np.ascontiguousarray(np.moveaxis(x, 2, 0), dtype=np.float32)


def _plane_means(m: np.ndarray) -> np.ndarray:
    return m.reshape(m.shape[0], -1).sum(axis=1, dtype=np.float64) / (m.shape[1] * m.shape[2])


class Reference:
    """Reference-side SSIM statistics, computed once and reused for every variant of an image."""

    def __init__(self, ref: np.ndarray, _planar_input: bool = False):
        x = ref if _planar_input else _planar(ref)
        if min(x.shape[1:]) < WIN_SIZE:
            raise ValueError(f"SSIM needs images of at least {WIN_SIZE}x{WIN_SIZE} pixels, got {x.shape[1:]}")
        self.x = x
        self.mu = _filter(x)
        self.mu_sq = self.mu * self.mu
        self.sigma_sq = _filter(x * x)
        self.sigma_sq -= self.mu_sq
        self.den1 = self.mu_sq + _C1  # terms that depend on the reference only
        self.den2 = self.sigma_sq + _C2

    def ssim_and_cs(self, other: np.ndarray, _planar_input: bool = False, _cs_only: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
        """Per-channel SSIM and contrast-structure terms (float64 arrays of length C)."""
        y = other if _planar_input else _planar(other)
        if y.shape != self.x.shape:
            raise ValueError(f"images differ in shape: {self.x.shape} vs {y.shape} (CxHxW)")
        mu_y = _filter(y)
        mu_y_sq = mu_y * mu_y
        sigma_y_sq = _filter(y * y)
        sigma_y_sq -= mu_y_sq
        sigma_xy = _filter(self.x * y)
        mu_y *= self.mu  # now mu_x * mu_y
        sigma_xy -= mu_y
        # cs = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2), in place to keep memory traffic low
        sigma_xy *= 2
        sigma_xy += _C2
        sigma_y_sq += self.den2
        cs_map = np.divide(sigma_xy, sigma_y_sq, out=sigma_xy)
        if _cs_only:  # MS-SSIM's intermediate scales use only the contrast-structure term
            return None, _plane_means(cs_map)
        mu_y *= 2
        mu_y += _C1
        mu_y_sq += self.den1
        lum = np.divide(mu_y, mu_y_sq, out=mu_y)
        cs = _plane_means(cs_map)
        lum *= cs_map
        return _plane_means(lum), cs

    def ssim(self, other: np.ndarray) -> float:
        s, _ = self.ssim_and_cs(other)
        return float(s.mean())

    def scores(self, other: np.ndarray, with_ms_ssim: bool = True) -> tuple[float, float | None]:
        """(SSIM, MS-SSIM) against ``other``; the full-scale pass is shared and the reference's
        pyramid is computed once per reference, so each extra variant costs about half."""
        y = _planar(other)
        s0, cs0 = self.ssim_and_cs(y, _planar_input=True)
        if not with_ms_ssim or min(self.x.shape[1:]) < MS_SSIM_MIN_SIDE:
            return float(s0.mean()), None
        return float(s0.mean()), _ms_ssim_from(self._pyramid(), y, cs0)

    def _pyramid(self) -> list["Reference"]:
        if getattr(self, "_pyr", None) is None:
            pyr = [self]
            for _ in range(len(MS_SSIM_WEIGHTS) - 1):
                pyr.append(Reference(_avg_pool2(pyr[-1].x), _planar_input=True))
            self._pyr = pyr
        return self._pyr


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, Gaussian 11x11, sigma 1.5) of two uint8 images, in [-1, 1]."""
    _check_pair(a, b)
    return Reference(a).ssim(b)


def _avg_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling of CxHxW with zero padding on odd sides, as torch's avg_pool2d(padding=s%2)."""
    _, h, w = x.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        # torch pads both sides by `padding` and floors the output size: (h + 2p - 2)//2 + 1
        x = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
        oh, ow = (h + 2 * ph - 2) // 2 + 1, (w + 2 * pw - 2) // 2 + 1
        x = x[:, : 2 * oh, : 2 * ow]
    return np.ascontiguousarray(0.25 * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]))


def _ms_ssim_from(pyr: list[Reference], y: np.ndarray, cs0: np.ndarray) -> float:
    mcs = [np.maximum(cs0, 0.0)]
    for i, ref in enumerate(pyr[1:], start=2):
        y = _avg_pool2(y)
        last = i == len(pyr)
        s, cs = ref.ssim_and_cs(y, _planar_input=True, _cs_only=not last)
        # the coarsest scale contributes its full SSIM, the others their contrast-structure term
        mcs.append(np.maximum(s if last else cs, 0.0))
    w = np.asarray(MS_SSIM_WEIGHTS)
    val = np.prod(np.stack(mcs, axis=0) ** w[:, None], axis=0)
    return float(val.mean())


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM of two uint8 images; ``None`` when the short side is <= 160 px (too few scales)."""
    _check_pair(a, b)
    if min(np.asarray(a).shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    return Reference(a).scores(b)[1]
