"""tools/gpu/check.py runs in its reduced mode on any machine (CPU here), so it cannot rot before a GPU
machine is lent; on a GPU the same command (without --smoke) is the prepared check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "tools" / "gpu" / "check.py"


@pytest.mark.slow
def test_smoke_mode_runs_every_check_and_writes_one_report(tmp_path):
    out = tmp_path / "report.json"
    p = subprocess.run([sys.executable, str(CHECK), "--smoke", "--out", str(out), "--workdir", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "smoke"
    checks = report["checks"]
    assert set(checks) == {"env", "msh", "classifier_syncs", "classifier_throughput", "deeplab_step", "gan_step",
                           "restore_whole_frame", "fp16_scaler"}
    for name, rec in checks.items():
        assert rec["status"] in ("ok", "skipped"), (name, rec)
        if rec["status"] == "skipped":
            assert rec["reason"], name
    assert checks["msh"]["forked_equal_inprocess"] is True
    assert checks["classifier_syncs"]["steps"] == 2 and checks["classifier_syncs"]["s_per_step"] > 0
    assert checks["deeplab_step"]["s_per_step"] > 0 and checks["gan_step"]["s_per_step"] > 0
    if not torch.cuda.is_available():
        assert checks["fp16_scaler"]["status"] == "skipped"
    assert "| check | status | s | numbers |" in p.stdout


def test_bad_options_are_one_line_and_exit_2(tmp_path):
    p = subprocess.run([sys.executable, str(CHECK), "--smoke", "--only", "nope", "--out", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "unknown check" in p.stderr
    if not torch.cuda.is_available():
        p = subprocess.run([sys.executable, str(CHECK), "--out", str(tmp_path / "r.json")], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 2 and "--smoke" in p.stderr and p.stderr.count("\n") == 1
