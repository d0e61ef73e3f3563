import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ..train.classifier_shards import write_variant  # noqa: E402

from lossyvision.cli.classifier import eval_classifier, eval_matrix  # noqa: E402


class ColourNet(torch.nn.Module):
    """Logits = mean of each channel: predicts 0 for red, 1 for green, 2 for blue images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """10 pure-colour images; 7 labels agree with the colour, 3 do not: top-1 must be exactly 0.7."""
    root = tmp_path_factory.mktemp("eval")
    samples = []
    for i in range(10):
        colour = i % 3
        img = np.zeros((16, 16, 3), np.uint8)
        img[..., colour] = 255
        label = colour if i < 7 else (colour + 1) % 3
        samples.append((f"val/img{i:02d}", img, label))
    write_variant(root / "val", "orig", samples, shard_size=4, classes=["red", "green", "blue"])
    write_variant(root / "val", "jpeg-q10", samples, shard_size=4, classes=["red", "green", "blue"], spec="jpeg-q10")
    model = root / "colour.pt"
    torch.jit.script(ColourNet()).save(str(model))
    return root, model


def test_eval_classifier_gets_the_known_top1_from_a_torchscript_file(known, tmp_path):
    root, model = known
    res = CliRunner().invoke(eval_classifier, [
        "--model", str(model), "--shards", str(root), "--variant", "orig", "--variant", "jpeg-q10",
        "--batch-size", "3", "--workers", "0", "--device", "cpu", "--mean", "0,0,0", "--std", "1,1,1",
        "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["results"]
    assert [r["variant"] for r in rows] == ["orig", "jpeg-q10"]
    for r in rows:
        assert r["samples"] == 10
        assert r["top1_pct"] == pytest.approx(70.0)
        assert r["top5_pct"] == pytest.approx(100.0)  # only 3 classes: top-k is capped at the class count
    assert rows[1]["bpp"] > 0
    assert "| 70.00 |" in res.output
    assert (tmp_path / "r" / "results.csv").read_text().startswith("model,variant,spec,samples,top1_pct,top5_pct")


def test_eval_classifier_reports_missing_variant_in_one_line(known):
    root, model = known
    res = CliRunner().invoke(eval_classifier, ["--model", str(model), "--shards", str(root),
                                               "--variant", "j2k-r200", "--device", "cpu", "--quiet"])
    assert res.exit_code == 1
    assert "variant 'j2k-r200' not found" in res.output and "Traceback" not in res.output


def test_eval_matrix_writes_table_and_heatmap(known, tmp_path):
    root, model = known
    res = CliRunner().invoke(eval_matrix, [
        "--model", f"orig={model}", "--model", f"jpeg-q10={model}", "--shards", str(root),
        "--variant", "orig", "--variant", "jpeg-q10", "--out", str(tmp_path / "m"), "--workers", "0",
        "--device", "cpu", "--mean", "0,0,0", "--std", "1,1,1", "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m" / "matrix.json").read_text())
    assert m["models"] == ["orig", "jpeg-q10"] and m["variants"] == ["orig", "jpeg-q10"]
    assert np.allclose(m["top1_pct"], 70.0)
    with Image.open(tmp_path / "m" / "matrix.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
