"""mIoU from confusion matrices: exact on known cases, ignore pixels never count, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lossyvision.eval.segmentation import (
    CITYSCAPES_CLASSES, SMALL_CLASSES, configuration, confusion_matrix, evaluate_model, result_record,
    scores_from_confusion, write_report)


def _random_label(seed: int = 0, shape=(32, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 19, shape).astype(np.uint8)
    y[rng.random(shape) < 0.2] = 255
    return y


def test_prediction_equal_to_label_gives_100():
    y = _random_label()
    s = scores_from_confusion(confusion_matrix(y, y))
    assert s.miou_pct == 100.0 and s.miou_small_pct == 100.0 and s.miou_big_pct == 100.0 and s.pixel_accuracy_pct == 100.0
    assert s.pixels == int((y != 255).sum())


def test_known_confusion_gives_known_numbers():
    label = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    cm = confusion_matrix(pred, label)
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 2 and cm.sum() == 4
    s = scores_from_confusion(cm)
    # road: TP 1 / (TP 1 + FP 0 + FN 1) = 50 %; sidewalk: 2 / (2 + 1 + 0) = 66.67 %; others absent
    assert s.iou_pct["road"] == pytest.approx(50.0)
    assert s.iou_pct["sidewalk"] == pytest.approx(200 / 3)
    assert s.miou_pct == pytest.approx((50 + 200 / 3) / 2)
    assert np.isnan(s.iou_pct["sky"]) and s.to_dict()["iou_pct"]["sky"] is None
    assert s.pixel_accuracy_pct == pytest.approx(75.0)


def test_ignore_pixels_never_count_whatever_is_predicted():
    y = _random_label(1)
    pred = y.copy().astype(np.int64)
    ignored = y == 255
    pred[ignored] = 0
    base = confusion_matrix(pred, y)
    pred[ignored] = 7  # anything predicted on ignore pixels changes nothing
    assert np.array_equal(confusion_matrix(pred, y), base)
    pred[ignored] = 255  # not even an out-of-range prediction
    assert np.array_equal(confusion_matrix(pred, y), base)
    assert base.sum() == (~ignored).sum()
    assert scores_from_confusion(base).miou_pct == 100.0


def test_out_of_range_values_are_errors():
    with pytest.raises(ValueError, match="label values"):
        confusion_matrix(np.array([0, 1]), np.array([0, 19]))
    with pytest.raises(ValueError, match="prediction values"):
        confusion_matrix(np.array([0, 21]), np.array([0, 1]))


def test_small_and_big_object_split_of_table_ii():
    assert set(SMALL_CLASSES) == {"person", "rider", "motorcycle", "bicycle", "pole", "traffic light", "traffic sign"}
    idx = {c: i for i, c in enumerate(CITYSCAPES_CLASSES)}
    cm = np.zeros((19, 19), np.int64)
    for c in CITYSCAPES_CLASSES:
        cm[idx[c], idx[c]] = 10
    cm[idx["person"], idx["rider"]] = 10  # person: 10 / 20; rider: 10 / 20
    s = scores_from_confusion(cm)
    small = [50, 50, 100, 100, 100, 100, 100]
    assert s.miou_small_pct == pytest.approx(np.mean(small)) and s.miou_big_pct == 100.0
    assert s.miou_pct == pytest.approx((sum(small) + 12 * 100) / 19)


def test_configuration_names():
    cases = {("orig", "orig"): "OO", ("bpg-qp41", "orig"): "CO", ("orig", "bpg-qp41"): "OC",
             ("bpg-qp41", "bpg-qp41"): "CC", ("bpg-qp41+restored", "orig"): "RO", ("orig", "msh-q3+restored"): "OR"}
    for (a, b), name in cases.items():
        assert configuration(a, b) == name


class _ConstantModel(torch.nn.Module):
    """Predicts road everywhere: the expected IoUs follow from the labels alone."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 19, *x.shape[-2:])
        out[:, 0] = 1
        return out


def test_evaluate_model_on_shards_matches_hand_count(tmp_path):
    from ..train.cityscapes_fixture import make_cityscapes_shards

    from lossyvision.pipelines.stream import ShardStream
    root = make_cityscapes_shards(tmp_path, split="val", n=3, h=40, w=72)  # not multiples of 32: padded
    cm, n = evaluate_model(_ConstantModel(), root / "val" / "orig", torch.device("cpu"))
    labels = np.stack([y.numpy() for _, y, _ in ShardStream(root / "val" / "orig")])
    valid = labels != 255
    assert n == 3 and cm.sum() == valid.sum()
    s = scores_from_confusion(cm)
    assert s.iou_pct["road"] == pytest.approx(100 * (labels == 0).sum() / valid.sum())
    present = [CITYSCAPES_CLASSES[c] for c in np.unique(labels[valid]) if c != 0]
    assert present and all(s.iou_pct[c] == 0 for c in present)
    assert s.miou_pct == pytest.approx(s.iou_pct["road"] / (1 + len(present)))


def test_report_tables_and_plot(tmp_path):
    y = _random_label(2)
    recs = [result_record(confusion_matrix(y, y), 1, "orig", "orig", None, None),
            result_record(confusion_matrix(np.where(y == 255, 255, 0), y), 1, "jpeg-q10", "orig", 0.5, None),
            result_record(confusion_matrix(y, y), 1, "jpeg-q10+restored", "orig", 0.5, None),
            result_record(confusion_matrix(y, y), 1, "jpeg-q5", "orig", 0.3, None)]
    paths = write_report(recs, tmp_path)
    md = paths["md"].read_text()
    assert "| OO | orig | orig |" in md and "| RO | jpeg-q10+restored | orig | 0.5000 |" in md
    assert "small obj." in md and md.count("\n| ") == 5
    rows = json.loads(paths["json"].read_text())
    assert [r["configuration"] for r in rows] == ["CO", "CO", "OO", "RO"]
    assert rows[2]["miou_pct"] == 100.0
    import pandas as pd
    df = pd.read_csv(paths["csv"])
    assert list(df.columns[-3:]) == ["miou_big_pct", "miou_pct", "images"] and len(df) == 4
    assert paths["plot"].stat().st_size > 1000
