"""Segmentation augmentation that resizes only the crop: random scale, pad, crop and flip.

:func:`random_scale_crop_flip` returns, for the same ``rng`` state, the same pixels as resizing the whole
frame with ``F.interpolate`` (bilinear, ``align_corners=False``; labels ``nearest-exact``), padding and
cropping (the function it replaces in :mod:`lossyvision.train.segmentation`), but it computes only the
output pixels inside the crop window: at scale 2 a 768 crop of a 1024x2048 frame needs 0.6 M of the
8.4 M resized pixels. Where the window is most of the scaled frame (small scales) it resizes the whole
frame as before, which is then the cheaper way.

Why the arithmetic below looks the way it does: interpolate cannot resize a sub-region onto the whole
frame's sampling grid (its source coordinate ``(dst + 0.5) * in / out - 0.5`` is computed from the
output index of the tensor it is given), so this module computes the same coordinates and weights for
the window's output indices and gathers the four neighbours from the cropped source region itself (a
separable gather; nothing else is resized). To be bit-identical it also repeats the kernel's rounding:
PyTorch's CPU kernel takes one of two code paths (a 4-term weighted sum when one thread resizes a
3-channel image or the output is small, else a separable horizontal-then-vertical pass; see
``upsample_bilinear2d_kernel_impl_float`` in ATen's UpSampleKernel.cpp) and, in x86 builds with FMA
(established on the AVX2 build of torch 2.14), its compiler fuses some multiply-adds. A one-time probe per process and code path
(:func:`matches_interpolate`) checks which rounding reproduces ``F.interpolate`` on this machine; a
fused multiply-add is emulated in float64, where the products of these float32 operands are exact.
If neither does (an unknown build), the plain float32 rounding is used: then about one value in 10^5
differs by one grey level (measured against the fused build); the label maps are identical whatever the
build, their indices being read off ``F.interpolate`` itself.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from lossyvision.pipelines.classlists import IGNORE_INDEX

# Below this ratio of scaled-frame to window pixels (scales up to ~0.9 for a 768 crop of a 1024x2048
# frame) the whole-frame resize is cheaper: ATen's fused loop costs about a third per pixel of the
# gathers and float64 passes below, and cropping first would save little.
_WHOLE_FRAME_RATIO = 3

# code path -> (fused multiply-adds?, reproduces F.interpolate exactly?), filled by matches_interpolate
_ROUNDING: dict[str, tuple[bool, bool]] = {}


def random_scale_crop_flip(image: torch.Tensor, label: torch.Tensor, crop: int, scale: tuple[float, float],
                           flip: bool, rng: random.Random,
                           ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale, pad, crop and flip a uint8 3xHxW image and uint8 HxW train-id map identically.

    Same draws from ``rng`` (scale, top, left, flip) and same output as resizing the whole frame first:
    the image bilinearly, the labels with nearest neighbour (no new ids), both on the half-pixel grid;
    padding 0 for the image and ``ignore_index`` for the labels. Returns uint8 3xcxc, uint8 cxc.
    """
    h, w = label.shape
    s = rng.uniform(*scale)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    top, left = rng.randrange(max(nh, crop) - crop + 1), rng.randrange(max(nw, crop) - crop + 1)
    # the scaled frame is padded at the bottom and right only, so its part of the window starts at (0, 0)
    vh, vw = min(crop, nh - top), min(crop, nw - left)
    if (nh, nw) == (h, w):
        region, labels = image[:, top:top + vh, left:left + vw], label[top:top + vh, left:left + vw]
    elif nh * nw <= _WHOLE_FRAME_RATIO * vh * vw:  # the window is most of the scaled frame: resize it all
        region = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
        region = region[:, top:top + vh, left:left + vw].round().clamp(0, 255).to(torch.uint8)
        labels = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0]
        labels = labels[top:top + vh, left:left + vw].to(torch.uint8)
    else:
        region = _bilinear_window(image, nh, nw, top, vh, left, vw)
        labels = _nearest_window(label, nh, nw, top, vh, left, vw)
    out_image = region if (vh, vw) == (crop, crop) else image.new_zeros((image.shape[0], crop, crop))
    out_label = labels if (vh, vw) == (crop, crop) else label.new_full((crop, crop), ignore_index)
    if (vh, vw) != (crop, crop):
        out_image[:, :vh, :vw], out_label[:vh, :vw] = region, labels
    if flip and rng.random() < 0.5:
        out_image, out_label = out_image.flip(-1), out_label.flip(-1)
    return out_image.contiguous(), out_label.contiguous()


# -- labels: nearest-exact -----------------------------------------------------------------------

def _nearest_index(n_in: int, n_out: int, other_out: int, dim: int) -> torch.Tensor:
    """The source index F.interpolate(nearest-exact) takes for each output index along ``dim`` (-2 or -1).

    Read off the kernel itself by resizing an index ramp, so it is exact by construction. The kernel
    has two index formulas (a small-output path when out_h + out_w <= 128): the ramp's other side is
    sized so that it takes the same path as the real (n_out, other_out) resize.
    """
    other = other_out if n_out + other_out <= 128 else max(1, 129 - n_out)
    ramp = torch.arange(n_in, dtype=torch.float32)
    if dim == -2:
        idx = F.interpolate(ramp.view(1, 1, n_in, 1), size=(n_out, other), mode="nearest-exact")[0, 0, :, 0]
    else:
        idx = F.interpolate(ramp.view(1, 1, 1, n_in), size=(other, n_out), mode="nearest-exact")[0, 0, 0, :]
    return idx.to(torch.int64)


def _nearest_window(label: torch.Tensor, nh: int, nw: int, top: int, vh: int, left: int, vw: int) -> torch.Tensor:
    h, w = label.shape
    rows = _nearest_index(h, nh, nw, -2)[top:top + vh]
    cols = _nearest_index(w, nw, nh, -1)[left:left + vw]
    r0, c0 = int(rows[0]), int(cols[0])  # indices are non-decreasing: crop the source, then gather
    src = label[r0:int(rows[-1]) + 1, c0:int(cols[-1]) + 1]
    return _gather_cols(src, cols - c0)[0].index_select(0, rows - r0)


# -- image: bilinear, align_corners=False ----------------------------------------------------------

def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 a * b + c rounded once (a fused multiply-add): float64 holds these products exactly."""
    return torch.addcmul(c.double(), a.double(), b.double()).float()


def _linear_weights(n_in: int, n_out: int, start: int, count: int, fused: bool):
    """(i0, i1, lambda0, lambda1) of output indices start..start+count-1, as ATen's
    compute_source_index_and_lambda computes them in float32 (src clamped at 0, i1 = i0 + 1 but the last)."""
    d = torch.arange(start, start + count, dtype=torch.int64)
    if n_in == n_out:  # the kernel copies this dimension
        return d, d.clone(), torch.ones(count), torch.zeros(count)
    ratio = torch.tensor(n_in, dtype=torch.float32) / n_out
    half = d.to(torch.float32) + 0.5
    src = _fma(ratio.expand(count), half, torch.full((count,), -0.5)) if fused else ratio * half - 0.5
    src = src.clamp_min(0)
    i0 = src.floor().to(torch.int64).clamp_max(n_in - 1)
    l1 = (src - i0.to(torch.float32)).clamp(0, 1)
    return i0, i0 + (i0 < n_in - 1).to(torch.int64), 1 - l1, l1


def _kernel_path(nh: int, nw: int, channels: int) -> str:
    """The code path ATen's float bilinear kernel takes (upsample_bilinear2d_kernel_impl_float)."""
    if nh + nw <= 128 or (torch.get_num_threads() == 1 and channels == 3):
        return "four-term"
    return "separable"


def _gather_cols(x: torch.Tensor, *cols: torch.Tensor) -> list[torch.Tensor]:
    """``x[..., c]`` for each index tensor ``c``, contiguous: transposed once, each gather copies whole
    rows, which single-threaded is several times faster than index_select along the last dimension of
    a strided crop."""
    xt = x.transpose(-1, -2).contiguous()
    return [xt.index_select(-2, c).transpose(-1, -2).contiguous() for c in cols]


def _round_f32_(x: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """Round float64 ``x`` to float32 precision in place (through the float32 buffer ``buf``)."""
    return x.copy_(buf.copy_(x))


def _interp(src: torch.Tensor, ry, cx, path: str, fused: bool) -> torch.Tensor:
    """float32 bilinear values of ``src`` (uint8 3xRxC) at rows ``ry`` and columns ``cx`` (weight tuples
    with indices into ``src``), rounded as the kernel's ``path`` rounds them.

    The neighbours are gathered on uint8 (columns with :func:`_gather_cols`, then whole rows) and only
    then converted. With ``fused`` the arithmetic is float64, where every product of a pixel or a float32
    intermediate with a float32 weight is exact, and ``.float()`` is the kernel's float32 rounding.
    """
    i0, i1, h0, h1 = ry
    j0, j1, w0, w1 = cx
    dt = torch.float64 if fused else torch.float32
    col0, col1 = _gather_cols(src, j0, j1)
    if path == "four-term":
        # out = i00 * w00 + i01 * w01 + i10 * w10 + i11 * w11 with w00 = h0 * w0 in float32; the FMA
        # build computes it as fma(i11, w11, fma(i10, w10, fma(i00, w00, i01 * w01)))
        a, b = col0.index_select(1, i0).to(dt), col1.index_select(1, i0).to(dt)
        c, d = col0.index_select(1, i1).to(dt), col1.index_select(1, i1).to(dt)
        w00, w01, w10, w11 = ((u[:, None] * v[None, :]).to(dt) for u in (h0, h1) for v in (w0, w1))
        if not fused:
            return a.mul_(w00).add_(b.mul_(w01)).add_(c.mul_(w10)).add_(d.mul_(w11))
        buf = torch.empty(b.shape, dtype=torch.float32)  # in-place work: fresh large tensors cost page faults
        acc = _round_f32_(b.mul_(w01), buf)
        acc = _round_f32_(acc.addcmul_(a, w00), buf)
        acc = _round_f32_(acc.addcmul_(c, w10), buf)
        return buf.copy_(acc.addcmul_(d, w11))
    # separable: each source row along the width (t = x0 * w0 + x1 * w1), then t0 * h0 + t1 * h1 down the
    # rows; the FMA build computes each as fma(x0, w0, x1 * w1). t is float32 either way.
    col0, col1, w0, w1 = col0.to(dt), col1.to(dt), w0.to(dt), w1.to(dt)
    t = col0 * w0 + col1 * w1 if not fused else (col1 * w1).float().double().addcmul_(col0, w0).float()
    t0, t1 = t.index_select(1, i0).to(dt), t.index_select(1, i1).to(dt)
    h0, h1 = h0[:, None].to(dt), h1[:, None].to(dt)
    return t0 * h0 + t1 * h1 if not fused else (t1 * h1).float().double().addcmul_(t0, h0).float()


def _bilinear_float(image: torch.Tensor, nh: int, nw: int, top: int, vh: int, left: int, vw: int,
                    fused: bool, path: str) -> torch.Tensor:
    """float32 3 x vh x vw: rows top.. and columns left.. of the (nh, nw) bilinear resize of ``image``."""
    _, h, w = image.shape
    ry = _linear_weights(h, nh, top, vh, fused)
    cx = _linear_weights(w, nw, left, vw, fused)
    r0, r1, c0, c1 = int(ry[0][0]), int(ry[1][-1]), int(cx[0][0]), int(cx[1][-1])
    src = image[:, r0:r1 + 1, c0:c1 + 1]  # the window's source region, and only it
    ry = (ry[0] - r0, ry[1] - r0, ry[2], ry[3])
    cx = (cx[0] - c0, cx[1] - c0, cx[2], cx[3])
    return _interp(src, ry, cx, path, fused)


def matches_interpolate(path: str) -> bool:
    """Whether this machine's F.interpolate rounding is reproduced exactly on ``path`` ('four-term' or
    'separable'); probed once per process (a 3x41x53 image) and remembered."""
    return _rounding(path)[1]


def _rounding(path: str) -> tuple[bool, bool]:
    if path not in _ROUNDING:
        gen = torch.Generator().manual_seed(15)
        img = torch.randint(0, 256, (3, 41, 53), dtype=torch.uint8, generator=gen)
        # the small-output path needs out_h + out_w <= 128; the separable one more (and > 1 thread)
        nh, nw = (47, 61) if path == "four-term" else (77, 90)
        if _kernel_path(nh, nw, 3) != path:  # cannot reach that path now (e.g. separable with 1 thread)
            return True, False
        ref = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
        found = [f for f in (True, False) if torch.equal(_bilinear_float(img, nh, nw, 0, nh, 0, nw, f, path), ref)]
        _ROUNDING[path] = (found[0], True) if found else (False, False)
    return _ROUNDING[path]


def _bilinear_window(image: torch.Tensor, nh: int, nw: int, top: int, vh: int, left: int, vw: int) -> torch.Tensor:
    path = _kernel_path(nh, nw, image.shape[0])
    fused, _ = _rounding(path)
    out = _bilinear_float(image, nh, nw, top, vh, left, vw, fused, path)
    return out.round_().clamp_(0, 255).to(torch.uint8)
