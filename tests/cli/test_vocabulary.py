"""Issue 14, item 1: one CLI vocabulary. Every command spells a concept the same way, shows help and
a default for every option, has -v/-q/--version, reads options from LOSSYVISION_<COMMAND>_<OPTION>,
and still takes the old spellings for one release with one deprecation warning line each."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import lossyvision
from lossyvision.cli import main, prepare_shards_main
from lossyvision.cli.classifier import eval_classifier, resolve_resume, train_expert
from lossyvision.cli.options import VocabOption

from ..train.classifier_shards import make_dataset

COMMANDS = sorted(main.commands.items())
COMMON = {"--help", "--version"}

# spellings that must not be visible options anywhere (their concepts have one spelling now)
RETIRED = {"--num-workers", "--max-samples", "--max-images", "--max-eval-images", "--test-split", "--test-variant",
           "--q", "--opt", "--csv", "--md"}
CANONICAL = {"workers": ["-j", "--workers"], "batch_size": ["-b", "--batch-size"], "quiet": ["-q", "--quiet"],
             "verbose": ["-v", "--verbose"], "limit": ["--limit"], "quality": ["--quality"], "out": ["--out"],
             "resume": ["--resume"], "amp": ["--amp"], "device": ["--device"], "seed": ["--seed"],
             "split": ["--split"], "train_split": ["--train-split"], "val_split": ["--val-split"],
             "variant": ["--variant"], "codec_opt": ["--codec-opt"], "json_out": ["--json"], "shards": ["--shards"]}


def _options(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option)]


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.mark.parametrize("name,cmd", [("lossyvision", main), *COMMANDS], ids=lambda x: x if isinstance(x, str) else "")
def test_every_option_has_help_and_shows_its_default(name, cmd):
    ctx = click.Context(cmd, info_name=name)
    for p in _options(cmd):
        if COMMON & set(p.opts):
            continue
        assert isinstance(p, VocabOption), f"{name} {p.opts}: not defined through lossyvision.cli.options"
        assert p.help and p.help.strip(), f"{name} {p.opts} has no help text"
        extra = p.get_help_extra(ctx)
        plain_switch = p.is_flag and not p.secondary_opts and not p.count  # off unless given
        assert plain_switch or extra.get("default") or extra.get("required"), f"{name} {p.opts} shows no default"


@pytest.mark.parametrize("name,cmd", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_has_version_verbose_quiet(name, cmd):
    opts = {o for p in cmd.get_params(click.Context(cmd, info_name=name, **cmd.context_settings)) for o in p.opts}
    assert {"-v", "--verbose", "-q", "--quiet", "--version", "-h", "--help"} <= opts, name
    verbose = next(p for p in _options(cmd) if "--verbose" in p.opts)
    assert verbose.count
    r = CliRunner().invoke(cmd, ["--version"])
    assert r.exit_code == 0 and lossyvision.__version__ in r.stdout, r.output
    help_text = CliRunner().invoke(cmd, ["--help"]).stdout
    assert not RETIRED & set(help_text.replace(",", " ").split()), f"{name} --help shows a retired spelling"


def test_one_spelling_per_concept():
    for name, cmd in COMMANDS:
        for p in _options(cmd):
            assert p.hidden or not RETIRED & set(p.opts + p.secondary_opts), f"{name}: {p.opts} is a retired spelling"
            if p.name in CANONICAL:
                assert p.opts == CANONICAL[p.name], f"{name}: {p.name} is spelled {p.opts}"
            if "-q" in p.opts:
                assert p.name == "quiet", f"{name}: -q must mean quiet"


# (command, required arguments, old spelling used, parameter, value it must give)
REQUIRED = {
    "encode": ["img.png", "--codec", "jpeg"],
    "prepare-shards": ["--dataset", "samples", "--out", "o"],
    "eval-classifier": ["--model", "m", "--shards", "s"],
    "eval-matrix": ["--model", "a=m", "--shards", "s", "--variant", "v", "--out", "o"],
    "train-restoration": ["--shards", "s", "--variant", "v"],
    "train-segmentation": ["--shards", "s"],
    "eval-segmentation": ["--out", "o"],
}
ALIASES = [
    ("encode", ["--q", "41"], "quality", "41", "--quality"),
    ("encode", ["--opt", "mct=false"], "codec_opt", ("mct=false",), "--codec-opt"),
    ("prepare-shards", ["--q", "75,10", "--codec", "jpeg"], "quality", ("75,10",), "--quality"),
    ("prepare-shards", ["--q=5", "--codec", "jpeg"], "quality", ("5",), "--quality"),
    ("eval-classifier", ["--max-samples", "7"], "limit", 7, "--limit"),
    ("eval-matrix", ["--max-samples", "7"], "limit", 7, "--limit"),
    ("train-restoration", ["--num-workers", "3"], "workers", 3, "-j/--workers"),
    ("train-restoration", ["--max-images", "9"], "limit", 9, "--limit"),
    ("train-segmentation", ["--num-workers=3"], "workers", 3, "-j/--workers"),
    ("train-segmentation", ["--train-variant", "jpeg-q10"], "variant", "jpeg-q10", "--variant"),
    ("train-segmentation", ["--test-variant", "bpg-qp41"], "val_variant", "bpg-qp41", "--val-variant"),
    ("train-segmentation", ["--test-split", "test"], "val_split", "test", "--val-split"),
    ("train-segmentation", ["--max-eval-images", "5"], "val_limit", 5, "--val-limit"),
    ("eval-segmentation", ["--test-variant", "orig", "--test-variant", "jpeg-q10"], "variant", ("orig", "jpeg-q10"), "--variant"),
    ("eval-segmentation", ["--max-images", "4"], "limit", 4, "--limit"),
]


@pytest.mark.parametrize("command,old,param,value,new", ALIASES, ids=[f"{c} {a[0]}" for c, a, *_ in ALIASES])
def test_old_spelling_maps_to_the_new_option_and_warns_once(capsys, command, old, param, value, new):
    cmd = main.commands[command]
    ctx = cmd.make_context(command, [*REQUIRED[command], *old])
    assert ctx.params[param] == value
    name = old[0].split("=")[0]
    assert _lines(capsys.readouterr().err) == [f"warning: {name} is deprecated; use {new}"]
    # the new spelling gives the same value, silently
    ctx = cmd.make_context(command, [*REQUIRED[command], *[new.split("/")[-1] if a.split("=")[0] == name else a for a in old]]
                           if "=" not in old[0] else [*REQUIRED[command], new.split("/")[-1] + "=" + old[0].split("=", 1)[1], *old[1:]])
    assert ctx.params[param] == value and capsys.readouterr().err == ""


def test_output_dir_is_out_and_a_group_flag_reaches_its_command(capsys):
    ctx = main.commands["prepare-shards"].make_context("prepare-shards", ["--dataset", "samples", "--output-dir", "o"])
    assert ctx.params["out"] == "o" and capsys.readouterr().err == ""  # torchvision's spelling: no warning
    group = main.make_context("lossyvision", ["-q", "-v", "prepare-shards", "--dataset", "samples", "--out", "o"])
    sub = main.commands["prepare-shards"].make_context("prepare-shards", ["--dataset", "samples", "--out", "o"], parent=group)
    assert sub.params["quiet"] is True


def _prepare(tmp_path: Path, *args: str, cmd: click.Command = main, env: dict | None = None):
    base = ["prepare-shards"] if cmd is main else []
    return CliRunner().invoke(cmd, [*base, "--dataset", "samples", "--out", str(tmp_path), "--codec", "jpeg",
                                    *args, "--shard-size", "2", "--executor", "local", "-q"], env=env)


def _num_samples(root: Path) -> int:
    from lossyvision.pipelines.stream import read_variant

    return read_variant(root / "samples" / "all" / "jpeg-q10").num_samples


def test_old_quality_spelling_runs_the_same_job_with_one_warning(tmp_path):
    new = _prepare(tmp_path / "new", "--quality", "10", "--limit", "2")
    old = _prepare(tmp_path / "old", "--q", "10", "--limit", "2")
    assert new.exit_code == 0 and old.exit_code == 0, old.output
    assert new.stderr == "" and _lines(old.stderr) == ["warning: --q is deprecated; use --quality"]
    assert _num_samples(tmp_path / "new") == _num_samples(tmp_path / "old") == 2


def test_options_come_from_the_environment_under_both_names(tmp_path):
    env = {"LOSSYVISION_PREPARE_SHARDS_LIMIT": "3", "LOSSYVISION_PREPARE_SHARDS_QUALITY": "10"}
    r = _prepare(tmp_path / "group", env=env)
    assert r.exit_code == 0, r.output
    assert _num_samples(tmp_path / "group") == 3
    r = _prepare(tmp_path / "script", cmd=prepare_shards_main, env=env)  # the standalone prepare-shards
    assert r.exit_code == 0, r.output
    assert _num_samples(tmp_path / "script") == 3
    r = _prepare(tmp_path / "flag", "--limit", "2", env=env)  # the command line wins
    assert r.exit_code == 0 and _num_samples(tmp_path / "flag") == 2
    # named after the option's spelling (--json), not its Python name
    r = CliRunner().invoke(main, ["codecs"], env={"LOSSYVISION_CODECS_JSON": "1"})
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["name"]


@pytest.mark.parametrize("args,words", [
    (["prepare-shards", "--dataset", "samples", "--out", "o", "-j", "0"], "'-j' / '--workers'"),
    (["prepare-shards", "--dataset", "samples", "--out", "", "--quality", "5", "--codec", "jpeg"], "'--out': is empty"),
    (["encode", "x.png", "--codec", "jpeg", "--codec-opt", "j2k.mct=false"], "is for codec 'j2k'"),
    (["eval-classifier", "--model", "m", "--shards", "s", "--limit", "0"], "--limit"),
    (["eval-classifier", "--model", "m", "--shards", "s", "--json", "r.json"], "--out DIR"),
    (["eval-classifier", "--model", "m", "--shards", "s", "--json=r.json"], "--out DIR"),
    (["train-expert", "--shards", "s", "--variant", "v", "--resume", "weights.pth"], "give the run folder or its last.pt"),
    (["train-segmentation", "--shards", "s", "--out", "a", "--resume", "b/checkpoints/last.pt"], "is not the run in --out"),
])
def test_errors_of_the_new_spellings_are_one_line_exit_2(tmp_path, args, words):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    lines = _lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], r.stderr


def test_resume_path_names_the_run(tmp_path):
    assert resolve_resume(None, "o", "last.pt") == (None, "o")
    assert resolve_resume("last", "o", "last.pt") == (True, "o")
    assert resolve_resume(str(tmp_path), None, "last.pt") == (True, str(tmp_path))
    assert resolve_resume(str(tmp_path / "run" / "last.pt"), None, "last.pt") == (True, str(tmp_path / "run"))
    assert resolve_resume("runs/seg/checkpoints/last.pt", "runs/seg", "checkpoints/last.pt") == (True, "runs/seg")
    with pytest.raises(click.UsageError, match="not the run in --out"):
        resolve_resume(str(tmp_path / "a" / "last.pt"), str(tmp_path / "b"), "last.pt")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("vocab"), n_train=8, n_val=6, size=16, classes=3, shard_size=3)


def _eval(toy: Path, *args: str):
    return CliRunner().invoke(eval_classifier, ["--model", "small_cnn", "--variant", "jpeg-q10", "-b", "3", "-j", "0",
                                                "--device", "cpu", *args])


def test_eval_classifier_new_spellings(toy, tmp_path):
    r = _eval(toy, "--shards", str(toy), "--split", "val", "--out", str(tmp_path / "r"), "--json", "--limit", "4", "-q")
    assert r.exit_code == 0 and r.stderr == "", r.output
    rows = json.loads(r.stdout)
    assert [x["samples"] for x in rows] == [4]
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["results"] == rows and saved["config"]["max_samples"] == 4
    assert (tmp_path / "r" / "results.csv").read_text().startswith("model,variant")
    assert "| jpeg-q10 |" in (tmp_path / "r" / "results.md").read_text()


def test_eval_classifier_old_spellings_still_work_with_one_warning_each(toy, tmp_path):
    r = _eval(toy, "--shards", str(toy / "val"), "--max-samples", "4", "--csv", str(tmp_path / "r.csv"),
              "--md", str(tmp_path / "r.md"), "-q")
    assert r.exit_code == 0, r.output
    warnings = _lines(r.stderr)
    assert len(warnings) == 4 and all(w.startswith("warning: ") and "deprecated" in w for w in warnings), warnings
    assert any(f"--shards {toy} --split val" in w for w in warnings)
    assert "| 4 |" in r.stdout and (tmp_path / "r.csv").is_file() and (tmp_path / "r.md").is_file()


def test_training_passes_quiet_and_logs_like_the_standalone_script(toy, tmp_path):
    args = ["--shards", str(toy), "--variant", "jpeg-q10", "--model", "small_cnn", "--epochs", "1", "-b", "4", "-j", "0",
            "--device", "cpu", "--teacher-cache", "off", "--max-steps-per-epoch", "1"]
    r = CliRunner().invoke(main, ["train-expert", *args, "--out", str(tmp_path / "a"), "-q"])
    assert r.exit_code == 0 and r.stderr == "", r.output
    assert json.loads((tmp_path / "a" / "config.json").read_text())["quiet"] is True
    standalone = CliRunner().invoke(train_expert, [*args, "--out", str(tmp_path / "b")])
    grouped = CliRunner().invoke(main, ["train-expert", *args, "--out", str(tmp_path / "c")])
    assert standalone.exit_code == 0 and grouped.exit_code == 0, grouped.output
    assert logging.getLogger().level == logging.INFO  # training logs its progress lines by default, either way

    def kinds(text: str) -> list[str]:
        return [ln.split(" ")[2] + " " + ln.split(" ")[3] for ln in _lines(text)]  # "LEVEL logger:" of each line

    assert kinds(standalone.stderr) == kinds(grouped.stderr) and kinds(grouped.stderr)
    r = CliRunner().invoke(train_expert, [*args, "--out", str(tmp_path / "a"), "--resume", str(tmp_path / "a"), "-q"])
    assert r.exit_code == 0, r.output  # --resume PATH: the run folder (finished, so nothing more to do)


@pytest.mark.parametrize("module", ["lossyvision", "lossyvision.cli"])
def test_python_m_lossyvision(module):
    p = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and lossyvision.__version__ in p.stdout, p.stderr
    env = {**os.environ, "LOSSYVISION_CODECS_JSON": "true"}
    p = subprocess.run([sys.executable, "-m", module, "codecs"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and {"jpeg", "bpg"} <= {r["name"] for r in json.loads(p.stdout)}, p.stderr
