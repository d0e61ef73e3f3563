import os

import pandas as pd
from click.testing import CliRunner

from lossyvision.cli import main
from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards


def test_rate_report_tables_and_plot(tmp_path):
    out = str(tmp_path / "s")
    prepare_shards(PrepareConfig(dataset="samples", split="all", out=out, limit=4, shard_size=2, executor="local", progress=False,
                                 codecs=[CodecSetting("jpeg", 75), CodecSetting("jpeg", 10), CodecSetting("j2k", 200)]))
    r = CliRunner().invoke(main, ["rate-report", out])
    assert r.exit_code == 0, r.output
    assert "| samples | all | jpeg-q10 | jpeg | 10 | 4 | 0 |" in r.output
    df = pd.read_csv(os.path.join(out, "report", "rates.csv"))
    assert list(df["variant"]) == ["orig", "j2k-r200", "jpeg-q75", "jpeg-q10"]
    assert {"bytes_per_img", "bpp", "psnr", "ssim", "ms_ssim", "enc_ms", "dec_ms", "failures"} <= set(df.columns)
    j = pd.read_json(os.path.join(out, "report", "rates.json"))
    assert j.shape[0] == 4 and (j.set_index("variant").loc["jpeg-q75", "psnr"] > j.set_index("variant").loc["jpeg-q10", "psnr"])
    png = os.path.join(out, "report", "rate_distortion.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_rate_report_on_empty_folder(tmp_path):
    r = CliRunner().invoke(main, ["rate-report", str(tmp_path)])
    assert r.exit_code == 1 and "no manifest.json" in r.output and "Traceback" not in r.output
