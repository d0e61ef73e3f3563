import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as t_ms_ssim
from pytorch_msssim import ssim as t_ssim

from lossyvision import quality


def _jpeg(a: np.ndarray, q: int) -> np.ndarray:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=q)
    return np.asarray(Image.open(b).convert("RGB"))


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()


def test_psnr_known_values(photo):
    assert quality.psnr(photo, photo) == math.inf
    b = photo.astype(np.int16)
    b[..., 0] = np.clip(b[..., 0] + 4, 0, 255)  # changes only where not clipped
    b = b.astype(np.uint8)
    mse = np.mean((photo.astype(np.float64) - b) ** 2)
    assert quality.psnr(photo, b) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


@pytest.mark.parametrize("shape", [(224, 224), (225, 231), (64, 80), (11, 11)])
@pytest.mark.parametrize("q", [5, 50])
def test_ssim_matches_pytorch_msssim(photos, shape, q):
    for a in photos[:2]:
        a = np.ascontiguousarray(a[: shape[0], : shape[1]])
        b = _jpeg(a, q)
        ref = float(t_ssim(_t(a), _t(b), data_range=255))
        assert abs(quality.ssim(a, b) - ref) < 1e-4


@pytest.mark.parametrize("shape", [(224, 224), (225, 231)])
def test_ms_ssim_matches_pytorch_msssim(photos, shape):
    a = np.ascontiguousarray(photos[1][: shape[0], : shape[1]])
    b = _jpeg(a, 10)
    ref = float(t_ms_ssim(_t(a), _t(b), data_range=255))
    assert abs(quality.ms_ssim(a, b) - ref) < 1e-4


def test_ms_ssim_small_images_return_none(photo):
    a = photo[:160, :200]
    assert quality.ms_ssim(a, a) is None
    assert quality.ms_ssim(photo[:161, :161], photo[:161, :161]) == pytest.approx(1.0)


def test_reference_reuse_equals_direct(photo):
    ref = quality.Reference(photo)
    for q in (5, 30, 90):
        b = _jpeg(photo, q)
        assert ref.ssim(b) == pytest.approx(quality.ssim(photo, b), abs=1e-12)
    assert ref.ssim(photo) == pytest.approx(1.0, abs=1e-6)


def test_ssim_is_not_scikit_image_default(photo):
    from skimage.metrics import structural_similarity

    b = _jpeg(photo, 10)
    sk_default = structural_similarity(photo, b, channel_axis=2)
    assert abs(quality.ssim(photo, b) - sk_default) > 1e-3


def test_shape_mismatch_is_a_clear_error(photo):
    with pytest.raises(ValueError, match="differ in shape"):
        quality.ssim(photo, photo[:100])


def test_scores_share_work_and_agree(photos):
    a = photos[2]
    ref = quality.Reference(a)
    for q in (5, 40):
        b = _jpeg(a, q)
        s, ms = ref.scores(b)
        assert s == pytest.approx(quality.ssim(a, b), abs=1e-12)
        assert abs(ms - float(t_ms_ssim(_t(a), _t(b), data_range=255))) < 1e-4
    assert quality.Reference(a[:100, :100]).scores(a[:100, :100])[1] is None
