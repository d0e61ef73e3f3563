"""Every benchmark in tools/bench runs from a clean checkout (tiny sizes; no timing assertions)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


def _run(args: list[str], timeout: int = 600) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_train_bench_runs_and_prints_every_ratio():
    out = _run(["tools/bench/train.py", "--images", "24", "--size", "64", "--batch-size", "8", "--workers", "1",
                "--repeats", "1", "--epochs", "1", "--steps", "1", "--model", "mnasnet0_5", "--mix-classes", "4",
                "--mix-per-class", "8", "--mix-shard-size", "8", "--mix-batch", "4", "--efficiency", "--eff-model",
                "mnasnet0_5", "--eff-batch", "8"])
    for row in ("shuffled (default for train*)", "sorted (before)", "orig PNG", "orig QOI", "orig NPY",
                "single-variant shard loader", "teacher cache", "Loader efficiency"):
        assert row in out, row


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
                    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_repro_runs_end_to_end(tmp_path):
    out = _run(["tools/repro/fashion_mnist.py", "--out", str(tmp_path), "--teacher-limit", "300", "--train-limit", "64",
                "--test-limit", "64", "--seeds", "0", "1", "--teacher-epochs", "1", "--epochs", "1", "--alphas", "32",
                "--variants", "jpeg-q3", "bpg-qp51"])
    assert "paired difference" in out and "Universal models" in out and "| 32 |" in out
    assert (tmp_path / "results.json").exists()
