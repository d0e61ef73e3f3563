"""Accuracy and mIoU are percent in every output, and every such field says so (``*_pct``).

The model and the labels are built so that the answer is known (top-1 exactly 70 %, mIoU exactly
100 %): a fraction anywhere (0.7, 1.0) fails these tests.
"""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from ..train.classifier_shards import write_variant

from lossyvision.eval.classification import (EvalConfig, eval_matrix, evaluate, markdown_table, matrix_markdown,
                                             write_results)
from lossyvision.eval.segmentation import confusion_matrix, result_record, save_result, write_report
from lossyvision.reports.rate_report import rate_report

# a field that holds an accuracy, an IoU or a pixel accuracy
ACCURACY_NAME = re.compile(r"top[15]|iou|acc", re.IGNORECASE)


def accuracy_names_say_pct(names) -> list[str]:
    """The accuracy-like names that do not end in _pct (should be none)."""
    return [n for n in names if ACCURACY_NAME.search(n) and not n.endswith("_pct")]


class ColourNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """10 pure-colour images, 7 labelled with their colour: top-1 is exactly 70 %."""
    root = tmp_path_factory.mktemp("units")
    samples = []
    for i in range(10):
        img = np.zeros((16, 16, 3), np.uint8)
        img[..., i % 3] = 255
        samples.append((f"val/img{i:02d}", img, i % 3 if i < 7 else (i % 3 + 1) % 3))
    for v, spec in (("orig", None), ("jpeg-q10", "jpeg-q10"), ("jpeg-q50", "jpeg-q50")):
        write_variant(root / "val", v, samples, shard_size=4, classes=["red", "green", "blue"], spec=spec)
    model = root / "colour.pt"
    torch.jit.script(ColourNet()).save(str(model))
    return root, model


def _rows(root, model):
    return evaluate(EvalConfig(model=str(model), shards=str(root / "val"), variants=["orig", "jpeg-q10", "jpeg-q50"],
                               batch_size=4, workers=0, device="cpu", mean=(0, 0, 0), std=(1, 1, 1)))


def test_eval_classifier_outputs_are_percent(known, tmp_path):
    root, model = known
    rows = _rows(root, model)
    write_results(rows, tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.md", config={})
    doc = json.loads((tmp_path / "r.json").read_text())["results"]
    for r in doc:
        assert r["top1_pct"] == pytest.approx(70.0) and r["top5_pct"] == pytest.approx(100.0)
        assert accuracy_names_say_pct(r) == []
    with open(tmp_path / "r.csv") as f:
        table = list(csv.DictReader(f))
    assert accuracy_names_say_pct(table[0]) == [] and float(table[0]["top1_pct"]) == pytest.approx(70.0)
    md = (tmp_path / "r.md").read_text()
    assert "top-1 (%)" in md and "| 70.00 | 100.00 |" in md and md == markdown_table(rows)


def test_eval_matrix_is_percent(known, tmp_path):
    root, model = known
    m = eval_matrix({"a": str(model)}, str(root / "val"), ["orig", "jpeg-q10"], batch_size=4, workers=0,
                    mean=(0, 0, 0), std=(1, 1, 1), device="cpu")
    d = m.to_dict()
    assert accuracy_names_say_pct(d) == [] and np.allclose(d["top1_pct"], 70.0) and np.allclose(d["top5_pct"], 100.0)
    assert "| 70.00 | 70.00 |" in matrix_markdown(m) and "(%)" in matrix_markdown(m)


def test_rate_report_joins_percent_and_reads_the_old_fractions(known, tmp_path):
    root, model = known
    rows = _rows(root, model)
    write_results(rows, tmp_path / "new.json", config={})
    # the previous release's eval-classifier JSON: 'top1'/'top5' as fractions
    old = [{"model": r["model"], "variant": r["variant"], "top1": r["top1_pct"] / 100, "top5": r["top5_pct"] / 100}
           for r in rows]
    (tmp_path / "old.json").write_text(json.dumps({"config": {}, "results": old}))
    rep = rate_report(str(root / "val"), out=str(tmp_path / "rep"), plot=False,
                      results=[f"new={tmp_path / 'new.json'}", f"old={tmp_path / 'old.json'}"])
    df = pd.read_csv(tmp_path / "rep" / "rates.csv")
    assert accuracy_names_say_pct(df.columns) == []
    assert len(df) == 6 and np.allclose(df["top1_pct"], 70.0) and np.allclose(df["top5_pct"], 100.0)
    assert set(df["recipe"]) == {"new", "old"}
    js = pd.read_json(tmp_path / "rep" / "rates.json")
    assert np.allclose(js["top1_pct"], 70.0)
    assert "| 70.00 | 100.00 |" in rep.markdown
    bd = pd.read_csv(tmp_path / "rep" / "bd_rate.csv")
    same = bd[(bd["comparison"] == "recipe") & (bd["metric"] == "top1_pct")]
    assert len(same) == 1 and same["bd_quality"].iloc[0] == pytest.approx(0.0, abs=1e-9)  # equal curves


def test_segmentation_outputs_are_percent(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 19, (24, 32)).astype(np.uint8)
    rec = result_record(confusion_matrix(y, y), 1, "jpeg-q10", "orig", 0.5, None, split="val")
    assert rec["miou_pct"] == 100.0 and rec["miou_small_pct"] == 100.0 and rec["pixel_accuracy_pct"] == 100.0
    assert set(rec["iou_pct"].values()) == {100.0}
    assert accuracy_names_say_pct(rec) == []
    save_result(rec, tmp_path)
    paths = write_report([rec], tmp_path)
    df = pd.read_csv(paths["csv"])
    assert accuracy_names_say_pct(df.columns) == [] and df["miou_pct"].iloc[0] == 100.0
    assert df["road_iou_pct"].iloc[0] == 100.0 and "traffic_light_iou_pct" in df.columns
    rows = json.loads(paths["json"].read_text())
    assert accuracy_names_say_pct(rows[0]) == [] and rows[0]["miou_pct"] == 100.0
    assert "mIoU (%)" in paths["md"].read_text()
    # rate-report reads eval-segmentation's results.json as a curve per configuration
    from lossyvision.eval.rates import load_results

    (acc,) = load_results([str(paths["json"])])
    assert acc["variant"] == "jpeg-q10" and acc["recipe"] == "CO" and acc["miou_pct"] == 100.0


def test_old_segmentation_records_are_read(tmp_path):
    """A result file of the previous release (miou, per_class, small, big; already percent)."""
    from lossyvision.eval.segmentation import load_results

    y = np.zeros((4, 4), np.uint8)
    rec = result_record(confusion_matrix(y, y), 1, "orig", "orig", None, None)
    old = {({"miou_pct": "miou", "iou_pct": "per_class", "miou_small_pct": "small", "miou_big_pct": "big",
             "pixel_accuracy_pct": "pixel_accuracy"}).get(k, k): v for k, v in rec.items()}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "orig__orig.json").write_text(json.dumps(old))
    (r,) = load_results(tmp_path)
    assert r["miou_pct"] == 100.0 and r["iou_pct"]["road"] == 100.0 and "miou" not in r
    assert write_report([r], tmp_path)["csv"].is_file()
