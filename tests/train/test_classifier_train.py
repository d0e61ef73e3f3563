import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from .classifier_shards import make_dataset
from lossyvision.cli_classifier import train_classifier, train_expert
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
    assert [r["epoch"] for r in log] == [0, 1]
    # the checkpoint rebuilds its architecture on its own (used by eval-classifier)
    assert isinstance(create_model(str(tmp_path / "full" / "best.pt")), torch.nn.Module)


def test_plateau_cuts_and_stops(toy, tmp_path):
    # a BatchNorm-free model at lr 1e-30 keeps a constant val loss: with patience 0 every epoch after the
    # first is a plateau, so the lr is cut twice and training stops after 3 of the 10 epochs
    out = train(_cfg(toy, tmp_path, recipe="finetune", model="squeezenet1_1", lr=1e-30, epochs=10,
                     plateau_patience=0, max_lr_cuts=2))
    assert out["lr_cuts"] == 2 and out["epochs"] == 3
    assert out["history"][-1]["lr_next"] == pytest.approx(1e-30 / 25)


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
    rec = json.loads((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()[0])
    assert rec["train_samples"] == 24 and rec["val_samples"] == 8  # 12 + 12 and 4 + 4: equal per rank


def test_cli_train_expert_writes_config_and_reports_errors(toy, tmp_path):
    runner = CliRunner()
    args = ["--shards", str(toy), "--variant", "jpeg-q10", "--out", str(tmp_path / "run"), "--model", "small_cnn",
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--quiet"]
    res = runner.invoke(train_expert, args)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["recipe"] == "expert" and cfg["lr"] == 1e-5 and cfg["betas"] == [0.5, 0.99]
    assert cfg["kl_reduction"] == "batchmean" and cfg["alpha"] == 1e-2
    assert (tmp_path / "run" / "teacher-train.h5").exists()

    res = runner.invoke(train_classifier, ["--recipe", "finetune", *args[:2], "--variant", "jpeg-q5", *args[4:]])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "variant 'jpeg-q5' not found" in res.output and "jpeg-q10, orig" in res.output

    res = runner.invoke(train_classifier, [*args, "--model", "no_such_net"])
    assert res.exit_code == 1 and "unknown model 'no_such_net'" in res.output


def test_presets_follow_the_paper_and_offline_weights_fail_clearly(monkeypatch, tmp_path):
    cfg = preset_config("marie2022-mnasnet-stability", shards="s", variant="orig", out="o", lr=2e-6)
    assert (cfg.lr, cfg.alpha, cfg.sigma, cfg.kl_reduction, cfg.max_lr_cuts) == (2e-6, 5e-3, 4e-2, "sum", 1)
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
