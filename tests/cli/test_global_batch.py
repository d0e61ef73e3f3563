"""Issue 15, item 4 (CLI side): --global-batch on the three training commands. -b is per process;
without it the batch is global (--global-batch, a preset's batch or the default), so torchrun keeps
the paper's batch. The trainers' own split over the processes is tested in tests/train/."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lossyvision.cli import main
from lossyvision.cli.classifier import train_classifier, train_expert, training_config
from lossyvision.cli.segmentation import segmentation_config, train_segmentation

from ..train.classifier_shards import make_dataset

EXPERT = ["--shards", "s", "--variant", "jpeg-q10", "--out", "o"]
SEG = ["--shards", "s"]


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    for name in ("WORLD_SIZE", "LOSSYVISION_TRAIN_EXPERT_BATCH_SIZE", "LOSSYVISION_TRAIN_EXPERT_GLOBAL_BATCH"):
        monkeypatch.delenv(name, raising=False)


def _classifier_cfg(cmd: click.Command, *args: str):
    ctx = cmd.make_context(cmd.name, list(args))
    with ctx:
        params = dict(ctx.params)
        recipe = params.pop("recipe", "expert")
        return training_config(recipe, **params)


def _seg_cfg(*args: str):
    ctx = train_segmentation.make_context("train-segmentation", [*SEG, *args])
    with ctx:
        return segmentation_config(**ctx.params)


def _one_line_exit_2(args: list[str], words: list[str], env: dict | None = None) -> str:
    r = CliRunner().invoke(main, args, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.mark.parametrize("cmd", [train_expert, train_classifier], ids=lambda c: c.name)
def test_global_batch_reaches_the_classifier_config(cmd):
    cfg = _classifier_cfg(cmd, *EXPERT, "--global-batch", "64")
    assert cfg.global_batch == 64
    cfg = _classifier_cfg(cmd, *EXPERT, "-b", "16")  # per process: no global batch
    assert (cfg.batch_size, cfg.global_batch) == (16, None)


def test_global_batch_reaches_the_segmentation_config():
    assert _seg_cfg("--global-batch", "16").global_batch == 16
    cfg = _seg_cfg("-b", "2")
    assert (cfg.batch_size, cfg.global_batch) == (2, None)
    assert _seg_cfg().global_batch == 8  # the default batch, paper 2's, is global


def test_a_preset_batch_is_global_and_b_is_per_process(monkeypatch):
    cfg = _classifier_cfg(train_expert, *EXPERT, "--preset", "marie2022-resnet50-expert")
    assert (cfg.global_batch, cfg.lr) == (384, 1e-5)  # the paper's batch over all GPUs, the paper's lr
    assert _classifier_cfg(train_expert, *EXPERT).global_batch == 320  # no preset: the default, global too
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun sets it: 4 x 96, not 4 x 384
    assert _classifier_cfg(train_expert, *EXPERT, "--preset", "marie2022-resnet50-expert").global_batch == 384
    cfg = _classifier_cfg(train_expert, *EXPERT, "--preset", "marie2022-resnet50-expert", "-b", "48")
    assert (cfg.batch_size, cfg.global_batch) == (48, None)


def test_global_batch_from_the_environment(monkeypatch):
    monkeypatch.setenv("LOSSYVISION_TRAIN_EXPERT_GLOBAL_BATCH", "96")
    assert _classifier_cfg(train_expert, *EXPERT).global_batch == 96
    assert _classifier_cfg(train_expert, *EXPERT, "--global-batch", "32").global_batch == 32  # the command line wins


@pytest.mark.parametrize("command,args", [("train-expert", EXPERT), ("train-classifier", EXPERT),
                                          ("train-segmentation", SEG)])
def test_batch_size_and_global_batch_together_are_one_line_exit_2(command, args):
    _one_line_exit_2([command, *args, "-b", "4", "--global-batch", "8"],
                     ["-b/--batch-size", "--global-batch", "give one of them"])
    line = _one_line_exit_2([command, *args, "--global-batch", "8"], ["-b/--batch-size", "--global-batch"],
                            env={f"LOSSYVISION_{command.upper().replace('-', '_')}_BATCH_SIZE": "4"})
    assert f"LOSSYVISION_{command.upper().replace('-', '_')}_BATCH_SIZE" in line  # says where the -b came from


@pytest.mark.parametrize("command,args", [("train-expert", EXPERT), ("train-segmentation", SEG)])
def test_global_batch_must_be_positive(command, args):
    for bad in ("0", "-8"):
        _one_line_exit_2([command, *args, "--global-batch", bad], ["--global-batch"])


def test_a_batch_that_does_not_divide_over_the_processes_is_refused_before_training():
    env = {"WORLD_SIZE": "3"}
    _one_line_exit_2(["train-expert", *EXPERT, "--preset", "marie2022-mnasnet-expert"],
                     ["preset marie2022-mnasnet-expert's batch 320", "3 processes", "--global-batch", "-b"], env=env)
    _one_line_exit_2(["train-segmentation", *SEG], ["batch 8", "3 processes"], env=env)
    _one_line_exit_2(["train-expert", *EXPERT, "--global-batch", "64"], ["--global-batch 64", "multiple of 3"], env=env)


@pytest.mark.parametrize("cmd", [train_expert, train_classifier, train_segmentation], ids=lambda c: c.name)
def test_help_says_what_the_global_batch_is(cmd):
    text = " ".join(CliRunner().invoke(cmd, ["--help"]).stdout.split())
    assert "--global-batch N" in text and "N / WORLD_SIZE" in text and "lr is not rescaled" in text
    assert "Images per step in each process" in text  # -b


def test_training_runs_with_the_global_batch(tmp_path):
    toy = make_dataset(tmp_path / "toy", n_train=8, n_val=4, size=16, classes=3, shard_size=4)
    args = ["--shards", str(toy), "--variant", "jpeg-q10", "--model", "small_cnn", "--epochs", "1", "-j", "0",
            "--device", "cpu", "--teacher-cache", "off", "--max-steps-per-epoch", "1", "--global-batch", "4",
            "--out", str(tmp_path / "run"), "-q"]
    r = CliRunner().invoke(main, ["train-expert", *args])
    assert r.exit_code == 0, r.output
    assert json.loads((Path(tmp_path) / "run" / "config.json").read_text())["global_batch"] == 4


def test_segmentation_training_runs_with_the_global_batch(tmp_path):
    from ..train.cityscapes_fixture import make_cityscapes_shards

    shards = make_cityscapes_shards(tmp_path / "cs", split="train", n=2)
    out = tmp_path / "seg"
    r = CliRunner().invoke(main, ["train-segmentation", "--shards", str(shards), "--out", str(out), "--encoder",
                                  "resnet18", "--encoder-weights", "none", "--crop-size", "64", "--global-batch", "2",
                                  "--steps", "1", "-j", "0", "--no-eval", "-q"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["global_batch"], cfg["batch_size"]) == (2, 2)
