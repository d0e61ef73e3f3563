import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from .classifier_shards import make_dataset
from lossyvision.cli.classifier import train_classifier, train_expert
from lossyvision.train.classifier import TrainConfig, preset_config, train
from lossyvision.train.models import WeightsUnavailable, create_model

REPO = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shards"), n_train=24, n_val=8, shard_size=8)


def _cfg(toy, out, **kw):
    base = dict(shards=str(toy), variant="jpeg-q10", out=str(out), model="small_cnn", recipe="expert",
                epochs=2, batch_size=8, lr=1e-3, alpha=1.0, workers=0, shuffle_buffer=8, progress=False,
                device="cpu", max_lr_cuts=99, deterministic=True, teacher_cache="off")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("teacher_cache", ["off", "auto"])
def test_resume_ends_with_the_same_weights(toy, tmp_path, teacher_cache):
    train(_cfg(toy, tmp_path / "full", teacher_cache=teacher_cache))
    train(_cfg(toy, tmp_path / "split", teacher_cache=teacher_cache, epochs=1))
    train(_cfg(toy, tmp_path / "split", teacher_cache=teacher_cache, epochs=2, resume=True))
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [-1, 0, 1]  # -1: the pretrained model's val loss, the first best
    for r in log:  # top-1 in percent: 100 x a whole number of correct samples / val_samples
        correct = r["val_top1_pct"] * r["val_samples"] / 100
        assert 0 <= r["val_top1_pct"] <= 100 and correct == pytest.approx(round(correct), abs=1e-6)
        assert not {k for k in r if "top1" in k or "top5" in k} - {"val_top1_pct", "train_top1_pct"}
    # the checkpoint rebuilds its architecture on its own (used by eval-classifier)
    assert isinstance(create_model(str(tmp_path / "full" / "best.pt")), torch.nn.Module)


def test_plateau_cuts_and_stops(toy, tmp_path):
    # a BatchNorm-free model at lr 1e-30 keeps a constant val loss. Epoch -1 (the initial model) seeds
    # the best loss, epoch 0 is left out of the rule (the authors' code), and with patience 0 every
    # later epoch is a plateau: cuts at epochs 1 and 2, then the stop.
    out = train(_cfg(toy, tmp_path, recipe="finetune", model="squeezenet1_1", lr=1e-30, epochs=10,
                     plateau_patience=0, max_lr_cuts=2, stop_rule="cuts"))
    assert out["lr_cuts"] == 2 and out["epochs"] == 3
    assert out["history"][0]["epoch"] == -1 and out["history"][1]["lr_cuts"] == 0
    assert out["history"][-1]["lr_next"] == pytest.approx(1e-30 / 25)
    assert (Path(tmp_path) / "best.pt").exists()  # the initial model, when nothing beats it


@pytest.mark.parametrize("lr0,cuts", [(1e-5, 4), (5e-6, 4), (1e-6, 3), (1e-7, 3)])
def test_authors_stop_rule_and_its_float_quirk(toy, tmp_path, lr0, cuts):
    """python/expert_training.py stops at the cut where lr/5/5/.. <= (1/5**3) * lr0: in floats that is the
    4th cut for lr0 1e-5 and 5e-6 (8.000000000000001e-08 > 8e-08) and the 3rd for 1e-6."""
    from lossyvision.train.classifier import Trainer

    tr = Trainer(_cfg(toy, tmp_path, lr=lr0, max_lr_cuts=3, stop_rule="authors", plateau_patience=2))
    tr.plateau["best"] = 1.0
    steps = 0
    while not tr._plateau_step(1.0):
        steps += 1
        assert steps < 100
    assert tr.lr_cuts == cuts and steps == 3 * cuts - 1  # a cut on every third epoch without a new best
    assert tr._plateau_step(0.5) is False and tr.plateau["counter"] == 0  # a new best resets the counter


@pytest.mark.slow
def test_ddp_two_processes_train_and_checkpoint(toy, tmp_path):
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from lossyvision.train.classifier import TrainConfig, train\n"
        f"train(TrainConfig(shards={str(toy)!r}, variant='jpeg-q10', out={str(tmp_path / 'ddp')!r}, model='small_cnn',"
        " recipe='expert', epochs=1, batch_size=4, workers=1, progress=False, device='cpu', teacher_cache='auto'))\n")
    (tmp_path / "ddp_train.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(tmp_path / "ddp_train.py")], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ck["epoch"] == 1
    rec = json.loads((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()[-1])
    assert rec["train_samples"] == 24 and rec["val_samples"] == 8  # 12 + 12 and 4 + 4: equal per rank


def test_cli_train_expert_writes_config_and_reports_errors(toy, tmp_path):
    runner = CliRunner()
    args = ["--shards", str(toy), "--variant", "jpeg-q10", "--out", str(tmp_path / "run"), "--model", "small_cnn",
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--quiet"]
    res = runner.invoke(train_expert, args)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["recipe"] == "expert" and cfg["lr"] == 1e-5 and cfg["betas"] == [0.5, 0.99]
    assert cfg["kl_reduction"] == "batchmean" and cfg["alpha"] == 3.2  # the paper's 1e-2 x 320 with 'sum'
    assert cfg["stability_noise"] == "uint8" and cfg["reset_optimizer_on_cut"] and cfg["seed_best_from_initial"]
    assert (tmp_path / "run" / "teacher-train.h5").exists()

    res = runner.invoke(train_classifier, ["--recipe", "finetune", *args[:2], "--variant", "jpeg-q5", *args[4:]])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "variant 'jpeg-q5' not found" in res.output and "jpeg-q10, orig" in res.output

    res = runner.invoke(train_classifier, [*args, "--model", "no_such_net"])
    assert res.exit_code == 1 and "unknown model 'no_such_net'" in res.output


def test_presets_follow_the_paper_and_offline_weights_fail_clearly(monkeypatch, tmp_path):
    cfg = preset_config("marie2022-mnasnet-stability", shards="s", variant="orig", out="o", lr=2e-6)
    assert (cfg.lr, cfg.alpha, cfg.sigma, cfg.kl_reduction, cfg.max_lr_cuts) == (2e-6, 5e-3 * 320, 4e-2, "batchmean", 1)
    assert (cfg.plateau_patience, cfg.seed_best_from_initial, cfg.stability_noise) == (3, False, "uint8")
    # Table I cells as the authors ran them: ResNet50 per cell, the lossless row, MnasNet everywhere 1e-5 / 1e-2
    cell = preset_config("marie2022-resnet50-expert-jpeg-q75", shards="s", out="o")
    assert (cell.variant, cell.lr, cell.alpha, cell.batch_size) == ("jpeg-q75", 5e-6, 5e-3 * 384, 384)
    lossless = preset_config("marie2022-resnet50-expert-orig", shards="s", out="o")
    assert (lossless.variant, lossless.lr, lossless.alpha) == ("orig", 1e-6, 1e-3 * 384)
    assert preset_config("marie2022-resnet50-finetune-j2k-r200-nomct", shards="s", out="o").lr == 5e-6
    assert preset_config("marie2022-resnet50-expert-j2k-r200-nomct", shards="s", out="o").lr == 1e-5
    assert preset_config("marie2022-mnasnet-expert-bpg-qp51", shards="s", out="o").alpha == pytest.approx(3.2)
    from lossyvision.train.classifier import TABLE1_CELLS, list_presets
    assert len(list_presets("marie2022-*-expert-*")) == 2 * len(TABLE1_CELLS) == 20
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("marie2021")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty: forces the download path

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable, match="--weights PATH"):
        create_model("torchvision:mnasnet1_0:IMAGENET1K_V1")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        create_model("torchvision:mnasnet1_0:IMAGENET9K")


def test_universal_expert_trains_on_a_mixture_and_sits_in_the_matrix(tmp_path):
    from lossyvision.cli.classifier import eval_matrix

    toy2 = make_dataset(tmp_path / "shards", n_train=24, n_val=8, shard_size=8, variants=("jpeg-q10", "jpeg-q50"))
    runner = CliRunner()
    common = ["--shards", str(toy2), "--model", "small_cnn", "--epochs", "1", "--batch-size", "8", "--workers", "0",
              "--device", "cpu", "--quiet"]
    res = runner.invoke(train_expert, [*common, "--variant", "jpeg-q10", "--variant", "jpeg-q50", "--out", str(tmp_path / "uni")])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "uni" / "config.json").read_text())
    assert cfg["variant"] == ["jpeg-q10", "jpeg-q50"]
    res = runner.invoke(train_expert, [*common, "--variant", "jpeg-q10", "--out", str(tmp_path / "single")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(eval_matrix, ["--shards", str(toy2), "--out", str(tmp_path / "m"), "--workers", "0",
                                      "--device", "cpu", "--quiet",
                                      "--model", f"jpeg-q10={tmp_path / 'single' / 'best.pt'}",
                                      "--model", f"universal={tmp_path / 'uni' / 'best.pt'}",
                                      "--variant", "jpeg-q10", "--variant", "jpeg-q50"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m" / "matrix.json").read_text())
    assert m["models"] == ["jpeg-q10", "universal"] and len(m["top1_pct"][1]) == 2


def test_cli_lists_presets_and_a_cell_preset_brings_its_variant(toy, tmp_path):
    runner = CliRunner()
    res = runner.invoke(train_classifier, ["--list-presets"])
    assert res.exit_code == 0 and "marie2022-resnet50-expert-jpeg-q75\texpert\tjpeg-q75\tlr 5e-06\talpha 1.92" in res.output
    res = runner.invoke(train_classifier, ["--preset", "marie2022-mnasnet-finetune-jpeg-q10", "--shards", str(toy),
                                           "--out", str(tmp_path / "cell"), "--model", "small_cnn", "--epochs", "1",
                                           "--batch-size", "8", "--workers", "0", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "cell" / "config.json").read_text())
    assert (cfg["variant"], cfg["recipe"], cfg["lr"]) == ("jpeg-q10", "finetune", 1e-5)
