import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as t_ms_ssim
from pytorch_msssim import ssim as t_ssim

from lossyvision import quality


@pytest.fixture(autouse=True, params=["fused", "opencv"])
def kernel_path(request, monkeypatch):
    """Every test runs on both paths: the numba kernel (lossyvision/ssim_sums.py) and OpenCV's."""
    monkeypatch.setattr(quality, "FUSED", request.param == "fused")
    return request.param


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


@pytest.mark.parametrize("shape", [(224, 224), (225, 231), (161, 400), (400, 161)])
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


@pytest.mark.parametrize("shape", [(300, 257), (161, 400)])
def test_strips_give_the_same_numbers_as_one_piece(photos, shape, monkeypatch):
    """Large images are measured in strips of rows; the strips must not change the numbers (and
    still match pytorch-msssim), odd sizes and MS-SSIM's pooled scales included."""
    a = np.ascontiguousarray(np.asarray(Image.fromarray(photos[1]).resize(shape[::-1])))
    b = _jpeg(a, 10)
    whole = quality.Reference(a).scores(b)
    monkeypatch.setattr(quality, "STRIP_PIXELS", 40 * shape[1])  # ~40-row strips, several per scale
    assert len(quality._strips(*shape)) > 3
    striped = quality.Reference(a).scores(b)
    assert striped[0] == pytest.approx(whole[0], abs=1e-6)
    assert striped[1] == pytest.approx(whole[1], abs=1e-6)
    assert abs(striped[1] - float(t_ms_ssim(_t(a), _t(b), data_range=255))) < 1e-4
    assert abs(striped[0] - float(t_ssim(_t(a), _t(b), data_range=255))) < 1e-4


def test_reference_is_freed_without_the_cycle_collector(photo):
    """A Reference must not refer to itself (the old MS-SSIM pyramid did, and large images then
    piled up until the cycle collector ran: RSS grew by ~1.1 GB per 12 MP image)."""
    import gc
    import weakref

    gc.disable()
    try:
        ref = quality.Reference(photo)
        ref.scores(_jpeg(photo, 10))
        alive = weakref.ref(ref)
        del ref
        assert alive() is None
    finally:
        gc.enable()


def test_grayscale_and_psnr_of_non_uint8(photo):
    g = photo[..., 0]
    gj = _jpeg(np.repeat(g[..., None], 3, axis=2), 10)[..., 0]
    ref = float(t_ssim(torch.from_numpy(g.astype(np.float32))[None, None], torch.from_numpy(gj.astype(np.float32))[None, None], data_range=255))
    assert abs(quality.ssim(g, gj) - ref) < 1e-4
    assert quality.psnr(photo.astype(np.float32), gj[..., None].repeat(3, 2)) == pytest.approx(quality.psnr(photo, gj[..., None].repeat(3, 2)), abs=1e-9)


@pytest.mark.parametrize("shape", [(224, 224), (225, 231), (64, 80), (161, 400)])
def test_the_fused_kernel_and_opencv_give_the_same_numbers(photos, shape, kernel_path):
    """lossyvision/ssim_sums.py filters and sums in another order than OpenCV: the two paths may
    differ by float32 rounding only, for RGB and grey, uint8 and float variants (measured: up to
    1.2e-5 on 64x80 crops at JPEG q5, where each path is up to 4e-5 from a float64 computation)."""
    if kernel_path == "opencv":
        pytest.skip("compares the two paths once")
    for a in photos[:3]:
        a = np.ascontiguousarray(a[: shape[0], : shape[1]]) if shape[1] <= 224 else \
            np.ascontiguousarray(np.asarray(Image.fromarray(a).resize(shape[::-1])))
        for b in (_jpeg(a, 5), _jpeg(a, 60)):
            for x, y in ((a, b), (a[..., 1], b[..., 1]), (a, b.astype(np.float32))):
                quality.FUSED = True
                fused = quality.Reference(x).scores(y)
                quality.FUSED = False
                cv = quality.Reference(x).scores(y)
                assert fused[0] == pytest.approx(cv[0], abs=3e-5)
                assert (fused[1] is None) == (cv[1] is None)
                if cv[1] is not None:
                    assert fused[1] == pytest.approx(cv[1], abs=3e-5)
                    assert fused[1] != cv[1] or fused[0] != cv[0] or np.array_equal(x, y)  # two paths really ran


def test_without_numba_the_opencv_path_runs(photo, monkeypatch, kernel_path):
    """numba is a core dependency, but a platform without its wheels still gets the metrics."""
    if kernel_path == "opencv":
        pytest.skip("checks the automatic choice once")
    import sys

    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    monkeypatch.delitem(sys.modules, "lossyvision.ssim_sums", raising=False)
    monkeypatch.setattr(quality, "_NO_NUMBA", False)
    monkeypatch.setattr(quality, "_FUSED_MODULE", None)
    monkeypatch.setattr(quality, "FUSED", None)
    b = _jpeg(photo, 10)
    s, ms = quality.Reference(photo).scores(b)
    assert quality._kernel() is None and quality._NO_NUMBA
    assert abs(ms - float(t_ms_ssim(_t(photo), _t(b), data_range=255))) < 1e-4
    monkeypatch.setattr(quality, "FUSED", True)  # asked for explicitly: the ImportError is not hidden
    with pytest.raises(ImportError):
        quality._kernel()


@pytest.mark.parametrize("value, expected", [("opencv", "False"), ("numba", "True"), ("", "None")])
def test_the_kernel_is_chosen_by_environment_for_every_process(value, expected, kernel_path):
    """LOSSYVISION_SSIM_KERNEL reaches processes started by a job (Ray workers inherit it)."""
    if kernel_path == "opencv":
        pytest.skip("one subprocess per value is enough")
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from lossyvision import quality; print(quality.FUSED)"],
                         env={**os.environ, "LOSSYVISION_SSIM_KERNEL": value}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
