"""Every benchmark in tools/bench runs from a clean checkout (tiny sizes; no timing assertions)."""

import json
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


def _rows(path: Path, bench: str) -> dict[str, dict]:
    """The rows of a tools/bench/common.py file, by name; checks the protocol's shape."""
    data = json.loads(path.read_text())
    assert data["bench"] == bench
    rows = {r["name"]: r for r in data["rows"]}
    for r in rows.values():
        assert set(r) == {"name", "value", "unit", "target", "ok"}, r
        assert isinstance(r["value"], float)
        assert (r["target"] is None) == (r["ok"] is None), r
    return rows


@pytest.mark.slow
def test_train_bench_runs_and_prints_every_ratio(tmp_path):
    out = _run(["tools/bench/train.py", "--images", "24", "--size", "64", "--batch-size", "8", "--workers", "1",
                "--repeats", "1", "--epochs", "1", "--steps", "1", "--model", "mnasnet0_5", "--mix-classes", "4",
                "--mix-per-class", "8", "--mix-shard-size", "8", "--mix-batch", "4", "--efficiency", "--eff-model",
                "mnasnet0_5", "--eff-batch", "8", "--json", str(tmp_path / "train.json")])
    for row in ("shuffled (default for train*)", "sorted (before)", "orig PNG", "orig QOI", "orig NPY",
                "single-variant shard loader", "teacher cache", "Loader efficiency"):
        assert row in out, row
    rows = _rows(tmp_path / "train.json", "train")
    targeted = {"class mix, shuffled shards: distinct classes per batch / i.i.d.": ">= 0.9x",
                "pair loader, orig NPY / ImageFolder, steady, uint8 out": ">= 1.5x",
                "single-variant loader / ImageFolder, steady, uint8 out": ">= 2.5x",
                "expert step, teacher cache / fine-tune step, wall": "<= 1.05x",
                "loader efficiency (mnasnet0_5, batch 8, cpu): shard loader / synthetic batch": ">= 0.9x"}
    for name, target in targeted.items():
        assert rows[name]["target"] == target and isinstance(rows[name]["ok"], bool), name
    for name in ("class mix, sorted shards: distinct classes per batch / i.i.d.", "ImageFolder loader, steady",
                 "pair loader, orig PNG / ImageFolder, steady, + CPU normalisation",
                 "pair loader, orig QOI / ImageFolder, epoch", "expert step, online teacher / fine-tune step, wall"):
        assert rows[name]["target"] is None, name


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
                    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_repro_runs_end_to_end(tmp_path):
    out = _run(["tools/repro/fashion_mnist.py", "--out", str(tmp_path), "--teacher-limit", "300", "--train-limit", "64",
                "--test-limit", "64", "--seeds", "0", "1", "--teacher-epochs", "1", "--epochs", "1", "--alphas", "32",
                "--variants", "jpeg-q3", "bpg-qp51"])
    assert "paired difference" in out and "Universal models" in out and "| 32 |" in out
    assert (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_prepare_bench_runs_every_measurement(tmp_path):
    out = _run(["tools/bench/prepare.py", "--quick", "--large", "--json", str(tmp_path / "prepare.json")])
    for text in ("metrics share", "RGB -> YCbCr 4:2:0", "machine ceiling", "Where 2 workers lose", "Peak RSS"):
        assert text in out, text
    rows = _rows(tmp_path / "prepare.json", "prepare")
    for name, target in (("metrics share, nine settings", "<= 10 %"), ("RGB -> YCbCr 4:2:0 per 224x224", "<= 0.5 ms"),
                         ("1 -> 2 workers (Ray)", ">= 1.8x"), ("large-image peak RSS / image bytes (after, shard 2)", "<= 24x")):
        assert rows[name]["target"] == target, rows[name]
    assert 0 < rows["metrics share, JPEG only"]["value"] < 100


@pytest.mark.slow
def test_codecs_bench_writes_a_row_per_codec_and_size(tmp_path):
    out = _run(["tools/bench/codecs.py", "--sizes", "32x32,48x32", "--photos", "1", "--repeat", "1",
                "--codecs", "jpeg-q75,bpg-qp51", "--json", str(tmp_path / "codecs.json")])
    assert "| jpeg-q75 | 32x32 |" in out and "| bpg-qp51 | 48x32 |" in out  # the Markdown table is still there
    rows = _rows(tmp_path / "codecs.json", "codecs")
    assert set(rows) == {f"enc+dec ms {c} {s}" for c in ("jpeg-q75", "bpg-qp51") for s in ("32x32", "48x32")}
    assert all(r["unit"] == "ms" and r["target"] is None and r["value"] > 0 for r in rows.values())


@pytest.mark.slow
def test_scale_bench_writes_its_json_and_the_headline_rows(tmp_path):
    full, heads = tmp_path / "scale.json", tmp_path / "rows.json"
    out = _run(["tools/bench/scale.py", "--quick", "--imagenet-images", "2", "--cores", "16,1024",
                "--json", str(full), "--rows-json", str(heads)])
    assert "Expected wall time" in out
    data = json.loads(full.read_text())  # its own structure, unchanged
    assert {"machine", "quick", "assumptions", "datasets", "rows"} <= set(data) and data["quick"] is True
    assert {(r["dataset"], r["split"], r["cores"]) for r in data["rows"]} >= {("imagenet", "train", 1024)}
    rows = _rows(heads, "scale")
    for name in ("imagenet: CPU per image", "imagenet/train (1,281,167 images): CPU-hours",
                 "imagenet/train: expected wall on 16 cores, shared FS",
                 "imagenet/train: expected wall on 1024 cores, shared FS", "cityscapes: CPU per image",
                 "cityscapes/train (2,975 images): CPU-hours", "cityscapes/train: expected wall on 1024 cores, shared FS"):
        assert name in rows and rows[name]["target"] is None, name


@pytest.mark.slow
def test_summary_runs_the_codec_bench_and_prints_one_table(tmp_path):
    out = _run(["tools/bench/summary.py", "--only", "codecs", "--quick", "--json", str(tmp_path / "all.json")])
    assert "| codec | size | bytes |" in out  # the script's own table, streamed through
    assert "| bench | measurement | value | unit | target | ok |" in out
    assert "| codecs | enc+dec ms jpeg-q75 224x224 |" in out
    data = json.loads((tmp_path / "all.json").read_text())
    assert data["failed"] == {} and {r["bench"] for r in data["rows"]} == {"codecs"}


@pytest.mark.slow
def test_segmentation_bench_times_every_pipeline(tmp_path):
    out = _run(["tools/bench/segmentation.py", "--size", "128x64", "--images", "2", "--encoder", "resnet18",
                "--gen-width", "8", "--gen-blocks", "1", "--device", "cpu", "--json", str(tmp_path / "seg.json")])
    assert "| OO, CO, RO |" in out and "| CC, OC |" in out and "| OR, RR |" in out
    rows = _rows(tmp_path / "seg.json", "segmentation")
    for stage in ("encode", "decode", "restore", "segment"):
        assert rows[f"{stage} ms per 128x64 frame (bpg-qp41)"]["value"] > 0, stage
    assert rows["compress before inference (CC) / originals (RO), per frame"]["value"] >= 1.0


def test_summary_reports_failed_and_missing_scripts(tmp_path, monkeypatch, capfd):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_summary", REPO / "tools" / "bench" / "summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    (tmp_path / "boom.py").write_text("import sys\nprint('partial table')\nsys.exit('codec went boom')\n")
    (tmp_path / "fine.py").write_text("import json, sys\nsys.path.insert(0, %r)\nimport common\n"
                                      "common.write_json(sys.argv[-1], 'fine', [common.target_row('r', 2.0, '>=', 1.5),"
                                      " common.row('n', 0.5, 'ms')])\n" % str(REPO / "tools" / "bench"))
    monkeypatch.setattr(summary, "HERE", tmp_path)
    monkeypatch.setattr(summary, "ORDER", ["boom", "missing", "fine"])
    monkeypatch.setattr(sys, "argv", ["summary.py", "--json", str(tmp_path / "all.json")])
    assert summary.main() == 1
    out = capfd.readouterr().out  # the scripts write to the inherited file descriptor
    assert "partial table" in out  # streamed through
    assert "| boom | failed: exit 1: codec went boom |" in out
    assert "| missing | failed: no such script: tools/bench/missing.py |" in out
    assert "| fine | r | 2.00 | x | >= 1.5x | ✓ |" in out and "| fine | n | 0.5 | ms | – | – |" in out
    data = json.loads((tmp_path / "all.json").read_text())
    assert set(data["failed"]) == {"boom", "missing"} and [r["bench"] for r in data["rows"]] == ["fine", "fine"]


def test_summary_passes_large_code_to_prepare_alone(tmp_path, monkeypatch, capfd):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_summary", REPO / "tools" / "bench" / "summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    # stand-ins that report the arguments they were given as one row each
    script = ("import sys\nsys.path.insert(0, %r)\nimport common\n"
              "common.write_json(sys.argv[-1], 'x', [common.row(' '.join(sys.argv[1:-2]), 1.0)])\n" % str(REPO / "tools" / "bench"))
    for name in ("codecs", "prepare"):
        (tmp_path / f"{name}.py").write_text(script)
    before = tmp_path / "before"
    (before / "lossyvision").mkdir(parents=True)
    monkeypatch.setattr(summary, "HERE", tmp_path)
    monkeypatch.setattr(summary, "ORDER", ["codecs", "prepare"])
    monkeypatch.setattr(sys, "argv", ["summary.py", "--large-code", str(before)])
    assert summary.main() == 0
    out = capfd.readouterr().out
    assert f"| prepare | --large --large-code {before} |" in out
    assert "| codecs | --sizes" not in out and "--large-code" not in out.split("| prepare |")[0]
    monkeypatch.setattr(sys, "argv", ["summary.py", "--large-code", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as e:
        summary.main()
    assert e.value.code == 2 and "not a lossyvision checkout" in capfd.readouterr().err


def test_seg_input_bench_times_both_functions_at_every_scale(tmp_path):
    out = _run(["tools/bench/seg_input.py", "--quick", "--repeats", "1", "--json", str(tmp_path / "seg_input.json")])
    assert "| scale | before samples/s | after samples/s | after / before | identical crops |" in out
    rows = _rows(tmp_path / "seg_input.json", "seg_input")
    for scale in ("0.5", "1.25", "2.0", "random 0.5-2.0"):
        for when in ("before (resize frame, crop)", "after (crop, resize)"):
            assert rows[f"samples/s per worker, scale {scale}, {when}"]["value"] > 0, (scale, when)
        assert rows[f"after / before, scale {scale}"]["unit"] == "x"
    data = json.loads((tmp_path / "seg_input.json").read_text())
    assert data["identical"] or not data["exact"]  # the same crops wherever the rounding is reproduced


def test_restore_bench_times_serial_and_overlapped_in_both_modes(tmp_path):
    out = _run(["tools/bench/restore.py", "--quick", "--json", str(tmp_path / "restore.json")])
    assert "### real generator" in out and "### 5 ms stand-in" in out
    assert "| workers | median s | runs s | img/s | serial / this |" in out
    rows = _rows(tmp_path / "restore.json", "restore")
    for mode in ("real generator", "5 ms stand-in"):
        for n in (0, 1):
            assert rows[f"restore s, {mode}, workers={n}"]["value"] > 0, (mode, n)
        assert rows[f"overlap speed-up, {mode}, workers=1 (serial / overlapped)"]["unit"] == "x"
        assert rows[f"overlapped shards byte-identical to serial, {mode} (1 = yes)"]["value"] == 1.0, mode
    assert all(r["target"] is None for r in rows.values())  # no timing targets
    assert json.loads((tmp_path / "restore.json").read_text())["identical"] is True
