"""Paper 2's segmentation report from crafted eval-segmentation records: Table II (per class, small /
big, mIoU, bpp; all six configurations, percent) and Fig. 7 (mIoU vs bpp, a curve per configuration,
OO a reference line), on a 3-class list the records carry (not Cityscapes')."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from lossyvision.eval.segmentation import miou_figure, result_record, save_result, write_report
from lossyvision.pipelines.classlists import ClassList

CLASSES = ClassList("garments", ("shirt", "bag", "sky"), small=("shirt",))
# rows = truth, columns = prediction: IoU shirt 8/10, bag 5/7, sky 10/10
CM = np.array([[8, 2, 0], [0, 5, 0], [0, 0, 10]])
SHIRT, BAG, SKY = 80.0, 500 / 7, 100.0


def _cm(miss: int) -> np.ndarray:
    """CM with ``miss`` more sky pixels predicted as bag: each configuration and rate its own score."""
    cm = CM.copy()
    cm[2, 2] -= miss
    cm[2, 1] += miss
    return cm


def _records() -> list[dict]:
    recs = [result_record(CM, 4, "orig", "orig", None, 9.02, class_list=CLASSES, split="val")]
    miss = 1
    for q, bpp in ((46, 0.0454), (41, 0.1279)):
        for train, test in (("C", "O"), ("C", "C"), ("R", "O"), ("O", "C"), ("O", "R")):
            name = {"O": "orig", "C": f"bpg-qp{q}", "R": f"bpg-qp{q}+restored"}
            recs.append(result_record(_cm(miss), 4, name[train], name[test], bpp if train != "O" else None,
                                      bpp if test != "O" else None, class_list=CLASSES, split="val"))
            miss += 1
    recs.append(result_record(_cm(0), 4, "msh-q1", "orig", 0.0419, None, class_list=CLASSES, split="val"))
    return recs


def test_table2_rows_per_configuration_and_rate_with_the_records_classes(tmp_path):
    paths = write_report(_records(), tmp_path)
    rows = list(csv.DictReader(open(paths["table2_csv"])))
    assert [(r["configuration"], r["codec"], r["setting"], r["bpp"]) for r in rows] == [
        ("CO", "bpg", "qp46", "0.0454"), ("CO", "bpg", "qp41", "0.1279"),
        ("CC", "bpg", "qp46", "0.0454"), ("CC", "bpg", "qp41", "0.1279"),
        ("RO", "bpg", "qp46", "0.0454"), ("RO", "bpg", "qp41", "0.1279"),
        ("OC", "bpg", "qp46", "0.0454"), ("OC", "bpg", "qp41", "0.1279"),
        ("OR", "bpg", "qp46", "0.0454"), ("OR", "bpg", "qp41", "0.1279"),
        ("CO", "msh", "q1", "0.0419"), ("OO", "lossless", "-", "9.02")]
    assert list(rows[0])[:10] == ["configuration", "codec", "setting", "bpp", "shirt_iou_pct", "bag_iou_pct",
                                  "sky_iou_pct", "miou_small_pct", "miou_big_pct", "miou_pct"]
    oo = rows[-1]
    assert float(oo["shirt_iou_pct"]) == pytest.approx(SHIRT) and float(oo["bag_iou_pct"]) == pytest.approx(BAG)
    assert float(oo["miou_small_pct"]) == pytest.approx(SHIRT)
    assert float(oo["miou_big_pct"]) == pytest.approx((BAG + SKY) / 2)
    assert float(oo["miou_pct"]) == pytest.approx((SHIRT + BAG + SKY) / 3)
    # the first CO row is the first crafted record: one sky pixel predicted as bag
    assert float(rows[0]["sky_iou_pct"]) == pytest.approx(900 / 10) and float(rows[0]["bag_iou_pct"]) == pytest.approx(500 / 8)
    js = json.loads(paths["table2_json"].read_text())
    assert [r["configuration"] for r in js] == [r["configuration"] for r in rows] and js[-1]["bpp"] == 9.02
    md = paths["table2_md"].read_text()
    assert "garments" in md and "small objects: shirt" in md and "road" not in md
    assert "| configuration | setting | bpp | shirt | bag | sky | small obj. | big obj. | mIoU |" in md
    assert "| CO (bpg) | qp46 | 0.0454 | 80.00 | 62.50 | 90.00 | 80.00 | 76.25 | 77.50 |" in md
    assert "|  | qp41 | 0.1279 |" in md  # the group label only on its first row, as the paper prints it
    assert md.index("| RO (bpg) |") < md.index("| OC (bpg) |") < md.index("| CO (msh) |") < md.index("| OO (lossless) |")


def test_fig7_a_curve_per_configuration_in_a_panel_per_codec_and_oo_as_a_line():
    fig = miou_figure(_records())
    bpg, msh = fig.axes
    assert (bpg.get_title(), msh.get_title()) == ("bpg", "msh")
    assert fig.get_suptitle() == "mIoU vs rate: garments val, 4 images, full frames"
    labels = bpg.get_legend_handles_labels()[1]
    oo = (SHIRT + BAG + SKY) / 3
    assert labels == ["CO (bpg)", "CC (bpg)", "RO (bpg)", "OC (bpg)", "OR (bpg)", f"OO ({oo:.1f} %)"]
    assert msh.get_legend_handles_labels()[1] == ["CO (msh)", f"OO ({oo:.1f} %)"]
    lines = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}
    assert list(lines["RO (bpg)"].get_xdata()) == [0.0454, 0.1279] and len(lines["OC (bpg)"].get_xdata()) == 2
    assert lines["CO (bpg)"].get_color() == lines["CO (msh)"].get_color() != lines["CC (bpg)"].get_color()
    assert bpg.get_xlim()[1] < 1.0  # OO (9.02 bpp) is a horizontal line, not a point
    assert {t.get_text() for t in bpg.texts} == {"qp46", "qp41"}


def test_eval_segmentation_rebuilds_table2_and_fig7_from_saved_records(tmp_path):
    from lossyvision.cli import main

    for r in _records():
        save_result(r, tmp_path)
    res = CliRunner().invoke(main, ["eval-segmentation", "--out", str(tmp_path), "--format", "png,svg", "-q"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"table2_md", "table2_csv", "table2_json", "plot", "plot_svg"} <= set(out)
    assert (tmp_path / "table2.md").read_text().count("\n| ") == 1 + 12  # header + one row per record
    assert (tmp_path / "miou_vs_bpp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
