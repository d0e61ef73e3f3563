"""prepare-shards --mean-bpp: one codec parameter for the whole split, chosen on a seeded sample of it,
on real photos (scikit-image's, the `samples` dataset: 18 images, 224x224 crops)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from lossyvision.cli import main
from lossyvision.cli.prepare import parse_codec_settings
from lossyvision.pipelines.meanbpp import PRESETS, sample_positions
from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

from .test_prepare import read_wds


def _prepare(out, *args: str):
    return CliRunner().invoke(main, ["prepare-shards", "--dataset", "samples", "--out", str(out), "--executor", "local",
                                     "--no-ms-ssim", "-q", *args])


def _manifest(out, variant: str) -> dict:
    return json.loads((out / "samples" / "all" / variant / "_manifest.json").read_text())


@pytest.fixture(scope="module")
def chosen(tmp_path_factory):
    """Two BPG targets and a JPEG one, the sample being the whole split (the default 64 > 18 images)."""
    out = tmp_path_factory.mktemp("meanbpp")
    r = _prepare(out, "--codec", "bpg", "--mean-bpp", "0.3,0.15", "--codec", "jpeg", "--mean-bpp", "0.8")
    assert r.exit_code == 0, r.output
    return out, r.output


@pytest.mark.parametrize("codec,target", [("bpg", 0.3), ("bpg", 0.15), ("jpeg", 0.8)])
def test_the_split_mean_lands_within_one_parameter_step_of_the_target(chosen, codec, target):
    out, stdout = chosen
    variants = {v: _manifest(out, v) for v in os.listdir(out / "samples" / "all") if v.startswith(codec)}
    (variant, m), = [(v, m) for v, m in variants.items() if (m.get("rate_target") or {}).get("mean_bpp") == target]
    t = m["rate_target"]
    q = t["chosen"]
    assert variant == f"{codec}-{'qp' if codec == 'bpg' else 'q'}{q}" and m["codec"]["q"] == q
    assert {"mean_bpp", "sample", "seed", "sample_mean_bpp", "chosen"} <= set(t)
    assert t["sample"] == t["split_images"] == 18 and t["seed"] == 0 and t["sample_sem_bpp"] == 0
    assert f"--mean-bpp {target:g} for {codec}:" in stdout and f"-> {variant}," in stdout  # printed before the job
    # the sample was the whole split, encoded as the job encodes it: the same mean to the last digit
    assert m["means"]["bpp"] == pytest.approx(t["sample_mean_bpp"], rel=1e-12)
    # the neighbours, encoded for real by another run into the same --out
    r = _prepare(out, "--codec", codec, "--quality", f"{q - 1},{q + 1}")
    assert r.exit_code == 0, r.output
    step = "qp" if codec == "bpg" else "q"
    rates = sorted(_manifest(out, f"{codec}-{step}{v}")["means"]["bpp"] for v in (q - 1, q + 1))
    assert rates[0] < target < rates[1]
    assert _manifest(out, variant)["rate_target"] == t  # the plain rerun keeps the record


def test_a_sample_smaller_than_the_split_is_seeded_and_its_numbers_are_the_jobs(tmp_path):
    keys = []
    for run in ("a", "b"):
        r = _prepare(tmp_path / run, "--codec", "jpeg", "--mean-bpp", "0.8", "--rate-sample", "5", "--order-seed", "3",
                     "--order", "shuffled")
        assert r.exit_code == 0, r.output
        assert "over 5 of 18 images (seed 3," in r.output
        (variant,) = [v for v in os.listdir(tmp_path / run / "samples" / "all") if v.startswith("jpeg")]
        t = _manifest(tmp_path / run, variant)["rate_target"]
        keys.append(t["sample_keys"])
    assert keys[0] == keys[1] and t["sample"] == 5 and t["seed"] == 3 and t["sample_sem_bpp"] > 0
    # a shuffled split's sample is the job's first 5 images (the same permutation) ...
    samples = read_wds(str(tmp_path / "a" / "samples" / "all" / variant))
    assert [s["__key__"] for s in samples[:5]] == keys[0]
    ordered = sorted(s["__key__"] for s in samples)
    assert keys[0] == [ordered[i] for i in sample_positions(18, 5, 3)]
    # ... and the sample mean is the mean of those images' bpp in the job's own per-sample records
    bpp = {s["__key__"]: json.loads(s["json"])["bpp"] for s in samples}
    assert t["sample_mean_bpp"] == pytest.approx(np.mean([bpp[k] for k in keys[0]]), rel=1e-12)
    assert dict(map(tuple, t["tried"]))[t["chosen"]] == t["sample_mean_bpp"]


def test_a_continuous_parameter_is_chosen_in_log_space(tmp_path):
    m = prepare_shards(PrepareConfig(dataset="samples", out=str(tmp_path), limit=6, executor="local", progress=False,
                                     ms_ssim=False, write_orig=False, codecs=[CodecSetting("j2k", mean_bpp=0.3)]))
    ((variant, man),) = m.items()
    t = man["rate_target"]
    assert variant == f"j2k-r{t['chosen']:g}" and isinstance(t["chosen"], (int, float))
    tried = dict(map(tuple, t["tried"]))
    below = [v for v in tried.values() if v <= 0.3]
    above = [v for v in tried.values() if v > 0.3]
    assert below and above and t["bracketed"]
    # the closest probe wins, and the probes close in on the target: within 1 % of it
    assert abs(t["sample_mean_bpp"] - 0.3) == min(abs(v - 0.3) for v in tried.values()) < 0.003
    assert man["means"]["bpp"] == pytest.approx(t["sample_mean_bpp"], rel=1e-12)


def test_the_paper_preset_expands_per_codec():
    s = parse_codec_settings(("bpg", "msh"), (), (), (), ("katakol2021", "katakol2021"))
    assert [(x.name, x.mean_bpp) for x in s] == [("bpg", b) for b in (0.0454, 0.0674, 0.0870, 0.1279)] + \
        [("msh", b) for b in (0.0419, 0.0613, 0.0891, 0.1279)]
    assert all(x.q is None and x.bpp is None for x in s)
    assert PRESETS["katakol2021"]["bpg"] == (0.0454, 0.0674, 0.0870, 0.1279)
    mixed = parse_codec_settings(("bpg",), (), (), ("preset=slow",), ("0.2,katakol2021",))
    assert [x.mean_bpp for x in mixed] == [0.2, 0.0454, 0.0674, 0.0870, 0.1279]
    assert mixed[0].options == {"preset": "slow"}


def test_two_targets_that_choose_one_parameter_write_it_once(tmp_path, caplog):
    m = prepare_shards(PrepareConfig(dataset="samples", out=str(tmp_path), limit=3, executor="local", progress=False,
                                     ms_ssim=False, write_orig=False,
                                     codecs=[CodecSetting("bpg", mean_bpp=0.3), CodecSetting("bpg", mean_bpp=0.301)]))
    ((variant, man),) = m.items()
    assert man["rate_target"]["mean_bpp"] == 0.3 and man["rate_target"]["also_targets"] == [0.301]
    assert f"chooses {variant}, as 0.3 does" in caplog.text


@pytest.mark.parametrize("args,message", [
    (["--codec", "jpeg", "--mean-bpp", "katakol2021"], "--mean-bpp katakol2021: the paper gives rate points for bpg, msh, not jpeg"),
    (["--codec", "bpg", "--mean-bpp", "abc"], "'abc' is neither a rate in bits per pixel nor a preset (katakol2021)"),
    (["--codec", "bpg", "--mean-bpp", "0"], "'0' is out of range; use a rate in (0, 48)"),
    (["--codec", "bpg", "--mean-bpp", "-0.1"], "'-0.1' is out of range"),
    (["--codec", "bpg", "--mean-bpp", "0.1,"], "empty value in '0.1,'"),
    (["--codec", "png", "--mean-bpp", "0.1"], "codec 'png' is lossless; a rate target needs a lossy codec"),
    (["--codec", "bpg", "--mean-bpp", "0.1", "--quality", "40"], "mix of --quality and --mean-bpp"),
    (["--codec", "bpg", "--mean-bpp", "0.1", "--codec", "jpeg"], "2 --codec but 1 --mean-bpp"),
    (["--codec", "bpg", "--mean-bpp", "0.1,0.1"], "--mean-bpp target(s) requested twice: bpg 0.1"),
    (["--codec", "bpg", "--mean-bpp", "0.1", "--rate-sample", "0"], "'--rate-sample': 0 is not in the range x>=1"),
    (["--codec", "msh", "--mean-bpp", "katakol2021", "--codec-opt", "weights=q3.pth"], "weights=PATH is one quality's"),
], ids=["preset-without-points", "word", "zero", "negative", "empty", "lossless", "mixed", "unpaired", "twice", "sample",
        "one-quality-weights"])
def test_bad_values_exit_2_with_one_line(tmp_path, args, message):
    r = _prepare(tmp_path, *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "samples").exists()  # refused before any work


@pytest.mark.ray
@pytest.mark.slow
def test_ray_executor_chooses_the_same_parameter_and_writes_the_same_shards(tmp_path):
    from .test_prepare import digest

    common = dict(dataset="samples", limit=8, shard_size=2, progress=False, ms_ssim=False,
                  codecs=[CodecSetting("bpg", mean_bpp=0.3)])
    a = prepare_shards(PrepareConfig(out=str(tmp_path / "local"), executor="local", **common))
    b = prepare_shards(PrepareConfig(out=str(tmp_path / "ray"), executor="ray", workers=2, **common))
    assert sorted(a) == sorted(b) and len(a) == 2
    assert digest(str(tmp_path / "local")) == digest(str(tmp_path / "ray"))
