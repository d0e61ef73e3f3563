import json
import math
import os
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from click.testing import CliRunner

from lossyvision.cli import main
from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

# the demo's codecs and settings (Makefile: make demo), on 4 images
DEMO = [CodecSetting("jpeg", q) for q in (75, 10, 5)] + [CodecSetting("j2k", q) for q in (75, 200, 400)] + \
       [CodecSetting("bpg", q) for q in (41, 46, 51)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    prepare_shards(PrepareConfig(dataset="samples", split="all", out=out, limit=4, shard_size=2, executor="local",
                                 progress=False, codecs=DEMO))
    return out


def test_rate_report_tables_and_plot(tmp_path):
    out = str(tmp_path / "s")
    prepare_shards(PrepareConfig(dataset="samples", split="all", out=out, limit=4, shard_size=2, executor="local", progress=False,
                                 codecs=[CodecSetting("jpeg", 75), CodecSetting("jpeg", 10), CodecSetting("j2k", 200)]))
    r = CliRunner().invoke(main, ["rate-report", out])
    assert r.exit_code == 0, r.output
    assert "| samples | all | jpeg-q10 | jpeg | 10 | 4 | 0 |" in r.output
    df = pd.read_csv(os.path.join(out, "report", "rates.csv"))
    assert list(df["variant"]) == ["orig", "j2k-r200", "jpeg-q75", "jpeg-q10"]
    assert {"bytes_per_img", "bpp", "psnr", "ssim", "ms_ssim", "ms_ssim_db", "enc_ms", "dec_ms", "failures", "crop"} <= set(df.columns)
    j = pd.read_json(os.path.join(out, "report", "rates.json"))
    assert j.shape[0] == 4 and (j.set_index("variant").loc["jpeg-q75", "psnr"] > j.set_index("variant").loc["jpeg-q10", "psnr"])
    ms = j.set_index("variant").loc["jpeg-q75"]
    assert ms["ms_ssim_db"] == pytest.approx(-10 * math.log10(1 - ms["ms_ssim"]))
    png = os.path.join(out, "report", "rate_distortion.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # one j2k point against two jpeg points: pchip needs 2 per curve, so the delta is NaN with its reason
    bd = pd.read_csv(os.path.join(out, "report", "bd_rate.csv"))
    assert list(bd["test"]) == ["j2k", "j2k"] and bd["bd_rate_pct"].isna().all()
    assert bd["note"].str.contains("needs 2 points").all()


def test_rate_report_on_empty_folder(tmp_path):
    r = CliRunner().invoke(main, ["rate-report", str(tmp_path)])
    assert r.exit_code == 1 and "no shard manifest" in r.output and "Traceback" not in r.output


def test_demo_codecs_get_a_bd_rate_table_against_jpeg(demo, tmp_path):
    r = CliRunner().invoke(main, ["rate-report", demo, "--out", str(tmp_path / "rep"), "--no-plot"])
    assert r.exit_code == 0, r.output
    assert "Bjøntegaard deltas (pchip)" in r.output
    assert "| codec | PSNR | jpeg | bpg | 3/3 |" in r.output and "| codec | PSNR | jpeg | j2k | 3/3 |" in r.output
    bd = pd.read_csv(tmp_path / "rep" / "bd_rate.csv")
    assert set(bd["reference"]) == {"jpeg"} and set(bd["test"]) == {"bpg", "j2k"}
    assert set(bd["metric"]) == {"psnr", "ms_ssim_db"} and (bd["method"] == "pchip").all()
    # both newer codecs need fewer bits than JPEG for the same PSNR on these photos
    psnr = bd[bd["metric"] == "psnr"].set_index("test")["bd_rate_pct"]
    assert psnr["bpg"] < 0 and psnr["j2k"] < 0
    js = pd.read_json(tmp_path / "rep" / "bd_rate.json")
    assert js.shape == bd.shape and js.set_index(["metric", "test"])["bd_rate_pct"].round(6).equals(
        bd.set_index(["metric", "test"])["bd_rate_pct"].round(6))
    # another reference, and a reference that is not there (a usage error, exit 2)
    r = CliRunner().invoke(main, ["rate-report", demo, "--out", str(tmp_path / "rep2"), "--no-plot", "--bd-reference", "bpg"])
    assert r.exit_code == 0 and "| codec | PSNR | bpg | jpeg | 3/3 |" in r.output
    r = CliRunner().invoke(main, ["rate-report", demo, "--out", str(tmp_path / "rep3"), "--bd-reference", "webp"])
    assert r.exit_code == 2 and "--bd-reference 'webp' names no codec" in r.output
    r = CliRunner().invoke(main, ["rate-report", demo, "--out", str(tmp_path / "rep3"), "--bd-method", "cubic", "--no-plot"])
    assert r.exit_code == 0 and "cubic needs 4 points per curve; have 3 and 3" in r.output


def test_figures_in_every_format(demo, tmp_path):
    r = CliRunner().invoke(main, ["rate-report", demo, "--out", str(tmp_path), "--format", "png,pdf,svg"])
    assert r.exit_code == 0, r.output
    for ext in ("png", "pdf", "svg"):
        assert f"rd_plot.{ext}: {tmp_path / f'rate_distortion.{ext}'}" in r.output
    assert (tmp_path / "rate_distortion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = (tmp_path / "rate_distortion.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    root = ET.parse(tmp_path / "rate_distortion.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # matplotlib draws text as glyph paths and keeps each string as a comment beside them
    assert "<!-- MS-SSIM (dB) -->" in (tmp_path / "rate_distortion.svg").read_text()
    r = CliRunner().invoke(main, ["rate-report", demo, "--out", str(tmp_path), "--format", "png,gif"])
    assert r.exit_code == 2 and "'gif' is not one of png, pdf, svg" in r.output


def _accuracy_rows(demo):
    """The demo's table joined with two recipes' (made-up, plausible) top-1, orig at 76 %."""
    from lossyvision.eval.rates import rate_table
    from lossyvision.reports.rate_report import join_results

    rows = rate_table(demo)
    acc = []
    for i, recipe in enumerate(("pretrained", "expert")):
        for r in rows:
            top1 = 76.0 if r["codec"] == "lossless" else min(75.0, 2 * r["psnr"]) + 3 * i
            acc.append({"variant": r["variant"], "recipe": recipe, "top1_pct": top1})
    return join_results(rows, acc)


def test_orig_is_a_reference_line_that_leaves_the_rate_axis_to_the_codecs(demo):
    from lossyvision.reports.curves import groups
    from lossyvision.reports.plots import rate_accuracy_figure

    rows = _accuracy_rows(demo)
    orig_bpp = next(r["bpp"] for r in rows if r["variant"] == "orig")
    lossy_max = max(r["bpp"] for r in rows if r["codec"] != "lossless")
    assert orig_bpp > 3 * lossy_max  # PNG at ~10 bpp, the codecs under 2
    (g,) = groups(rows)
    fig = rate_accuracy_figure(g)
    (ax,) = fig.axes
    assert ax.get_xlim()[1] < orig_bpp and ax.get_xlim()[1] == pytest.approx(lossy_max, rel=0.15)
    labels = ax.get_legend_handles_labels()[1]
    assert "orig / pretrained (76.0 %)" in labels and "jpeg / expert" in labels
    assert ax.get_ylabel() == "top-1 accuracy (%)" and ax.get_xlabel() == "rate (bits per pixel)"
    assert fig.get_suptitle() == "samples / all: 4 images, crop resize256-center224"
    texts = {t.get_text() for t in ax.texts}
    assert {"q75", "r200", "qp51"} <= texts  # points carry their codec setting


def test_rd_figure_has_an_ms_ssim_db_panel_and_a_legend_in_each(demo):
    from lossyvision.eval.rates import rate_table
    from lossyvision.reports.curves import groups
    from lossyvision.reports.plots import rd_figure

    (g,) = groups(rate_table(demo))
    fig = rd_figure(g)
    assert [ax.get_ylabel() for ax in fig.axes] == ["PSNR (dB)", "MS-SSIM (dB)", "SSIM"]
    assert all(ax.get_legend() is not None for ax in fig.axes)
    assert all(ax.get_xlabel() == "rate (bits per pixel)" for ax in fig.axes)


def test_compressai_plot_draws_the_curves_beside_compressai_results(demo, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from compressai.utils.plot.__main__ import main as cai_plot, parse_json_file

    r = CliRunner().invoke(main, ["rate-report", demo, "--out", str(tmp_path), "--no-plot"])
    assert r.exit_code == 0, r.output
    files = sorted(str(p) for p in (tmp_path / "compressai").glob("*.json"))
    assert [os.path.basename(f) for f in files] == ["samples-all-bpg.json", "samples-all-j2k.json", "samples-all-jpeg.json"]
    # a file as CompressAI ships them (results/image/kodak/*.json layout), made up for the test
    theirs = tmp_path / "theirs.json"
    theirs.write_text(json.dumps({"name": "JPEG", "description": "CompressAI layout", "results": {
        "psnr-rgb": [26.0, 29.0, 32.0], "ms-ssim-rgb": [0.89, 0.94, 0.97], "bpp": [0.3, 0.5, 0.9]}}))
    for metric in ("psnr", "ms-ssim"):
        for f in files:
            d = parse_json_file(f, metric)
            assert d["name"].startswith("lossyvision ") and d["xs"] == sorted(d["xs"]) and len(d["ys"]) == 3
        out = tmp_path / f"cai-{metric}.png"
        cai_plot(["-f", *files, str(theirs), "-m", metric, "-o", str(out)])
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "compressai" / "samples-all-jpeg.json").read_text())
    assert doc["results"]["q"] == [5, 10, 75] and set(doc["results"]) >= {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time"}
