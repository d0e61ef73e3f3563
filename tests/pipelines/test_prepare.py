"""prepare-shards end to end: real codecs, real tars read back by plain webdataset."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from lossyvision.cli import main
from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, PrepareError, prepare_shards

SETTINGS = [CodecSetting("jpeg", 10), CodecSetting("j2k", 200), CodecSetting("bpg", 51)]


def tars(vdir):
    return sorted(f for f in os.listdir(vdir) if f.endswith(".tar"))


def digest(root):
    """sha256 of every shard under root."""
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith(".tar"):
                out[os.path.relpath(os.path.join(d, f), root)] = hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
    return out


def read_wds(vdir):
    import webdataset as wds

    urls = [os.path.join(vdir, t) for t in tars(vdir)]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


@pytest.fixture
def imagenet_out(imagenet_root, tmp_path):
    out = str(tmp_path / "shards")
    cfg = PrepareConfig(dataset="imagenet", src=imagenet_root, split="val", out=out, codecs=SETTINGS, shard_size=4, executor="local", progress=False)
    return out, prepare_shards(cfg), cfg


def test_shards_read_back_with_plain_webdataset(imagenet_out):
    from lossyvision import codecs

    out, manifests, _ = imagenet_out
    base = os.path.join(out, "imagenet", "val")
    assert sorted(os.listdir(base)) == [".lock", "bpg-qp51", "j2k-r200", "jpeg-q10", "orig"]  # .lock: one job per output
    orig = read_wds(os.path.join(base, "orig"))
    # 9 good images + CMYK, grey, PNG-with-alpha, 16-bit: 13; truncated and zero-byte are skipped
    assert len(orig) == 13
    for variant, ext in (("jpeg-q10", "jpg"), ("j2k-r200", "j2k"), ("bpg-qp51", "hevc")):
        samples = read_wds(os.path.join(base, variant))
        assert [s["__key__"] for s in samples] == [s["__key__"] for s in orig]
        assert [s["cls"] for s in samples] == [s["cls"] for s in orig]
        c = codecs.from_spec(variant)
        for s, o in zip(samples, orig):
            st = json.loads(s["json"])
            assert st["bytes"] == len(s[ext]) and st["spec"] == variant
            assert st["bpp"] == pytest.approx(len(s[ext]) * 8 / (224 * 224))
            dec = c.decode(s[ext])
            assert dec.shape == (224, 224, 3)
            ref = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(io.BytesIO(o["png"])).convert("RGB"))
            from lossyvision.quality import psnr, ssim

            assert st["psnr"] == pytest.approx(psnr(ref, dec), abs=1e-9)
            assert st["ssim"] == pytest.approx(ssim(ref, dec), abs=1e-9)
    labels = sorted(int(s["cls"]) for s in orig)
    assert labels.count(0) == 3 + 4 and labels.count(1) == 3 and labels.count(2) == 3


def test_variants_are_aligned_shard_by_shard(imagenet_out):
    out, manifests, _ = imagenet_out
    base = os.path.join(out, "imagenet", "val")
    import webdataset as wds

    for name in tars(os.path.join(base, "orig")):
        keys = {v: [s["__key__"] for s in wds.WebDataset(os.path.join(base, v, name), shardshuffle=False)] for v in manifests}
        assert len({tuple(k) for k in keys.values()}) == 1


def test_manifest_agrees_with_samples(imagenet_out):
    out, manifests, _ = imagenet_out
    for v, m in manifests.items():
        vdir = os.path.join(out, "imagenet", "val", v)
        on_disk = json.load(open(os.path.join(vdir, "_manifest.json")))
        assert on_disk["complete"] and on_disk["num_samples"] == 13 and on_disk["num_shards"] == 4
        assert on_disk["classes"] == ["n01440764", "n01443537", "n01484850"]
        assert {"numpy", "pillow", "imagecodecs", "lossyvision"} <= set(on_disk["versions"])
        for e in on_disk["shards"]:
            p = os.path.join(vdir, e["name"])
            assert hashlib.sha256(open(p, "rb").read()).hexdigest() == e["sha256"]
            assert os.path.getsize(p) == e["size"]
        fails = {f["source"].rsplit("/", 1)[1]: f["reason"] for f in on_disk["failures"]}
        assert set(fails) == {"odd0005.JPEG", "odd0006.JPEG"} and "zero-byte" in fails["odd0006.JPEG"]
        if v != "orig":
            samples = read_wds(vdir)
            stats = [json.loads(s["json"]) for s in samples]
            assert on_disk["means"]["bytes"] == pytest.approx(np.mean([s["bytes"] for s in stats]))
            assert on_disk["means"]["psnr"] == pytest.approx(np.mean([s["psnr"] for s in stats]))
            assert on_disk["means"]["ssim"] == pytest.approx(np.mean([s["ssim"] for s in stats]))
            assert on_disk["codec"]["spec"] == v and on_disk["codec"]["versions"]
            assert on_disk["means"]["enc_ms"] > 0


def test_rerun_is_a_noop(imagenet_out):
    out, _, cfg = imagenet_out
    before = digest(out)
    mtimes = {p: os.path.getmtime(os.path.join(out, p)) for p in before}
    t = time.perf_counter()
    prepare_shards(cfg)
    assert digest(out) == before
    assert {p: os.path.getmtime(os.path.join(out, p)) for p in before} == mtimes
    assert time.perf_counter() - t < 10


def test_changed_options_refuse_to_mix(imagenet_out):
    out, _, cfg = imagenet_out
    cfg.shard_size = 3
    with pytest.raises(PrepareError, match="made with other options"):
        prepare_shards(cfg)


def test_cityscapes_labels_and_store_decoded(cityscapes_root, tmp_path):
    from lossyvision.codecs import png_decode
    from lossyvision.pipelines.sources import create_source

    out = str(tmp_path / "s")
    cfg = PrepareConfig(dataset="cityscapes", src=cityscapes_root, split="train", out=out, crop="crop:128x64",
                        codecs=[CodecSetting("jpeg", 20)], shard_size=3, executor="local", store_decoded=True, progress=False)
    prepare_shards(cfg)
    src = create_source("cityscapes", cityscapes_root, "train")
    want = {it.key: cfg_crop(src.load(it)) for it in src.items()}
    samples = read_wds(os.path.join(out, "cityscapes", "train", "jpeg-q20"))
    assert len(samples) == 4
    for s in samples:
        lab = png_decode(s["seg.png"])
        assert lab.shape == (64, 128) and np.array_equal(lab, want[s["__key__"]])
        assert png_decode(s["decoded.png"]).shape == (64, 128, 3)


def cfg_crop(rgb_lab):
    from lossyvision.pipelines.crops import parse_crop

    return parse_crop("crop:128x64")(*rgb_lab)[1]


def test_rate_controlled_variant(tmp_path):
    out = str(tmp_path / "s")
    cfg = PrepareConfig(dataset="samples", out=out, split="all", codecs=[CodecSetting("jpeg", bpp=0.5)], limit=4,
                        executor="local", progress=False, write_orig=False)
    m = prepare_shards(cfg)["jpeg-bpp0.5"]
    stats = [json.loads(s["json"]) for s in read_wds(os.path.join(out, "samples", "all", "jpeg-bpp0.5"))]
    assert len(stats) == 4 and all(s["bpp"] <= 0.5 for s in stats)
    assert len({s["q"] for s in stats}) > 1  # chosen per image
    assert m["means"]["bpp"] <= 0.5


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("split,n_tars", [("val", 4 * 5), ("train", 4 * 3)])
def test_one_and_two_ray_workers_give_identical_shards(imagenet_root, tmp_path, split, n_tars):
    local = str(tmp_path / "local")
    two = str(tmp_path / "two")
    common = dict(dataset="imagenet", src=imagenet_root, split=split, codecs=SETTINGS, shard_size=3, progress=False)
    prepare_shards(PrepareConfig(out=local, workers=1, executor="local", **common))
    prepare_shards(PrepareConfig(out=two, workers=2, executor="ray", **common))
    a, b = digest(local), digest(two)
    assert len(a) == n_tars and a == b


def _keys_in_shard_order(vdir):
    return [s["__key__"] for s in read_wds(vdir)]


def test_training_split_is_a_seeded_permutation(tmp_path):
    import random

    from tests.conftest import make_imagenet

    root = make_imagenet(str(tmp_path / "src"), per_class=6)
    common = dict(dataset="imagenet", src=root, codecs=[CodecSetting("jpeg", 10)], shard_size=4, executor="local",
                  progress=False)
    m = prepare_shards(PrepareConfig(out=str(tmp_path / "a"), split="train", **common))
    prepare_shards(PrepareConfig(out=str(tmp_path / "b"), split="train", **common))
    assert digest(str(tmp_path / "a")) == digest(str(tmp_path / "b"))  # same bytes twice
    assert m["orig"]["order"] == {"policy": "shuffled", "seed": 0}
    assert m["orig"]["orig_format"] == "npy"  # training splits: uncompressed orig, read by plain webdataset as arrays
    import webdataset as wds
    train_orig = os.path.join(str(tmp_path / "a"), "imagenet", "train", "orig")
    arr = next(iter(wds.WebDataset([os.path.join(train_orig, t) for t in tars(train_orig)], shardshuffle=False).decode()))["npy"]
    assert arr.dtype == np.uint8 and arr.shape == (224, 224, 3)
    base = os.path.join(str(tmp_path / "a"), "imagenet", "train")
    keys = _keys_in_shard_order(os.path.join(base, "orig"))
    assert keys == _keys_in_shard_order(os.path.join(base, "jpeg-q10"))  # variants stay aligned
    perm = list(range(len(keys)))
    random.Random(0).shuffle(perm)
    assert keys == [sorted(keys)[i] for i in perm] and keys != sorted(keys)
    wnids = [k.split("/")[1] for k in keys[:4]]
    assert len(set(wnids)) > 1  # the first shard is no longer one class

    other = prepare_shards(PrepareConfig(out=str(tmp_path / "c"), split="train", order_seed=1, **common))
    assert other["orig"]["order"]["seed"] == 1
    assert _keys_in_shard_order(os.path.join(str(tmp_path / "c"), "imagenet", "train", "orig")) != keys
    sub = prepare_shards(PrepareConfig(out=str(tmp_path / "d"), split="train", limit=5, **common))
    assert _keys_in_shard_order(os.path.join(str(tmp_path / "d"), "imagenet", "train", "orig")) == keys[:5]
    assert sub["orig"]["num_samples"] == 5

    val = prepare_shards(PrepareConfig(out=str(tmp_path / "a"), split="val", **common))
    vkeys = _keys_in_shard_order(os.path.join(str(tmp_path / "a"), "imagenet", "val", "orig"))
    assert val["orig"]["order"]["policy"] == "sorted" and vkeys == sorted(vkeys)
    assert val["orig"]["orig_format"] == "png"
    with pytest.raises(PrepareError, match="other options"):  # a rerun with another order is refused
        prepare_shards(PrepareConfig(out=str(tmp_path / "a"), split="train", order="sorted", **common))


# -- command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--codec", "jpg", "--quality", "10"], "unknown codec 'jpg'"),
        (["--codec", "jpeg", "--quality", "101"], "out of range"),
        (["--codec", "jpeg", "--quality", "10", "--codec", "j2k"], "2 --codec but 1 --quality"),
        (["--codec", "jpeg", "--quality", "ten"], "not a number"),
        (["--codec", "jpeg", "--quality", "10", "--crop", "middle"], "unknown crop policy"),
        (["--codec", "jpeg", "--quality", "10", "--shard-size", "0"], "shard-size"),
    ],
)
def test_bad_options_fail_fast_with_one_line(args, msg, tmp_path):
    r = CliRunner().invoke(main, ["prepare-shards", "--dataset", "samples", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output
    assert not os.path.exists(tmp_path / "o" / "samples")


def test_missing_src_and_out_inside_src(imagenet_root, tmp_path):
    r = CliRunner().invoke(main, ["prepare-shards", "--dataset", "imagenet", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(main, ["prepare-shards", "--dataset", "imagenet", "--src", imagenet_root, "--out", os.path.join(imagenet_root, "shards")])
    assert r.exit_code == 2 and "inside --src" in r.output


def test_console_script_exit_code_and_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lossyvision.cli", "prepare-shards", "--dataset", "samples", "--out", str(tmp_path),
                        "--codec", "bpg", "--quality", "60"], capture_output=True, text=True)
    assert p.returncode == 2 and "out of range" in p.stderr and "Traceback" not in p.stderr


def test_every_command_has_help_and_version():
    from lossyvision import __version__

    for name in main.list_commands(None):
        r = CliRunner().invoke(main, [name, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, name
        r = CliRunner().invoke(main, [name, "--version"])
        assert r.exit_code == 0 and __version__ in r.output, name


@pytest.mark.ray
@pytest.mark.slow
def test_auto_moves_long_jobs_to_ray_with_identical_output(imagenet_root, tmp_path, monkeypatch, caplog):
    import logging

    import lossyvision.pipelines.prepare as prep

    common = dict(dataset="imagenet", src=imagenet_root, split="val", codecs=SETTINGS, shard_size=3, progress=False)
    prepare_shards(PrepareConfig(out=str(tmp_path / "local"), workers=1, executor="local", **common))
    monkeypatch.setattr(prep, "RAY_WORTH_S", 0.0)  # any remaining work "pays" for Ray
    with caplog.at_level(logging.INFO, logger="lossyvision.pipelines.prepare"):
        prepare_shards(PrepareConfig(out=str(tmp_path / "auto"), workers=2, executor="auto", **common))
    assert "moving to Ray" in caplog.text
    assert digest(str(tmp_path / "local")) == digest(str(tmp_path / "auto"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_end_cleanly_and_resume(tmp_path, sig):
    # full-size photos: long enough (~12 s) that the signal lands mid-job however fast the codecs get
    args = ["--dataset", "samples", "--codec", "bpg", "--quality", "30", "--crop", "full", "--shard-size", "2", "--executor", "local"]
    out = str(tmp_path / "o")
    # SIGINT back to its default in the child: a test run started in the background (nohup, `&` in a
    # script) ignores SIGINT, and the child would inherit that and never see the signal
    proc = subprocess.Popen([sys.executable, "-m", "lossyvision.cli", "prepare-shards", "--out", out, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    man = os.path.join(out, "samples", "all", "bpg-qp30", "_manifest.json")
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(man):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rerun the same command to resume" in err and "Traceback" not in err
    r = CliRunner().invoke(main, ["prepare-shards", "--out", out, *args, "--quiet"])
    assert r.exit_code == 0 and json.load(open(man))["complete"]
    assert not [f for d, _, fs in os.walk(out) for f in fs if ".tmp-" in f]


def test_a_shard_changed_on_disk_is_rewritten(imagenet_out):
    out, _, cfg = imagenet_out
    before = digest(out)
    p = os.path.join(out, "imagenet", "val", "jpeg-q10", "shard-000001.tar")
    data = bytearray(open(p, "rb").read())
    data[600] ^= 0xFF  # same size, different bytes (and a new mtime)
    open(p, "wb").write(bytes(data))
    prepare_shards(cfg)
    assert digest(out) == before


def test_small_images_are_coded_by_every_codec_before_the_metrics_and_large_ones_one_at_a_time():
    """roundtrips(): a 224x224 crop goes through every codec first (the metrics then run back to
    back with the reference's statistics in the cache); an image above quality.STRIP_PIXELS is
    decoded one codec at a time, so a task never holds more than one decoded large image."""
    from lossyvision import codecs as lv_codecs
    from lossyvision import quality
    from lossyvision.pipelines.prepare import roundtrips

    events: list[str] = []

    class Logged:
        def __init__(self, spec):
            self.codec = lv_codecs.from_spec(spec)

        def roundtrip(self, rgb):
            events.append(f"code {self.codec.spec}")
            return self.codec.roundtrip(rgb)

    specs = ["jpeg-q75", "jpeg-q10", "png"]
    rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    for shape, interleaved in (((224, 224), False), ((600, 600), True)):
        events.clear()
        img = np.ascontiguousarray(np.resize(rgb, (*shape, 3)))
        for c, r in roundtrips(img, [Logged(s) for s in specs]):
            assert r.decoded.shape == img.shape
            events.append(f"measure {c.codec.spec}")
        coded = [f"code {s}" for s in specs]
        measured = [f"measure {s}" for s in specs]
        want = [e for pair in zip(coded, measured) for e in pair] if interleaved else coded + measured
        assert events == want, (shape, events)
    assert 600 * 600 > quality.STRIP_PIXELS >= 224 * 224
