"""The whole paper-1 path through the command line, on real shards made by prepare-shards."""

import json
import os

import pandas as pd
import pytest
from click.testing import CliRunner

from lossyvision.cli import main


@pytest.mark.slow
def test_prepare_train_eval_report(imagenet_root, tmp_path):
    run = CliRunner()
    out = str(tmp_path / "shards")
    for split in ("train", "val"):
        r = run.invoke(main, ["prepare-shards", "--dataset", "imagenet", "--src", imagenet_root, "--split", split,
                              "--out", out, "--codec", "jpeg", "--quality", "10", "--crop", "resize72-center64",
                              "--shard-size", "4", "--executor", "local", "--quiet"])
        assert r.exit_code == 0, r.output
    runs = str(tmp_path / "run")
    r = run.invoke(main, ["train-expert", "--shards", os.path.join(out, "imagenet"), "--variant", "jpeg-q10", "--out", runs,
                          "--model", "small_cnn", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert os.path.isfile(os.path.join(runs, "best.pt")) or os.path.isfile(os.path.join(runs, "last.pt"))
    ckpt = os.path.join(runs, "best.pt") if os.path.isfile(os.path.join(runs, "best.pt")) else os.path.join(runs, "last.pt")
    res = str(tmp_path / "acc" / "results.json")
    r = run.invoke(main, ["eval-classifier", "--model", ckpt, "--shards", os.path.join(out, "imagenet"),
                          "--variant", "orig", "--variant", "jpeg-q10", "--out", str(tmp_path / "acc"), "--workers", "0", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    rows = json.load(open(res))
    rows = rows["results"]
    assert {x["variant"] for x in rows} == {"orig", "jpeg-q10"} and all(0 <= x["top1_pct"] <= 100 for x in rows)
    r = run.invoke(main, ["rate-report", os.path.join(out, "imagenet", "val"), "--results", res])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(os.path.join(out, "imagenet", "val", "report", "rates.csv"))
    assert "top1_pct" in df.columns and df.set_index("variant").loc["jpeg-q10", "top1_pct"] >= 0
    assert os.path.isfile(os.path.join(out, "imagenet", "val", "report", "rate_accuracy.png"))
