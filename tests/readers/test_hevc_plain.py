"""A `.hevc` sample decoded with plain PyAV (or the FFmpeg command line) and the recipe of docs/shards.md
gives lossyvision's pixels exactly, padded odd-size pictures included: compared with the decoded
pixels lossyvision stored beside each bitstream (`--store-decoded`)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DOCS = Path(__file__).resolve().parents[2] / "docs" / "shards.md"


@pytest.fixture(scope="module")
def recipe() -> dict:
    """The Python block of docs/shards.md that defines decode_hevc, run as a user would paste it."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    code = next(b for b in blocks if "def decode_hevc" in b)
    ns: dict = {}
    exec(compile(code, str(DOCS), "exec"), ns)
    return ns


def _samples(vdir: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(vdir / "shard-000000.tar") as t:
        for m in t.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = t.extractfile(m).read()
    return out


@pytest.mark.parametrize("variant", ["hevc-qp30", "bpg-qp41"])
def test_pyav_decode_with_documented_crop_matches_lossyvision(odd_shards, recipe, variant):
    samples = _samples(odd_shards / variant)
    assert sorted(samples) == ["even", "narrow", "odd", "wide"]
    for key, s in samples.items():
        meta = json.loads(s["json"])
        w, h = meta["w"], meta["h"]
        padded = (w % 2, h % 2) != (0, 0) or min(w, h) < 32
        assert (s["hevc"][:4] == b"LVHS") == padded, key
        ours = np.asarray(Image.open(io.BytesIO(s["decoded.png"])).convert("RGB"))
        rgb = recipe["decode_hevc"](s["hevc"])
        assert rgb.shape == (h, w, 3) == ours.shape, key
        assert np.array_equal(rgb, ours), f"{key}: {int((rgb != ours).sum())} values differ"


def _ffmpeg() -> str:
    """An ffmpeg binary: the one on PATH, else the one imageio-ffmpeg ships in its wheel."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        exe = pytest.importorskip("imageio_ffmpeg", reason="no ffmpeg on PATH and no imageio-ffmpeg").get_ffmpeg_exe()
    return exe


def test_ffmpeg_command_line_decode_matches_lossyvision(odd_shards, recipe, tmp_path):
    ffmpeg = _ffmpeg()
    for key, s in _samples(odd_shards / "hevc-qp30").items():
        meta = json.loads(s["json"])
        w, h = meta["w"], meta["h"]
        src, yuv = tmp_path / f"{key}.hevc", tmp_path / f"{key}.yuv"
        src.write_bytes(s["hevc"])
        subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "hevc", "-i", str(src), "-f", "rawvideo", "-pix_fmt", "yuvj420p", str(yuv)],
                       check=True, timeout=60)
        wp, hp = max(32, w + w % 2), max(32, h + h % 2)
        rgb = recipe["yuv420_to_rgb"](np.fromfile(yuv, np.uint8).reshape(hp * 3 // 2, wp), hp, wp)[:h, :w]
        ours = np.asarray(Image.open(io.BytesIO(s["decoded.png"])).convert("RGB"))
        assert np.array_equal(rgb, ours), key
