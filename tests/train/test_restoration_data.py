"""Issue 13: restoration data disjoint by design (train_extra, seeded subsets, recorded keys, the
overlap guard of restore-shards), Table III's RDN baseline and MS-SSIM in dB."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from .cityscapes_fixture import make_cityscapes_shards  # noqa: E402

from lossyvision.nets.rdn import RDN, DenseLayer, ResidualDenseBlock  # noqa: E402
from lossyvision.nets.restoration import build_restoration_net  # noqa: E402
from lossyvision.pipelines.restore import RestoreConfig, load_generator, restore_shards, restore_tensor  # noqa: E402
from lossyvision.pipelines.trainkeys import TRAIN_KEYS, seeded_subset, variant_keys  # noqa: E402
from lossyvision.quality import ms_ssim_db  # noqa: E402
from lossyvision.train.restoration import (  # noqa: E402
    RECIPES, PatchPairs, RestorationConfig, RestorationTrainer, fixed_pair, ms_ssim_loss, to_unit,
    train_restoration)

TINY_RDN = dict(rdn_blocks=2, rdn_layers=3, rdn_growth=8, rdn_features=16, num_workers=0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """train_extra (the restoration network's) and train (the one restored): 176x192, so MS-SSIM exists."""
    base = tmp_path_factory.mktemp("cs")
    make_cityscapes_shards(base, split="train_extra", n=3, h=176, w=192, shard_size=2, seed=5)
    return make_cityscapes_shards(base, split="train", n=3, h=176, w=192, shard_size=2)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """12 small images, enough for a subset to be told apart from the first N."""
    return make_cityscapes_shards(tmp_path_factory.mktemp("many"), split="train_extra", n=12, h=32, w=64,
                                  shard_size=5)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# -- seeded subsets ----------------------------------------------------------------------------

def test_seeded_subset_is_stable_nested_and_not_the_first_n(many):
    keys = variant_keys(many / "train_extra" / "jpeg-q10")
    assert len(keys) == 12 and keys == sorted(keys)
    a = seeded_subset(keys, 4, seed=0)
    assert seeded_subset(keys[::-1], 4, seed=0) == a[::-1]  # the choice does not depend on the order
    assert a == seeded_subset(keys, 4, seed=0) and len(a) == 4 and a == sorted(a)
    assert a != keys[:4]
    assert seeded_subset(keys, 4, seed=1) != a
    assert set(seeded_subset(keys, 2, seed=0)) < set(a) < set(seeded_subset(keys, 7, seed=0))
    assert seeded_subset(keys, None) == keys == seeded_subset(keys, 50)


def test_patch_pairs_visit_only_the_subset(many):
    keys = seeded_subset(variant_keys(many / "train_extra" / "jpeg-q10"), 5, seed=3)
    ds = PatchPairs(str(many / "train_extra" / "jpeg-q10"), str(many / "train_extra" / "orig"), 16, shuffle=False,
                    keys=frozenset(keys))
    assert sum(1 for _ in ds) == 5
    ds = PatchPairs(str(many / "train_extra" / "jpeg-q10"), str(many / "train_extra" / "orig"), 16, shuffle=False)
    assert sum(1 for _ in ds) == 12


def test_training_records_its_seeded_keys(many, tmp_path):
    out = tmp_path / "run"
    cfg = RestorationConfig(shards=str(many), variant="jpeg-q10", out_dir=str(out), recipe="rdn-psnr", steps=1,
                            patch_size=16, max_images=4, seed=2, sample_size=32, **TINY_RDN)
    assert cfg.split == "train_extra"  # the paper's split by default
    summary = train_restoration(cfg)
    expected = seeded_subset(variant_keys(many / "train_extra" / "jpeg-q10"), 4, seed=2)
    record = json.loads((out / TRAIN_KEYS).read_text())
    assert record["keys"] == expected and record["count"] == 4 == summary["train_images"]
    assert (record["dataset"], record["split"], record["variant"], record["seed"], record["limit"]) == \
        ("cityscapes", "train_extra", "jpeg-q10", 2, 4)
    _, ckpt = load_generator(out / "generator.pt")
    assert ckpt["train_keys"] == record and ckpt["recipe"] == "rdn-psnr"


# -- the overlap guard ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def on_train(shards, tmp_path_factory) -> Path:
    """A tiny RDN trained on the train split itself: restoring train overlaps all of it."""
    out = tmp_path_factory.mktemp("on-train")
    train_restoration(RestorationConfig(shards=str(shards), split="train", variant="jpeg-q10", out_dir=str(out),
                                        recipe="rdn-psnr", steps=1, patch_size=32, sample_size=64, **TINY_RDN))
    return out / "generator.pt"


def test_restore_shards_refuses_an_overlapping_split_in_one_line(shards, on_train):
    from lossyvision.cli.segmentation import restore_shards as cli

    args = ["--shards", str(shards), "--split", "train", "--variant", "jpeg-q10", "--generator", str(on_train),
            "--out-variant", "jpeg-q10+rdn", "--device", "cpu", "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    lines = _lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output, res.stderr
    assert "3 of the 3 images of split train" in lines[0] and "--allow-overlap" in lines[0]
    assert not (shards / "train" / "jpeg-q10+rdn").exists()

    res = CliRunner().invoke(cli, [*args, "--allow-overlap"])
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in _lines(res.stderr) if "WARNING" in ln]
    assert len(warnings) == 1 and "3 of the 3 images" in warnings[0] and "--allow-overlap" in warnings[0]
    manifest = json.loads((shards / "train" / "jpeg-q10+rdn" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["restored_from"]["train_key_overlap"] == 3


def test_a_disjoint_split_restores_and_old_generators_warn(shards, on_train, tmp_path, caplog):
    # trained on train, restoring train_extra: disjoint, no warning
    m = restore_shards(RestoreConfig(shards=str(shards), split="train_extra", variant="jpeg-q10",
                                     generator=str(on_train), out_variant="jpeg-q10+rdn", device="cpu", quiet=True))
    assert m["restored_from"]["train_key_overlap"] == 0
    # a generator file from before the keys were recorded: restored, with a warning
    old = torch.load(on_train, weights_only=False)
    del old["train_keys"]
    torch.save(old, tmp_path / "old.pt")
    caplog.clear()
    m = restore_shards(RestoreConfig(shards=str(shards), split="train", variant="jpeg-q10",
                                     generator=str(tmp_path / "old.pt"), out_variant="jpeg-q10+old", device="cpu",
                                     quiet=True))
    assert m["complete"] and m["restored_from"]["train_key_overlap"] is None
    assert any("overlap with split train cannot be checked" in r.getMessage() for r in caplog.records)


# -- RDN (Appendix C) ----------------------------------------------------------------------------

def test_rdn_is_16_blocks_of_6_layers_growth_32_without_upsampling():
    net = build_restoration_net({"net": "rdn", "blocks": 16, "layers": 6, "growth": 32, "features": 64})
    assert isinstance(net, RDN)
    blocks = [m for m in net.modules() if isinstance(m, ResidualDenseBlock)]
    assert len(blocks) == 16
    for b in blocks:
        layers = [m for m in b.modules() if isinstance(m, DenseLayer)]
        assert [layer.conv.out_channels for layer in layers] == [32] * 6
        assert [layer.conv.in_channels for layer in layers] == [64 + 32 * i for i in range(6)]
        assert (b.fusion.in_channels, b.fusion.out_channels, b.fusion.kernel_size) == (64 + 6 * 32, 64, (1, 1))
    assert net.gff[0].in_channels == 16 * 64
    assert not any(isinstance(m, (torch.nn.PixelShuffle, torch.nn.ConvTranspose2d, torch.nn.Upsample))
                   for m in net.modules())
    x = torch.rand(1, 3, 13, 21) * 2 - 1  # any size: no stride
    with torch.no_grad():
        assert net(x).shape == x.shape
    assert RestorationConfig(recipe="rdn-psnr").net == "rdn"
    assert (RestorationConfig().rdn_blocks, RestorationConfig().rdn_layers, RestorationConfig().rdn_growth) == (16, 6, 32)


def test_rdn_recipes_use_appendix_c_schedule():
    cfg = RestorationConfig(recipe="rdn-msssim")
    assert (cfg.steps, cfg.lr, cfg.lr_decay_steps, cfg.batch_size, cfg.patch_size) == \
        (200_000, 1e-3, (80_000, 150_000), 1, 256)
    trainer = RestorationTrainer(RestorationConfig(recipe="rdn-psnr", **TINY_RDN), torch.device("cpu"))
    assert trainer.D is None and trainer.vgg is None
    lrs = [trainer.lr_at(s) for s in (0, 79_999, 80_000, 149_999, 150_000)]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
    from lossyvision.cli.segmentation import RESTORATION_RECIPES
    assert RESTORATION_RECIPES == list(RECIPES)


@pytest.mark.parametrize("recipe", ["rdn-psnr", "rdn-msssim"])
def test_rdn_steps_lower_its_loss_on_a_fixed_batch(shards, recipe):
    torch.manual_seed(0)
    x8, xc8 = fixed_pair(shards / "train_extra" / "jpeg-q10", shards / "train_extra" / "orig", 64)
    x, xc = to_unit(x8), to_unit(xc8)
    trainer = RestorationTrainer(RestorationConfig(recipe=recipe, lr=1e-3, patch_size=64, **TINY_RDN),
                                 torch.device("cpu"))

    def loss() -> float:
        y = trainer.restore(xc)
        return float(((y - x) ** 2).mean() if recipe == "rdn-psnr" else ms_ssim_loss(y, x))

    before = loss()
    for _ in range(15):
        stats = trainer.train_step(x, xc)
    after = loss()
    assert ("l2" if recipe == "rdn-psnr" else "l_msssim") in stats
    assert after < 0.8 * before, (before, after)


def test_rdn_generator_restores_shards_with_table_iii_metrics(shards, tmp_path):
    out = tmp_path / "rdn"
    train_restoration(RestorationConfig(shards=str(shards), variant="jpeg-q10", out_dir=str(out), recipe="rdn-msssim",
                                        steps=2, patch_size=48, log_every=1, **TINY_RDN))
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    for rec in log:
        assert rec["sample_psnr"] > 0 and 0 < rec["sample_ssim"] <= 1
        assert rec["sample_ms_ssim_db"] == pytest.approx(-10 * math.log10(1 - rec["sample_ms_ssim"]))

    m = restore_shards(RestoreConfig(shards=str(shards), variant="jpeg-q10", generator=str(out / "generator.pt"),
                                     out_variant="jpeg-q10+rdnms", device="cpu", tile=64, overlap=16, quiet=True))
    assert m["restored_from"]["generator_arch"]["net"] == "rdn"
    assert m["restored_from"]["generator_recipe"] == "rdn-msssim" and m["restored_from"]["train_key_overlap"] == 0
    from lossyvision.pipelines.stream import iter_tar_samples
    stats = [json.loads(s["json"]) for p in sorted((shards / "train" / "jpeg-q10+rdnms").glob("shard-*.tar"))
             for s in iter_tar_samples(p)]
    assert len(stats) == 3
    for st in stats:
        assert st["ms_ssim"] is not None and st["ms_ssim_db"] == pytest.approx(-10 * math.log10(1 - st["ms_ssim"]))
    for k in ("psnr", "ssim", "ms_ssim", "ms_ssim_db"):
        assert m["means"][k] == pytest.approx(np.mean([st[k] for st in stats]))

    # tiled = whole-image inference once the context covers RDN's receptive field (no normalisation)
    g, _ = load_generator(out / "generator.pt")
    x = torch.rand(1, 3, 40, 56) * 2 - 1
    assert torch.allclose(restore_tensor(g, x), restore_tensor(g, x, tile=16, overlap=24), atol=1e-5)


def test_ms_ssim_db_values():
    assert ms_ssim_db(0.9) == pytest.approx(10.0)
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
    assert ms_ssim_db(1 - 10 ** -1.343) == pytest.approx(13.43)  # Table III, MSH at 0.0419 bpp
    assert ms_ssim_db(None) is None and ms_ssim_db(1.0) == math.inf


def test_persistent_workers_see_each_epoch(many):
    """The loader is built once with persistent workers; the epoch still reaches them (SharedEpoch), so
    epoch 1's patches are epoch 1's (as a fresh in-process iteration cuts them), not epoch 0's again."""
    vdir, odir = str(many / "train_extra" / "jpeg-q10"), str(many / "train_extra" / "orig")
    ds = PatchPairs(vdir, odir, 16, shuffle=False, seed=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True)
    epochs = []
    for e in (0, 1):
        ds.set_epoch(e)
        epochs.append(torch.cat([x for x, _ in loader]))
    assert not torch.equal(epochs[0], epochs[1])
    fresh = PatchPairs(vdir, odir, 16, shuffle=False, seed=4)
    fresh.set_epoch(1)
    assert torch.equal(epochs[1], torch.stack([x for x, _ in fresh]))
