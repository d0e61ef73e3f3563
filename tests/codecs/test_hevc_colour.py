"""RGB <-> YCbCr 4:2:0 of the HEVC/BPG codecs: bpgenc's integer conversion, bit for bit."""

import numpy as np
import pytest

from lossyvision.codecs import hevc


def _bpgenc_rgb24_to_ycc(rgb: np.ndarray) -> np.ndarray:
    """libbpg bpgenc.c convert_init + rgb24_to_ycc for 8-bit in and out, full range, BT.601,
    transcribed in int64: c = lrint(k * 2^23); Y = (c.rgb + 2^22) >> 23; C = that + 128; clamp."""
    kr, kb = 0.299, 0.114
    k = [kr, 1 - kr - kb, kb, -0.5 * kr / (1 - kb), -0.5 * (1 - kr - kb) / (1 - kb), 0.5, 0.5,
         -0.5 * (1 - kr - kb) / (1 - kr), -0.5 * kb / (1 - kr)]
    c = np.array([int(np.rint(v * (1 << 23))) for v in k], dtype=np.int64).reshape(3, 3)
    s = rgb.reshape(-1, 3).astype(np.int64) @ c.T
    out = ((s + (1 << 22)) >> 23) + np.array([0, 128, 128])
    return np.clip(out, 0, 255).reshape(rgb.shape)


def _cases(photo):
    rng = np.random.default_rng(0)
    levels = (0, 1, 2, 127, 128, 129, 253, 254, 255)
    corners = np.array([[r, g, b] for r in levels for g in levels for b in levels], np.uint8).reshape(27, 27, 3)
    return [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), corners, photo[:200, :300]]


def test_full_resolution_planes_are_bpgencs(photo):
    for a in _cases(photo):
        a = np.ascontiguousarray(a)
        np.testing.assert_array_equal(hevc.rgb_to_ycc444(a), _bpgenc_rgb24_to_ycc(a))


def test_yuv420_is_bpgenc_luma_and_rounded_2x2_chroma_means(photo):
    a = np.ascontiguousarray(photo[:120, :160])
    h, w = a.shape[:2]
    ycc = _bpgenc_rgb24_to_ycc(a)
    yuv = hevc.rgb_to_yuv420(a)
    assert yuv.shape == (h * 3 // 2, w) and yuv.dtype == np.uint8
    np.testing.assert_array_equal(yuv[:h], ycc[..., 0])
    blocks = ycc[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).sum(axis=(1, 3))
    chroma = (blocks + 2) // 4  # mean rounded half up
    planes = yuv[h:].reshape(2, h // 2, w // 2)
    np.testing.assert_array_equal(planes[0], chroma[..., 0])
    np.testing.assert_array_equal(planes[1], chroma[..., 1])


def test_inverse_rounds_and_saturates(photo):
    a = np.ascontiguousarray(photo[:120, :160])
    back = hevc.yuv420_to_rgb(hevc.rgb_to_yuv420(a), 120, 160)
    assert back.dtype == np.uint8 and back.shape == a.shape
    # only chroma subsampling and rounding separate them
    assert np.abs(back.astype(int) - a).mean() < 3.0
    grey = np.full((8, 8, 3), 77, np.uint8)
    np.testing.assert_array_equal(hevc.yuv420_to_rgb(hevc.rgb_to_yuv420(grey), 8, 8), grey)
    # out-of-gamut YCbCr saturates instead of wrapping
    yuv = np.zeros((12, 8), np.uint8)
    yuv[:8] = 255
    yuv[8:] = 255
    assert hevc.yuv420_to_rgb(yuv, 8, 8).max() == 255
    yuv[:8] = 0
    yuv[8:] = 0
    assert hevc.yuv420_to_rgb(yuv, 8, 8).min() == 0


@pytest.mark.parametrize("spec", ["bpg-qp41", "hevc-qp32"])
def test_codec_roundtrip_still_sane(photo, spec):
    from lossyvision import quality
    from lossyvision.codecs import from_spec

    a = np.ascontiguousarray(photo[:224, :224])
    r = from_spec(spec).roundtrip(a)
    assert quality.psnr(a, r.decoded) > 25
