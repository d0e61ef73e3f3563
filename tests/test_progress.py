"""Progress bars (tqdm, stderr, off when quiet or when stderr is not a terminal) and the periodic log
lines of the long stages, on tiny real runs."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from typing import Iterator

import pytest
import torch

from .train.cityscapes_fixture import make_cityscapes_shards
from .train.classifier_shards import make_dataset

from lossyvision.progress import progress, rate_eta


class FakeTTY(io.StringIO):
    """A stderr that says it is a terminal, and keeps everything written to it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@contextlib.contextmanager
def fake_stderr(tty: bool = True) -> Iterator[io.StringIO]:
    """sys.stderr replaced by a terminal (or not), with the root logger writing INFO to it as the
    CLIs set it up. Inside the test itself: pytest puts its own capture back between fixture setup
    and the test call."""
    fake = FakeTTY() if tty else io.StringIO()
    saved, root = sys.stderr, logging.getLogger()
    sys.stderr = fake
    handler, level = logging.StreamHandler(fake), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield fake
    finally:
        sys.stderr = saved
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shards"), n_train=24, n_val=8, shard_size=8)


def _train_classifier(toy, out, **kw) -> None:
    from lossyvision.train.classifier import TrainConfig, train

    train(TrainConfig(shards=str(toy), variant="jpeg-q10", out=str(out), model="small_cnn", recipe="expert", epochs=1,
                      batch_size=8, lr=1e-3, workers=0, shuffle_buffer=8, device="cpu", teacher_cache="auto",
                      seed_best_from_initial=False, log_every=1, **kw))


BAR = r"\d+%\|.*\| \d+/{total} \[\d\d:\d\d<(\?|\d\d:\d\d), +(\?|[\d.]+)(it/s|s/it)\]"


def test_helper_draws_rate_and_eta_on_a_terminal_only():
    with fake_stderr() as err, progress(range(3), total=3, desc="work", leave=True) as bar:
        assert list(bar) == [0, 1, 2]
    assert re.search(r"work: 100%\|.*\| 3/3 \[\d\d:\d\d<00:00, +[\d.]+it/s\]", err.getvalue())
    with fake_stderr() as err, progress(range(3), total=3, desc="quiet work", quiet=True) as bar:
        assert list(bar) == [0, 1, 2]
        bar.update(1)  # a disabled bar accepts updates and postfixes, and draws nothing
        bar.set_postfix(loss=1.0)
    assert err.getvalue() == ""
    assert rate_eta(10, 4.0, 100) == "2.5 it/s, 00:40 left" and rate_eta(3, 10.0, None, "img") == "3.33 s/img"


def test_helper_is_off_when_stderr_is_not_a_terminal():
    with fake_stderr(tty=False) as err, progress(range(3), total=3, desc="work", leave=True) as bar:
        assert list(bar) == [0, 1, 2]
    assert err.getvalue() == ""


def test_classifier_training_shows_bars_and_step_lines(toy, tmp_path):
    with fake_stderr() as err:
        _train_classifier(toy, tmp_path)
    text = err.getvalue()
    assert re.search(r"teacher cache: +" + BAR.format(total=3), text), text  # 24 train images, batch 8
    assert re.search(r"epoch 0 train: +" + BAR.format(total=3), text), text
    assert re.search(r"epoch 0 val: +" + BAR.format(total=1), text), text
    # the per-step lines (log_every=1; the epoch's last step gives way to the epoch line) and the epoch line
    assert re.search(r"epoch 0 step 1/3: loss \d+\.\d{4}, lr 1\.00e-03 \([\d.]+ (it/s|s/it), \d\d:\d\d left\)", text)
    assert re.search(r"epoch 0 step 2/3: ", text) and not re.search(r"epoch 0 step 3/3", text)
    assert re.search(r"epoch 0: train loss ", text)


@pytest.mark.parametrize("tty,quiet", [(True, True), (False, False)])
def test_classifier_training_without_bars_keeps_its_log_lines(toy, tmp_path, tty, quiet):
    with fake_stderr(tty) as err:
        _train_classifier(toy, tmp_path, quiet=quiet)
    text = err.getvalue()
    assert "%|" not in text and "\r" not in text and "teacher cache:" not in text and "epoch 0 train:" not in text
    # the log lines carry the rate and ETA instead
    assert re.search(r"epoch 0 step 1/3: .* \([\d.]+ (it/s|s/it), \d\d:\d\d left\)", text)
    assert re.search(r"epoch 0: train loss ", text)


def test_restoration_training_shows_a_bar_and_its_log_every_lines(tmp_path):
    from lossyvision.train.restoration import RestorationConfig, train_restoration

    shards = make_cityscapes_shards(tmp_path / "cs", n=2, h=128, w=128, shard_size=2)
    with fake_stderr() as err:
        train_restoration(RestorationConfig(shards=str(shards), split="train", variant="jpeg-q10",
                                            out_dir=str(tmp_path / "run"), recipe="l1-msssim", steps=4, patch_size=128, log_every=2, sample_every=4,
                                            ckpt_every=4, width=8, n_blocks=1, num_workers=0))
    text = err.getvalue()
    assert re.search(r"train-restoration: 100%\|.*\| 4/4 \[\d\d:\d\d<00:00, +[\d.]+(it/s|s/it)\]", text), text
    assert re.search(r"step 2/4 loss_g=\S+ .* \([\d.]+ (it/s|s/it), \d\d:\d\d left\)", text), text
    assert re.search(r"step 4/4 ", text) and not re.search(r"step [13]/4 ", text)


def test_quiet_restoration_training_draws_no_bar(tmp_path):
    from lossyvision.train.restoration import RestorationConfig, train_restoration

    shards = make_cityscapes_shards(tmp_path / "cs", n=2, h=128, w=128, shard_size=2)
    with fake_stderr() as err:
        train_restoration(RestorationConfig(shards=str(shards), split="train", variant="jpeg-q10",
                                            out_dir=str(tmp_path / "run"), recipe="l1-msssim", steps=2, patch_size=128, log_every=1, sample_every=2,
                                            ckpt_every=2, width=8, n_blocks=1, num_workers=0, quiet=True))
    text = err.getvalue()
    assert "train-restoration:" not in text and "%|" not in text and "\r" not in text
    assert re.search(r"step 1/2 .* \([\d.]+ (it/s|s/it), \d\d:\d\d left\)", text)


def test_segmentation_training_shows_a_bar_and_its_log_every_lines(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from lossyvision.train.segmentation import SegmentationConfig, train_segmentation

    shards = make_cityscapes_shards(tmp_path / "cs", split="train", n=2)
    with fake_stderr() as err:
        train_segmentation(SegmentationConfig(shards=str(shards), train_variant="jpeg-q10", out_dir=str(tmp_path / "run"),
                                              encoder="resnet18", encoder_weights=None, crop_size=64, batch_size=2,
                                              steps=2, num_workers=0, log_every=1, ckpt_every=2, evaluate=False))
    text = err.getvalue()
    assert re.search(r"train-segmentation: 100%\|.*\| 2/2 \[\d\d:\d\d<00:00, +[\d.]+(it/s|s/it)\]", text), text
    assert re.search(r"step 1/2 loss \d+\.\d{4} lr \S+ \([\d.]+ (it/s|s/it), \d\d:\d\d left\)", text), text
