"""DeepLabv3+ training on a generated Cityscapes-layout shard set; augmentation keeps labels intact."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from .cityscapes_fixture import make_cityscapes_shards  # noqa: E402

from lossyvision.train.segmentation import (  # noqa: E402
    SegmentationConfig, build_model, load_segmentation_model, poly_lr, random_scale_crop_flip, train_segmentation)

pytest.importorskip("segmentation_models_pytorch")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cs")
    make_cityscapes_shards(root, split="val", n=2, seed=1)
    return make_cityscapes_shards(root, split="train", n=4)


def _real_label(shards: Path) -> torch.Tensor:
    from lossyvision.pipelines.stream import ShardStream
    _, y, _ = next(iter(ShardStream(shards / "train" / "orig")))
    return y


@pytest.mark.parametrize("seed", range(12))
def test_augmentation_keeps_label_values_and_alignment(shards, seed):
    y = _real_label(shards)
    values = set(y.unique().tolist())
    assert 255 in values and values - {255} <= set(range(19))
    # the image encodes the label in its red channel, so alignment can be checked pixel by pixel
    x = torch.stack([y, 255 - y, torch.zeros_like(y)])
    rng = random.Random(seed)
    xa, ya = random_scale_crop_flip(x, y, crop=48, scale=(0.5, 2.0), flip=True, rng=rng)
    assert xa.shape == (3, 48, 48) and ya.shape == (48, 48) and ya.dtype == torch.uint8
    assert set(ya.unique().tolist()) <= values | {255}  # nearest neighbour: no invented ids
    # without rescaling, crop and flip move image and labels together, exactly
    xb, yb = random_scale_crop_flip(x, y, crop=48, scale=(1.0, 1.0), flip=True, rng=rng)
    assert torch.equal(xb[0], yb) and set(yb.unique().tolist()) <= values


def test_augmentation_pads_labels_with_ignore_and_full_crop_is_lossless(shards):
    y = _real_label(shards)  # 64 x 128
    x = torch.stack([y, y, y])
    _, ya = random_scale_crop_flip(x, y, crop=160, scale=(1.0, 1.0), flip=False, rng=random.Random(0))
    assert ya.shape == (160, 160) and (ya[64:] == 255).all() and (ya[:, 128:] == 255).all()
    assert torch.equal(ya[:64, :128], y)  # value set and values survive unchanged
    windows = [y[:, o:o + 64] for o in range(65)]
    kinds = set()
    for s in range(10):
        f = random_scale_crop_flip(x, y, 64, (1.0, 1.0), True, random.Random(s))[1]
        plain = any(torch.equal(f, w) for w in windows)
        mirrored = any(torch.equal(f, w.flip(-1)) for w in windows)
        assert plain or mirrored  # every crop is an exact (possibly mirrored) window of the labels
        kinds.add("plain" if plain else "mirrored")
    assert kinds == {"plain", "mirrored"}


def test_model_is_deeplabv3plus_output_stride_16():
    import segmentation_models_pytorch as smp
    m = build_model("resnet18", num_classes=19, output_stride=16).eval()
    assert isinstance(m, smp.DeepLabV3Plus)
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 19, 64, 64)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_model("resnet18", encoder_weights="/nonexistent/encoder.pth")


def test_local_encoder_weights_are_loaded(tmp_path):
    src = build_model("resnet18")
    path = tmp_path / "enc.pth"
    torch.save(src.encoder.state_dict(), path)
    m = build_model("resnet18", encoder_weights=str(path))
    assert torch.equal(m.encoder.conv1.weight, src.encoder.conv1.weight)


def test_poly_lr():
    assert poly_lr(0.01, 0, 100) == 0.01 and poly_lr(0.01, 100, 100) == 0
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)


def test_train_segmentation_few_steps_evaluates_and_resumes(shards, tmp_path):
    out = tmp_path / "co"
    cfg = SegmentationConfig(shards=str(shards), train_variant="jpeg-q10", test_variant="orig", out_dir=str(out),
                             encoder="resnet18", encoder_weights=None, crop_size=64, batch_size=2, steps=3,
                             num_workers=0, log_every=1,
                             ckpt_every=2)
    summary = train_segmentation(cfg)
    assert summary["steps"] == 3 and summary["configuration"] == "CO"
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(v > 0 for v in losses)
    rec = json.loads((out / "results" / "jpeg-q10__orig.json").read_text())
    assert rec["images"] == 2 and 0 <= rec["miou_pct"] <= 100 and rec["train_bpp"] > 0
    assert sum(map(sum, rec["confusion"])) == rec["pixels"]
    assert (out / "results.md").is_file() and (out / "miou_vs_bpp.png").is_file()
    model, meta = load_segmentation_model(out / "model.pt")
    assert meta["config"]["train_variant"] == "jpeg-q10" and meta["arch"]["output_stride"] == 16

    cfg.steps, cfg.resume, cfg.evaluate = 4, True, False
    assert train_segmentation(cfg)["steps"] == 4
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == 4


def test_training_lowers_loss_on_a_fixed_batch(shards):
    from lossyvision.pipelines.stream import ShardStream, to_device
    torch.manual_seed(0)
    x, y, _ = next(iter(ShardStream(shards / "train" / "orig")))
    model = build_model("resnet18")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xb, yb = to_device(x[None], "cpu"), y[None].long()
    crit = torch.nn.CrossEntropyLoss(ignore_index=255)
    losses = []
    model.train()
    for _ in range(5):
        loss = crit(model(torch.cat([xb, xb])), torch.cat([yb, yb]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_cli_workflow_restore_then_ro_and_report(shards, tmp_path):
    """The paper-2 workflow through the console commands: GAN -> restore-shards -> RO -> eval."""
    from click.testing import CliRunner

    from lossyvision.cli.segmentation import eval_segmentation, restore_shards, train_restoration, train_segmentation

    runner = CliRunner()
    gan = tmp_path / "gan"
    # the GAN trains on its own split (default train_extra), disjoint from the images it restores
    make_cityscapes_shards(shards.parent, split="train_extra", n=2, seed=2)
    r = runner.invoke(train_restoration, ["--shards", str(shards), "--variant", "jpeg-q10", "--out", str(gan),
                                          "--steps", "1", "--patch-size", "64", "--recipe", "l1-msssim",
                                          "--width", "8", "--n-blocks", "1", "--workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    for split in ("train", "val"):
        r = runner.invoke(restore_shards, ["--shards", str(shards), "--split", split, "--variant", "jpeg-q10",
                                           "--generator", str(gan / "generator.pt"), "-q"])
        assert r.exit_code == 0, r.output
    seg = tmp_path / "ro"
    r = runner.invoke(train_segmentation, ["--shards", str(shards), "--variant", "jpeg-q10+restored",
                                           "--out", str(seg), "--encoder", "resnet18", "--encoder-weights", "none",
                                           "--crop-size", "64",
                                           "--batch-size", "2", "--steps", "1", "--workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    report = tmp_path / "report"
    r = runner.invoke(eval_segmentation, ["--checkpoint", str(seg / "model.pt"), "--shards", str(shards),
                                          "--variant", "orig", "--variant", "jpeg-q10+restored",
                                          "--out", str(report), "-q"])
    assert r.exit_code == 0, r.output
    assert [d["configuration"] for d in json.loads(r.output)] == ["RO", "RR"]
    md = (report / "results.md").read_text()
    assert "| RO | jpeg-q10+restored | orig |" in md and (report / "miou_vs_bpp.png").is_file()

    # user errors: one line, no traceback
    r = runner.invoke(train_segmentation, ["--shards", str(shards), "--variant", "bpg-qp41", "-q"])
    assert r.exit_code == 1 and "variant 'bpg-qp41' not found" in r.output and "Traceback" not in r.output
    r = runner.invoke(train_restoration, ["--shards", str(shards), "--variant", "jpeg-q10", "--patch-size", "100"])
    assert r.exit_code == 2 and "multiple of 8" in r.output
    r = runner.invoke(eval_segmentation, ["--out", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no results" in r.output
