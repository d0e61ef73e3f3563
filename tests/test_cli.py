import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from lossyvision.cli import main


def test_codecs_table_lists_every_codec_with_versions():
    from lossyvision import codecs

    r = CliRunner().invoke(main, ["codecs", "--json"])
    assert r.exit_code == 0
    rows = json.loads(r.output)
    assert [x["name"] for x in rows] == codecs.names()
    assert all(x["versions"] for x in rows)
    r = CliRunner().invoke(main, ["codecs"])
    assert "| j2k | compression ratio | 0..10000 | j2k-r200 |" in r.output


def test_encode_one_image(photo, tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(photo).save(src)
    out = tmp_path / "p.hevc"
    r = CliRunner().invoke(main, ["encode", str(src), "--codec", "bpg", "--quality", "41", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert st["bytes"] == out.stat().st_size and st["spec"] == "bpg-qp41" and st["psnr"] > 20
    r = CliRunner().invoke(main, ["encode", str(src), "--codec", "jpeg", "--bpp", "0.5", "--json"])
    st = json.loads(r.output)
    assert st["bpp"] <= 0.5 and st["spec"] == "jpeg-bpp0.5"


def test_encode_user_errors(photo, tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(np.ascontiguousarray(photo[:101, :101])).save(src)
    r = CliRunner().invoke(main, ["encode", str(src), "--codec", "hevc", "--quality", "60"])
    assert r.exit_code == 2 and "out of range" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["encode", str(src), "--codec", "hevc", "--quality", "30"])  # odd size: padded, cropped back
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["encode", str(tmp_path / "missing.png"), "--codec", "jpeg", "--quality", "30"])
    assert r.exit_code == 2 and "does not exist" in r.output
