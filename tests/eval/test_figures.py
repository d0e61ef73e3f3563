"""The evaluation figures: a colour scale that invents no precision, a reference line that leaves the
rate axis alone, and every requested format written and readable."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from lossyvision.eval.classification import MatrixResult, matrix_figure, plot_matrix
from lossyvision.eval.figures import FormatError, parse_formats
from lossyvision.eval.segmentation import confusion_matrix, miou_figure, plot_miou_vs_bpp, result_record


def _check_files(paths, formats):
    assert [p.rsplit(".", 1)[1] for p in paths] == list(formats)
    for p in paths:
        data = open(p, "rb").read()
        if p.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        elif p.endswith(".pdf"):
            assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        else:
            assert ET.fromstring(data).tag == "{http://www.w3.org/2000/svg}svg"


@pytest.mark.parametrize("value", [0.0, 70.0, 100.0])
def test_matrix_colour_scale_is_0_to_100_whatever_the_values(value):
    m = MatrixResult(["a", "b"], ["orig", "jpeg-q10"], [[value, value], [value, value]], [[100.0] * 2] * 2)
    fig = matrix_figure(m)
    (im,) = fig.axes[0].images
    assert im.get_clim() == (0.0, 100.0)
    assert {t.get_text() for t in fig.axes[0].texts} == {f"{value:.1f}"}
    assert fig.axes[1].get_ylabel() == "top-1 accuracy (%)"


def test_matrix_in_every_format(tmp_path):
    m = MatrixResult(["a"], ["orig"], [[70.0]], [[100.0]])
    _check_files(plot_matrix(m, tmp_path / "matrix.png", formats=("png", "pdf", "svg")), ("png", "pdf", "svg"))
    assert plot_matrix(m, tmp_path / "m2.svg") == [str(tmp_path / "m2.svg")]  # the suffix is the default format


def test_miou_figure_draws_oo_as_a_line_and_writes_each_format(tmp_path):
    y = np.random.default_rng(0).integers(0, 19, (16, 16)).astype(np.uint8)
    recs = [result_record(confusion_matrix(y, y), 3, "orig", "orig", None, 11.0, split="val"),
            result_record(confusion_matrix(np.where(y > 9, 0, y), y), 3, "jpeg-q10", "orig", 0.5, 11.0, split="val"),
            result_record(confusion_matrix(np.where(y > 5, 0, y), y), 3, "jpeg-q5", "orig", 0.3, 11.0, split="val")]
    fig = miou_figure(recs)
    ax = fig.axes[0]
    assert ax.get_xlim()[1] < 1.0  # OO is a horizontal line, not a point at the original's rate
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["CO (jpeg)", "OO (100.0 %)"] and ax.get_ylabel() == "mIoU (%)"
    assert ax.get_title() == "mIoU vs rate: Cityscapes val, 3 images, full frames"
    assert {t.get_text() for t in ax.texts} == {"q10", "q5"}
    _check_files(plot_miou_vs_bpp(recs, tmp_path / "miou", formats=("svg", "pdf")), ("svg", "pdf"))


def test_format_parsing():
    assert parse_formats("png") == ("png",) and parse_formats("PDF, svg,pdf") == ("pdf", "svg")
    assert parse_formats(["png,pdf", "svg"]) == ("png", "pdf", "svg")
    with pytest.raises(FormatError, match="'gif' is not one of png, pdf, svg"):
        parse_formats("png,gif")
    with pytest.raises(FormatError, match="empty"):
        parse_formats(" , ")
