"""Shards written by the real CLI, in a subprocess, for the reader tests: these tests import nothing of
lossyvision, as a user of Ray Data, Hugging Face datasets, timm or FFmpeg would not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_imagenet


def prepare(*args: str) -> subprocess.CompletedProcess:
    """Run `lossyvision prepare-shards ARGS` as a user would; fail the test with its stderr if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "lossyvision.cli", "prepare-shards", "--quiet", "--executor", "local", *args],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


def manifest(vdir: Path) -> dict:
    return json.loads((vdir / "_manifest.json").read_text())


@pytest.fixture(scope="session")
def imagenet_shards(tmp_path_factory) -> Path:
    """ROOT/imagenet with val and train (two jobs: the second merges into the card), orig + jpeg-q50 + bpg-qp41."""
    tmp = tmp_path_factory.mktemp("readers-imagenet")
    src = make_imagenet(str(tmp / "ILSVRC2012"), per_class=2, odd=False)
    for split in ("val", "train"):
        prepare("--dataset", "imagenet", "--src", src, "--split", split, "--out", str(tmp / "shards"),
                "--codec", "jpeg", "--quality", "50", "--codec", "bpg", "--quality", "41")
    return tmp / "shards" / "imagenet"


@pytest.fixture(scope="session")
def odd_shards(tmp_path_factory) -> Path:
    """ROOT/folder/all with HEVC variants of images x265 cannot code as they are (odd sides, a side under
    32 px) and one it can, with lossyvision's own decoded pixels stored beside each bitstream."""
    import skimage.data

    tmp = tmp_path_factory.mktemp("readers-odd")
    src = tmp / "photos"
    src.mkdir()
    a, c = skimage.data.astronaut(), skimage.data.chelsea()
    for name, img in {"odd": a[100:145, 150:187], "narrow": c[50:114, 100:120], "wide": a[200:263, 200:301],
                      "even": a[:64, :96]}.items():
        Image.fromarray(np.ascontiguousarray(img)).save(src / f"{name}.png")
    prepare("--dataset", "folder", "--src", str(src), "--out", str(tmp / "shards"), "--no-orig", "--store-decoded",
            "--codec", "hevc", "--quality", "30", "--codec", "bpg", "--quality", "41")
    return tmp / "shards" / "folder" / "all"


@pytest.fixture(scope="session")
def samples_shards(tmp_path_factory) -> Path:
    """ROOT/samples (split `all`, no labels) with orig + jpeg-q50 + bpg-qp41."""
    out = tmp_path_factory.mktemp("readers-samples") / "shards"
    prepare("--dataset", "samples", "--out", str(out), "--limit", "6",
            "--codec", "jpeg", "--quality", "50", "--codec", "bpg", "--quality", "41")
    return out / "samples"
