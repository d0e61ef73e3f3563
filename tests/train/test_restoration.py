"""Restoration GAN, restore-shards and tiled inference on a generated Cityscapes-layout shard set
(the GAN trains on its own train_extra split, disjoint from the train split it restores)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from .cityscapes_fixture import make_cityscapes_shards  # noqa: E402

from lossyvision.nets.finenet import Generator, MultiScaleDiscriminator, VGGFeatures  # noqa: E402
from lossyvision.pipelines.restore import RestoreConfig, restore_shards, restore_tensor  # noqa: E402
from lossyvision.train.restoration import (  # noqa: E402
    RestorationConfig, RestorationTrainer, fixed_pair, load_generator, ms_ssim_loss, to_unit, train_restoration)

SMALL = dict(width=8, n_blocks=2, disc_width=8, vgg_weights="random", num_workers=0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cs")
    make_cityscapes_shards(base, split="train_extra", n=3, h=128, w=192, shard_size=2, seed=5)
    return make_cityscapes_shards(base, n=4, h=128, w=192, shard_size=3)


def test_generator_shapes_and_zero_init_residual_is_identity():
    torch.manual_seed(0)
    g = Generator(width=8, n_blocks=2)
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    assert torch.equal(g(x), x)  # zero-initialised o3 makes the residual exactly zero
    with torch.no_grad():
        g.out_norm.weight.fill_(1.0)
    y = g(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    assert (y - x).abs().max() <= 1.0  # the residual is a tanh output
    with pytest.raises(ValueError, match="multiple of 8"):
        g(torch.zeros(1, 3, 60, 64))


def test_paper_generator_layout():
    g = Generator()  # c64, d128, d256, d512, 9 x r512, u256, u128, u64, o3
    convs = [m for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert [m.out_channels for m in convs[:4]] == [64, 128, 256, 512]
    assert [m.kernel_size for m in convs[:2]] == [(7, 7), (3, 3)]
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in convs) == 3
    assert [m.out_channels for m in convs[-4:]] == [256, 128, 64, 3]
    assert len(convs) == 4 + 18 + 4
    assert any(isinstance(m, torch.nn.ReflectionPad2d) for m in g.modules())


def test_discriminators_full_and_quarter_scale_return_features():
    d = MultiScaleDiscriminator(width=8)
    xc, x = torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 128, 128)
    outs = d(xc, x)
    assert len(outs) == 2
    (l_full, f_full), (l_quarter, f_quarter) = outs
    assert [f.shape[1] for f in f_full] == [8, 16, 32, 64]  # C64, C128, C256, C512 (width-reduced)
    assert l_full.shape == (1, 1, 8, 8) and l_quarter.shape == (1, 1, 2, 2)
    assert d.nets[0].blocks[0][0].in_channels == 6  # conditioned on the compressed image


def test_vgg_features_blocks():
    vgg = VGGFeatures(weights=None)
    feats = vgg(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512]
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4]
    assert not any(p.requires_grad for p in vgg.parameters())


def test_old_networks_path_still_imports():
    from lossyvision.train.networks import finenet as old

    assert old.Generator is Generator and old.MultiScaleDiscriminator is MultiScaleDiscriminator
    assert isinstance(old.VGGFeatures(None), VGGFeatures)


def test_vgg_offline_error_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache

    def no_network(*a, **k):
        raise OSError("network unreachable")

    import torchvision.models._api as api  # where WeightsEnum.get_state_dict finds the downloader
    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError, match="--vgg-weights PATH"):
        VGGFeatures("imagenet")


def test_ms_ssim_loss_zero_for_identical_and_positive_otherwise():
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    assert ms_ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert ms_ssim_loss(x * 0.5, x).item() > 0.01


def test_gan_steps_lower_l1_on_fixed_pair(shards):
    torch.manual_seed(0)
    vdir, odir = shards / "train" / "jpeg-q10", shards / "train" / "orig"
    x8, xc8 = fixed_pair(vdir, odir, 128)
    x, xc = to_unit(x8), to_unit(xc8)
    cfg = RestorationConfig(shards=str(shards), variant="jpeg-q10", patch_size=128, lr=1e-3, **SMALL)
    trainer = RestorationTrainer(cfg, torch.device("cpu"))

    def l1() -> float:
        return (trainer.restore(xc) - x).abs().mean().item()

    before = l1()
    assert before == pytest.approx((xc - x).abs().mean().item())  # identity at start
    for _ in range(12):
        stats = trainer.train_step(x, xc)
    assert {"loss_d", "l_gan", "l_vgg", "l_dist", "l_msssim"} <= set(stats)
    after = l1()
    # zero-initialised output scale: the residual grows from 0, so a few steps move L1 by ~1-2 %
    assert after < 0.99 * before, (before, after)


def test_non_adversarial_baseline_has_no_discriminator(shards):
    cfg = RestorationConfig(shards=str(shards), variant="jpeg-q10", recipe="l1-msssim", patch_size=128, **SMALL)
    trainer = RestorationTrainer(cfg, torch.device("cpu"))
    assert trainer.D is None and trainer.vgg is None
    x8, xc8 = fixed_pair(shards / "train" / "jpeg-q10", shards / "train" / "orig", 128)
    stats = trainer.train_step(to_unit(x8), to_unit(xc8))
    assert stats["l_gan"] == 0 and "loss_d" not in stats
    with pytest.raises(ValueError, match="unknown recipe"):
        RestorationConfig(recipe="pix2pix")


def test_lr_schedule_divides_by_ten_at_decay_step():
    cfg = RestorationConfig()
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.batch_size, cfg.steps) == (2e-4, 0.1, 0.9, 1, 135_000)
    assert cfg.split == "train_extra" and cfg.lr_decay_steps == (80_000,)
    trainer = RestorationTrainer(RestorationConfig(recipe="l1-msssim", width=8, n_blocks=1), torch.device("cpu"))
    assert trainer.lr_at(79_999) == pytest.approx(2e-4) and trainer.lr_at(80_000) == pytest.approx(2e-5)


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cfg = RestorationConfig(shards=str(shards), variant="jpeg-q10", out_dir=str(out), steps=3, patch_size=128,
                            sample_every=2, ckpt_every=2, log_every=1, **SMALL)
    summary = train_restoration(cfg)
    assert summary["steps"] == 3
    return out


def test_training_writes_samples_checkpoints_and_resumes(trained, shards):
    from PIL import Image

    samples = sorted((trained / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["step-0000002.png", "step-0000003.png"]
    grid = np.asarray(Image.open(samples[-1]))
    assert grid.shape == (128, 3 * 192 + 8, 3)  # compressed | restored | original, whole 128x192 frame
    assert json.loads((trained / "config.json").read_text())["variant"] == "jpeg-q10"
    assert len((trained / "log.jsonl").read_text().splitlines()) == 3
    cfg = RestorationConfig(shards=str(shards), variant="jpeg-q10", out_dir=str(trained), steps=4, patch_size=128,
                            resume=True, **SMALL)
    assert train_restoration(cfg)["steps"] == 4
    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 4 and "discriminator" in state and "opt_d" in state


def test_restore_shards_writes_aligned_variant_with_source_rates(trained, shards):
    import webdataset as wds

    manifest = restore_shards(RestoreConfig(shards=str(shards), variant="jpeg-q10",
                                            generator=str(trained / "generator.pt")))
    out = shards / "train" / "jpeg-q10+restored"
    assert manifest["complete"] and manifest["num_samples"] == 4 and manifest["codec"] is None
    assert manifest["restored_from"]["variant"] == "jpeg-q10"
    src = json.loads((shards / "train" / "jpeg-q10" / "_manifest.json").read_text())
    assert [(s["name"], s["count"]) for s in manifest["shards"]] == [(s["name"], s["count"]) for s in src["shards"]]

    def read(variant: str) -> list[dict]:
        files = sorted(str(p) for p in (shards / "train" / variant).glob("shard-*.tar"))
        return list(wds.WebDataset(files, shardshuffle=False))

    restored, source, orig = read("jpeg-q10+restored"), read("jpeg-q10"), read("orig")
    assert [s["__key__"] for s in restored] == [s["__key__"] for s in source] == [s["__key__"] for s in orig]
    for r, s, o in zip(restored, source, orig):
        rj, sj = json.loads(r["json"]), json.loads(s["json"])
        assert rj["bytes"] == len(s["jpg"]) == sj["bytes"] and rj["bpp"] == sj["bpp"]
        assert r["seg.png"] == s["seg.png"]
        img = np.asarray(Image_open(r["png"]))
        ref = np.asarray(Image_open(o["png"]))
        assert img.shape == ref.shape == (128, 192, 3)
        from lossyvision.quality import psnr
        assert rj["psnr"] == pytest.approx(psnr(img, ref), abs=1e-6)
        assert rj["source_psnr"] == sj["psnr"]
    assert manifest["means"]["bpp"] == pytest.approx(np.mean([json.loads(s["json"])["bpp"] for s in source]))

    # a rerun with the same generator is a no-op: shards are skipped and stay byte-identical
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.tar")}
    again = restore_shards(RestoreConfig(shards=str(shards), variant="jpeg-q10",
                                         generator=str(trained / "generator.pt")))
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.tar")} == before
    assert again["means"] == pytest.approx(manifest["means"])

    # the restored variant streams like any other through the shared loader, paired with orig
    from lossyvision.pipelines.stream import ShardStream
    items = list(ShardStream(out, shards / "train" / "orig"))
    assert len(items) == 4 and items[0][1].shape == (3, 128, 192)


def Image_open(data: bytes):
    import io

    from PIL import Image
    return Image.open(io.BytesIO(data)).convert("RGB")


def Image_open_gray(path: Path):
    from PIL import Image
    return Image.open(path)


def test_tiled_equals_whole_image_for_convolutional_generator():
    torch.manual_seed(0)
    g = Generator(width=4, n_blocks=1, norm="none", zero_init_residual=False).eval()
    x = torch.rand(1, 3, 100, 180) * 2 - 1  # not multiples of 8 or of the tile
    whole = restore_tensor(g, x)
    tiled = restore_tensor(g, x, tile=32, overlap=48)
    # receptive-field radius of this net is < 48, so the two agree everywhere
    assert torch.allclose(whole, tiled, atol=1e-5)
    # with too little context the tile borders show (the test can fail)
    assert (whole - restore_tensor(g, x, tile=32, overlap=8)).abs().max() > 1e-4


def test_tiled_instance_norm_generator_agrees_away_from_borders(trained):
    g, _ = load_generator(trained / "generator.pt")
    torch.manual_seed(1)
    with torch.no_grad():  # a non-trivial residual, so the comparison means something
        g.out_norm.weight.fill_(0.5)
    x = torch.rand(1, 3, 128, 256) * 2 - 1
    whole, tiled = restore_tensor(g, x), restore_tensor(g, x, tile=128, overlap=64)
    assert (whole - x).abs().mean() > 0.05
    core = (slice(None), slice(None), slice(16, -16), slice(16, -16))
    # instance-norm statistics are per tile, so agreement is close, not exact
    assert (whole[core] - tiled[core]).abs().mean() < 0.1 * (whole[core] - x[core]).abs().mean()


def test_restore_shards_on_prepare_shards_output(trained, tmp_path):
    """Against the real shard writer: a Cityscapes tree -> prepare-shards (orig + jpeg-q10) -> restore."""
    from .cityscapes_fixture import make_cityscapes_folder, label_id_to_train_id

    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards
    from lossyvision.pipelines.stream import ShardStream

    src = make_cityscapes_folder(tmp_path / "src", n=3, h=64, w=128)
    prepare_shards(PrepareConfig(dataset="cityscapes", src=str(src), split="train", out=str(tmp_path / "shards"),
                                 codecs=[CodecSetting("jpeg", 10)], shard_size=2, executor="local", workers=1,
                                 progress=False, ms_ssim=False))
    root = tmp_path / "shards" / "cityscapes"
    m = restore_shards(RestoreConfig(shards=str(root), variant="jpeg-q10", generator=str(trained / "generator.pt"),
                                     tile=64, overlap=32))
    assert m["num_samples"] == 3 and [s["count"] for s in m["shards"]] == [2, 1]
    items = list(ShardStream(root / "train" / "jpeg-q10+restored", root / "train" / "orig"))
    lut = label_id_to_train_id()
    for x, xr, y, key in items:
        city, base = key.split("/")[-2:]
        ids = np.asarray(Image_open_gray(src / "gtFine" / "train" / city / f"{base}_gtFine_labelIds.png"))
        assert torch.equal(y, torch.from_numpy(lut[ids]))  # real label maps travel unchanged
        assert xr.shape == x.shape


# -- issue 15: no host sync in the step, precision policy, losses checked at the log interval ------

SYNCS = ("item", "tolist", "__float__", "__bool__", "__int__", "cpu", "numpy")


def test_gan_step_makes_no_host_sync(shards, monkeypatch):
    """The step returns device tensors; no lossyvision line in it reads a tensor back to the host
    (torch's own CPU-side bookkeeping, such as Adam's step counter, is not a device sync)."""
    import sys

    x8, xc8 = fixed_pair(shards / "train" / "jpeg-q10", shards / "train" / "orig", 128)
    x, xc = to_unit(x8), to_unit(xc8)
    trainer = RestorationTrainer(RestorationConfig(shards=str(shards), variant="jpeg-q10", patch_size=128, **SMALL),
                                 torch.device("cpu"))
    calls = []
    for name in SYNCS:
        def guard(self, *a, _orig=getattr(torch.Tensor, name), _name=name, **k):
            code = sys._getframe(1).f_code
            if "/lossyvision/" in code.co_filename:
                calls.append(f"{_name} in {code.co_name} ({code.co_filename.rsplit('/', 1)[-1]})")
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, guard)
    stats = trainer.train_step(x, xc)
    trainer.train_step(x, xc)
    monkeypatch.undo()
    assert calls == []
    assert all(isinstance(stats[k], torch.Tensor) for k in ("loss_d", "loss_g", "l1", "l_vgg", "l_dist"))


def test_precision_policy_and_scalers_on_cpu(shards):
    cfg = RestorationConfig(shards=str(shards), variant="jpeg-q10", patch_size=128, **SMALL)
    trainer = RestorationTrainer(cfg, torch.device("cpu"))
    # amp is a CUDA feature here: fp32 on CPU, and the two scalers (G, D) pass everything through
    assert trainer.dtype is None and len(trainer.scalers) == 2
    assert not any(s.is_enabled() for s in trainer.scalers) and trainer.state_dict()["scalers"] == []


def test_a_non_finite_loss_is_caught_at_the_log_interval():
    from lossyvision.accel import DeviceSums
    from lossyvision.train.restoration import interval_means

    sums = DeviceSums("cpu")
    for v in (1.0, 3.0):
        sums.add("loss_g", torch.tensor(v))
    assert interval_means(sums, 2, 0, 2) == {"loss_g": 2.0}
    sums.add("loss_d", torch.tensor(float("nan")))
    with pytest.raises(FloatingPointError, match=r"non-finite loss between steps 1 and 2 \(loss_d=nan\)"):
        interval_means(sums, 2, 0, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gan_step_on_cuda_has_no_sync_and_native_precision(shards):
    from lossyvision import accel

    dev = torch.device("cuda")
    x8, xc8 = fixed_pair(shards / "train" / "jpeg-q10", shards / "train" / "orig", 128)
    x, xc = to_unit(x8).to(dev), to_unit(xc8).to(dev)
    trainer = RestorationTrainer(RestorationConfig(shards=str(shards), variant="jpeg-q10", patch_size=128, **SMALL), dev)
    assert trainer.dtype == (torch.bfloat16 if accel.native_bf16(dev) else torch.float16)
    trainer.train_step(x, xc)  # warm-up (lazy inits)
    if trainer.dtype == torch.bfloat16:  # fp16's GradScaler.step reads found_inf: one sync per optimizer
        torch.cuda.set_sync_debug_mode("error")
        try:
            trainer.train_step(x, xc)
        finally:
            torch.cuda.set_sync_debug_mode(0)
