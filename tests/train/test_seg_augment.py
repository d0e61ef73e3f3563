"""Crop-then-resize augmentation: the same crops as resizing the whole frame first, for the same rng state."""

import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lossyvision.train import seg_augment
from lossyvision.train.seg_augment import random_scale_crop_flip


# the whole-frame version (lossyvision.train.segmentation before issue 15), kept frozen in the benchmark that
# measures it against the new one: the reference every case here is compared with
sys.path.insert(0, str(Path(__file__).parents[2] / "tools" / "bench"))
from seg_input import resize_frame_then_crop as reference  # noqa: E402


@pytest.fixture(params=["crop-first", "auto"])
def path(request, monkeypatch):
    """crop-first: always resize only the window. auto: the default, which resizes the whole frame (as the
    reference does) where the window is most of it, e.g. at small scales."""
    if request.param == "crop-first":
        monkeypatch.setattr(seg_augment, "_WHOLE_FRAME_RATIO", 0)
    return request.param


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """F.interpolate rounds differently with one thread (as in a DataLoader worker) and with more."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def frame(h, w, gen, classes=(0, 3, 7, 18)):
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    ids = torch.tensor(classes, dtype=torch.uint8)
    label = ids[torch.randint(0, len(classes), (h, w), generator=gen)]
    return image, label


def assert_same(image, label, crop, scale, flip, seed, ignore_index=255):
    want = reference(image, label, crop, scale, flip, rng_a := random.Random(seed), ignore_index)
    got = random_scale_crop_flip(image, label, crop, scale, flip, rng_b := random.Random(seed), ignore_index)
    assert rng_a.random() == rng_b.random()  # the same draws, so the next sample's are the same too
    assert got[0].shape == (3, crop, crop) and got[1].shape == (crop, crop)
    assert got[0].dtype == got[1].dtype == torch.uint8 and got[0].is_contiguous() and got[1].is_contiguous()
    assert torch.equal(got[1], want[1])
    # one thread: F.interpolate always takes its four-term path; more threads: that one or the separable one
    exact = seg_augment.matches_interpolate("four-term") and (
        torch.get_num_threads() == 1 or seg_augment.matches_interpolate("separable"))
    if exact:
        assert torch.equal(got[0], want[0])
    else:  # an unknown build's rounding: see seg_augment's docstring
        assert (got[0].int() - want[0].int()).abs().max() <= 1
    return got


def test_identical_to_the_whole_frame_resize_over_many_random_cases(threads, path):
    gen, pick = torch.Generator().manual_seed(threads), random.Random(threads)
    padded = 0
    for case in range(100 if threads == 1 else 40):  # two threads: slow on a busy 2-core machine
        h, w = pick.randint(1, 160), pick.randint(1, 160)
        crop = pick.randint(1, 140)
        scale = (0.5, 2.0) if case % 3 else tuple(sorted((pick.uniform(0.3, 2.5), pick.uniform(0.3, 2.5))))
        image, label = frame(h, w, gen)
        _, lab = assert_same(image, label, crop, scale, flip=case % 4 != 0, seed=pick.random())
        padded += bool((lab == 255).any())
    assert padded > 5  # cases where the scaled frame is smaller than the crop were covered


@pytest.mark.parametrize("h,w,crop,s", [
    (3, 50, 8, 1.1),       # height kept (round(3.3) == 3), width resized: the kernel copies that dimension
    (40, 3, 8, 1.1),       # and the other way round
    (41, 77, 30, 0.5),     # downscaled, odd sizes
    (33, 65, 100, 0.7),    # scaled frame smaller than the crop in both directions: padded
    (64, 64, 64, 1.0),     # no resize at all
    (31, 97, 20, 2.0),     # 2x upscale
    (257, 129, 96, 1.37),  # output larger than the kernel's small-output path (h + w > 128)
])
def test_identical_at_edge_sizes(threads, path, h, w, crop, s):
    gen = torch.Generator().manual_seed(h * w)
    image, label = frame(h, w, gen)
    for seed in range(6):
        assert_same(image, label, crop, (s, s), flip=True, seed=seed)


def test_identical_on_a_larger_frame(threads, path):
    """A quarter-size Cityscapes frame at the recipe's extreme scales and in between."""
    gen = torch.Generator().manual_seed(7)
    image, label = frame(256, 512, gen)
    for s in (0.5, 0.83, 1.25, 2.0):
        assert_same(image, label, 192, (s, s), flip=True, seed=int(s * 100))


def test_labels_hold_only_input_ids_and_the_ignore_index(threads, path):
    gen, pick = torch.Generator().manual_seed(3), random.Random(3)
    for ignore in (255, 250):
        for _ in range(40):
            h, w = pick.randint(8, 90), pick.randint(8, 90)
            image, label = frame(h, w, gen, classes=(1, 5, 12))
            _, lab = assert_same(image, label, pick.randint(8, 120), (0.5, 2.0), True, pick.random(), ignore)
            assert set(lab.unique().tolist()) <= {1, 5, 12, ignore}


def test_plain_float32_rounding_stays_within_a_level():
    """The fallback for a build whose rounding the probe does not recognise."""
    gen = torch.Generator().manual_seed(11)
    image = torch.randint(0, 256, (3, 57, 83), dtype=torch.uint8, generator=gen)
    ref = F.interpolate(image[None].float(), size=(101, 150), mode="bilinear", align_corners=False)[0]
    for kernel_path in ("four-term", "separable"):
        got = seg_augment._bilinear_float(image, 101, 150, 20, 60, 35, 90, False, kernel_path)
        assert (got - ref[:, 20:80, 35:125]).abs().max() < 1e-3


def test_probe_reproduces_interpolate_on_this_machine():
    """The one-time rounding probe finds the rounding of x86 builds (established on an AVX2 build: fused)."""
    if not torch.backends.cpu.get_cpu_capability().startswith(("AVX", "DEFAULT")):
        pytest.skip(f"rounding of a {torch.backends.cpu.get_cpu_capability()} build not established")
    assert seg_augment.matches_interpolate("four-term")
