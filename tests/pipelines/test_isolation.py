"""Issue 11, prepare side: no input stops the job, nothing escapes --out, every error is one line.

Real files in a real folder tree (symlinks, a FIFO, a pixel bomb, tiny and thin images), the real
job through its CLI, and the shards read back with webdataset.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner
from PIL import Image

from lossyvision import storage
from lossyvision.cli import main
from lossyvision.names import check_name, is_valid_name, NameError_
from lossyvision.pipelines.shards import clean_temp_files

GOOD = ("good1", "good2", "tiny", "thin", "tall", "deep16", "sub/a")


def _png_header_only(w: int, h: int, depth: int = 8) -> bytes:
    """A PNG whose IHDR claims w x h (valid CRCs) with a few bytes of pixel data: a pixel bomb."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


@pytest.fixture
def hostile_src(tmp_path, photo):
    """Seven good images (three of them tiny or thin) beside every kind of bad entry."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(np.ascontiguousarray(photo[:64, :80])).save(src / "good1.png")
    Image.fromarray(np.ascontiguousarray(photo[100:160, 50:100])).save(src / "good2.jpg", quality=90)
    Image.fromarray(np.ascontiguousarray(photo[:1, :1])).save(src / "tiny.png")
    Image.fromarray(rng.integers(0, 256, (1, 700, 3), dtype=np.uint8)).save(src / "thin.png")
    Image.fromarray(rng.integers(0, 256, (3000, 1, 3), dtype=np.uint8)).save(src / "tall.png")  # PngError before
    Image.fromarray((rng.random((30, 30)) * 65535).astype(np.uint16)).save(src / "deep16.png")
    Image.fromarray(np.ascontiguousarray(photo[:20, :20])).save(src / "sub" / "a.jpg")
    Image.fromarray(np.ascontiguousarray(photo[:20, :30])).save(src / "sub" / "a.png")  # same key as a.jpg
    (src / "garbage.png").write_bytes(os.urandom(300))
    (src / "zero.png").write_bytes(b"")
    (src / "bomb16.png").write_bytes(_png_header_only(60000, 60000, 16))  # 2.4 GB if decoded
    (src / "bomb8.png").write_bytes(_png_header_only(20000, 20000, 8))  # Pillow's DecompressionBombError
    os.symlink(str(tmp_path / "nowhere.png"), src / "dangling.png")
    os.symlink("/dev/zero", src / "devzero.png")
    os.mkfifo(src / "fifo.png")
    os.symlink("..", src / "sub" / "loop")
    (src / "dir.png").mkdir()  # a folder with an image's name is a folder: listed through, not read
    return src


BAD = {"garbage": "not an image file", "zero": "zero-byte", "bomb16": "over --max-pixels", "bomb8": "over --max-pixels",
       "dangling": "dangling symlink", "devzero": "character device", "fifo": "FIFO", "sub/loop": "symlink",
       "sub/a__dup1": "same key"}


def _run(args: list[str]):
    return CliRunner().invoke(main, args)


def _keys(vdir) -> list[str]:
    urls = sorted(str(p) for p in vdir.glob("shard-*.tar"))
    return sorted(s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def _digests(base) -> dict:
    return {str(p.relative_to(base)): storage.sha256(str(p)) for p in sorted(base.rglob("*.tar"))}


def test_no_input_stops_the_job_and_a_rerun_is_identical(hostile_src, tmp_path):
    out = tmp_path / "out"
    args = ["prepare-shards", "--dataset", "folder", "--src", str(hostile_src), "--out", str(out), "--shard-size", "4",
            "--codec", "jpeg", "--quality", "50", "--codec", "bpg", "--quality", "41", "--codec", "j2k", "--quality", "50", "--executor", "local", "--quiet"]
    r = _run(args)
    assert r.exit_code == 0, r.output
    assert "9 image(s) could not be used" in r.output
    base = out / "folder" / "all"
    for variant in ("orig", "jpeg-q50", "bpg-qp41", "j2k-r50"):
        m = json.loads((base / variant / "_manifest.json").read_text())
        assert m["num_samples"] == len(GOOD) and m["complete"]
        # every good image is in every variant, whatever else its shard held
        assert _keys(base / variant) == sorted(GOOD)
        reasons = {f["key"]: f["reason"] for f in m["failures"]}
        assert set(reasons) == set(BAD)
        for key, words in BAD.items():
            assert words in reasons[key], (key, reasons[key])
    # the tiny and thin images decode at their own size in every codec (HEVC pads to 32 px, crops back)
    for s in wds.WebDataset(str(base / "bpg-qp41" / "shard-000000.tar"), shardshuffle=False).decode():
        meta = s["json"]
        if s["__key__"] == "tiny":
            assert (meta["h"], meta["w"]) == (1, 1)
    before = _digests(out)
    r = _run(args)
    assert r.exit_code == 0, r.output
    assert _digests(out) == before
    shutil.rmtree(out)
    assert _run(args).exit_code == 0 and _digests(out) == before  # from scratch: the same bytes


def _tree(path) -> set[str]:
    return {os.path.join(d, f) for d, ds, fs in os.walk(path) for f in fs + ds}


@pytest.mark.parametrize("split", ["../../x", "/tmp/lv-abs-split", "a/b", "..", ".", "", ".hidden", "x" * 200])
def test_names_that_would_escape_out_are_refused_before_anything_is_written(tmp_path, split):
    out = tmp_path / "o" / "out"
    before = _tree(tmp_path)
    r = _run(["prepare-shards", "--dataset", "samples", "--out", str(out), "--split", split, "--codec", "jpeg", "--quality", "5", "--quiet"])
    assert r.exit_code == 2 and "--split" in r.output and "not a valid name" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert _tree(tmp_path) == before and not os.path.exists("/tmp/lv-abs-split")


def test_name_rule():
    for ok in ("val", "train_extra", "jpeg-q10", "j2k-r200-nomct", "bpg-bpp0.05", "bpg-qp41+restored", "ILSVRC2012"):
        assert check_name("--variant", ok) == ok
    for bad in ("", ".", "..", "a/..", "../x", "/abs", "a\\b", "-rf", "a b", "x" * 129, "é", None, "a..b"):
        assert not is_valid_name(bad)
        with pytest.raises(NameError_):
            check_name("--variant", bad)


def test_temp_cleanup_removes_only_this_toolkits_own_temp_files(tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    ours = [d / ("shard-000003.tar" + storage.temp_suffix()), d / ("_manifest.json" + storage.temp_suffix())]
    theirs = [d / "notes.tmp-keep", d / "photo.jpg.tmp-host-1-deadbeef", d / "shard-000001.tar.tmp-x", d / "thesis.tex.tmp-a-1-0123abcd"]
    for p in ours + theirs:
        p.write_bytes(b"x")
    assert clean_temp_files(str(d)) == 2
    assert all(not p.exists() for p in ours) and all(p.exists() for p in theirs)


@pytest.mark.parametrize("opts,words", [
    (["--codec", "jpeg", "--quality", "nan"], "finite"),
    (["--codec", "jpeg", "--quality", "inf"], "finite"),
    (["--codec", "jpeg", "--quality", "-inf"], "finite"),
    (["--codec", "jpeg", "--bpp", "nan"], "finite"),
    (["--codec", "jpeg", "--quality", "5", "--crop", "scale:60000x60000"], "over --max-pixels"),
    (["--codec", "jpeg", "--quality", "5", "--crop", "crop:0x0"], "at least 1"),
    (["--codec", "jpeg", "--quality", "5", "--crop", "scale:0x10"], "at least 1"),
    (["--codec", "jpeg", "--quality", "5", "--limit", "0"], "at least 1"),
    (["--codec", "jpeg", "--quality", "5", "--limit", "-1"], "at least 1"),
    (["--codec", "jpeg", "--quality", "5", "--max-pixels", "0"], "--max-pixels"),
    (["--codec", "msh", "--quality", "3", "--codec-opt", "msh.weights=/etc/passwd"], "not a PyTorch checkpoint"),
])
def test_bad_options_are_one_line_exit_2_and_write_nothing(tmp_path, opts, words):
    out = tmp_path / "out"
    r = _run(["prepare-shards", "--dataset", "samples", "--out", str(out), "--quiet", *opts])
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and words in r.output, r.output
    assert not out.exists()


def test_msh_without_weights_offline_fails_before_any_work_with_the_right_syntax(tmp_path):
    if os.path.exists(os.path.expanduser("~/.cache/torch/hub/checkpoints/mbt2018-mean-3-723404a8.pth.tar")):
        pytest.skip("the zoo weights are cached here, so msh needs no weights option")
    r = _run(["prepare-shards", "--dataset", "samples", "--out", str(tmp_path / "out"), "--quiet", "--codec", "msh", "--quality", "3"])
    if r.exit_code == 0:
        pytest.skip("this machine is online: CompressAI fetched the weights")
    assert r.exit_code == 2 and "--codec-opt msh.weights=PATH" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_output_errors_are_one_line_exit_1(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = _run(["prepare-shards", "--dataset", "samples", "--out", str(f), "--codec", "jpeg", "--quality", "5", "--quiet"])
    assert r.exit_code == 2 and "is a file, not a folder" in r.output
    r = _run(["prepare-shards", "--dataset", "samples", "--out", str(f / "below"), "--codec", "jpeg", "--quality", "5", "--quiet"])
    assert r.exit_code in (1, 2) and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    r = _run(["prepare-shards", "--dataset", "samples", "--out", "/proc/lossyvision-test", "--codec", "jpeg", "--quality", "5", "--quiet"])
    assert r.exit_code == 1 and "cannot write /proc/lossyvision-test" in r.output and len(r.output.strip().splitlines()) == 1


@pytest.fixture
def mounted(tmp_path):
    """mount(opts) -> a fresh tmpfs mounted with those options, or a skip saying why there cannot be one."""
    mnts = []

    def mount(opts: str) -> str:
        mnt = tmp_path / f"mnt{len(mnts)}"
        mnt.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mnts.append(mnt)
        return str(mnt)

    yield mount
    for m in mnts:
        subprocess.run(["umount", "-l", str(m)], check=False)


def test_read_only_filesystem_and_no_inodes_are_one_line_exit_1(mounted):
    ro = mounted("ro,size=1m")
    r = _run(["prepare-shards", "--dataset", "samples", "--out", os.path.join(ro, "x"), "--codec", "jpeg", "--quality", "5", "--quiet", "--limit", "2"])
    assert r.exit_code == 1 and "not allowed to write there" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    few = mounted("size=64m,nr_inodes=10")
    r = _run(["prepare-shards", "--dataset", "samples", "--out", os.path.join(few, "x"), "--codec", "jpeg", "--quality", "5,10,20,30,40",
              "--quiet", "--limit", "3", "--shard-size", "1", "--executor", "local"])
    assert r.exit_code == 1 and "no free inodes" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_corrupt_or_foreign_manifest_on_rerun_is_one_line(tmp_path):
    out = tmp_path / "out"
    args = ["prepare-shards", "--dataset", "samples", "--out", str(out), "--codec", "jpeg", "--quality", "5", "--quiet", "--limit", "2"]
    assert _run(args).exit_code == 0
    mf = out / "samples" / "all" / "jpeg-q5" / "_manifest.json"
    for text, words in (("{not json", "not valid JSON"), ("[1, 2]", "not a lossyvision manifest"), ('{"format": "x"}', "unknown manifest format")):
        mf.write_text(text)
        r = _run(args)
        assert r.exit_code == 1 and words in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_a_crop_larger_than_every_image_is_a_failure_not_a_success(tmp_path):
    r = _run(["prepare-shards", "--dataset", "samples", "--out", str(tmp_path / "out"), "--crop", "crop:5000x5000",
              "--codec", "jpeg", "--quality", "5", "--quiet", "--limit", "3"])
    assert r.exit_code == 1 and "none of the 3 images could be used" in r.output and "larger than the image" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_resizing_a_thin_image_past_max_pixels_is_listed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((1, 3000, 3), np.uint8)).save(src / "line.png")  # imagenet crop: 768000 x 256 before cropping
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(src / "ok.png")
    r = _run(["prepare-shards", "--dataset", "folder", "--src", str(src), "--out", str(tmp_path / "out"), "--crop", "imagenet",
              "--codec", "jpeg", "--quality", "5", "--quiet", "--max-pixels", "100000000"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "folder" / "all" / "jpeg-q5" / "_manifest.json").read_text())
    assert m["num_samples"] == 1 and "over --max-pixels" in m["failures"][0]["reason"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder anyway")
def test_unreadable_folder_is_listed(tmp_path, photo):
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    Image.fromarray(np.ascontiguousarray(photo[:40, :40])).save(src / "ok.png")
    os.chmod(src / "locked", 0)
    try:
        r = _run(["prepare-shards", "--dataset", "folder", "--src", str(src), "--out", str(tmp_path / "out"), "--codec", "jpeg", "--quality", "5", "--quiet"])
    finally:
        os.chmod(src / "locked", 0o755)
    assert r.exit_code == 0
    m = json.loads((tmp_path / "out" / "folder" / "all" / "jpeg-q5" / "_manifest.json").read_text())
    assert m["num_samples"] == 1 and "unreadable folder" in m["failures"][0]["reason"]


def test_unreadable_folder_is_listed_even_as_root(tmp_path, photo):
    """As root (CI), chmod 000 hides nothing, so the job runs without the capabilities that let root
    read anything (setpriv drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("covered by test_unreadable_folder_is_listed; needs root and setpriv")
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    Image.fromarray(np.ascontiguousarray(photo[:40, :40])).save(src / "ok.png")
    Image.fromarray(np.ascontiguousarray(photo[:40, :40])).save(src / "locked" / "hidden.png")
    os.chmod(src / "locked", 0)
    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    try:
        p = subprocess.run(drop + [sys.executable, "-m", "lossyvision.cli", "prepare-shards", "--dataset", "folder", "--src", str(src),
                                   "--out", str(tmp_path / "out"), "--codec", "jpeg", "--quality", "5", "--quiet"], capture_output=True, text=True)
    finally:
        os.chmod(src / "locked", 0o755)
    if "setpriv:" in p.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "out" / "folder" / "all" / "jpeg-q5" / "_manifest.json").read_text())
    assert m["num_samples"] == 1 and m["failures"][0]["key"] == "locked" and "unreadable folder" in m["failures"][0]["reason"]


def test_fashion_mnist_defaults_to_its_test_split(tmp_path):
    from lossyvision.pipelines.fashion_mnist import DEFAULT_ROOT

    if not os.path.isdir(DEFAULT_ROOT):
        pytest.skip("dataset-fashion-mnist is not installed")
    r = _run(["prepare-shards", "--dataset", "fashion-mnist", "--out", str(tmp_path / "out"), "--limit", "4", "--codec", "jpeg", "--quality", "5", "--quiet"])
    assert r.exit_code == 0 and "fashion-mnist/test" in r.output, r.output
    r = _run(["prepare-shards", "--dataset", "fashion-mnist", "--split", "val", "--out", str(tmp_path / "out"), "--codec", "jpeg", "--quality", "5", "--quiet"])
    assert r.exit_code == 2 and "--split test or train" in r.output


def test_encode_tiny_and_thin_images_with_every_codec(tmp_path):
    from lossyvision.codecs import create, get_codec_class, names

    rng = np.random.default_rng(1)
    for name in names():
        if name == "msh":
            continue  # needs weights; its padding to 64 px is tested in tests/codecs/test_msh.py
        cls = get_codec_class(name)
        codec = create(name, cls.q_default if cls.q_range else None)
        for h, w in ((1, 1), (1, 3000), (3000, 1), (7, 5), (24, 24), (16, 64)):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            assert codec.roundtrip(rgb).decoded.shape == rgb.shape, (name, h, w)
    src = tmp_path / "t.png"
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(src)
    r = _run(["encode", str(src), "--codec", "bpg", "--quality", "41", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["h"] == 3, r.output
    for bad, words in ((["--quality", "nan"], "finite"), (["--bpp", "inf"], "finite"), (["--quality", "5", "--max-pixels", "4"], "over --max-pixels")):
        r = _run(["encode", str(src), "--codec", "jpeg", *bad])
        assert r.exit_code in (1, 2) and words in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_traceback_only_with_vv(tmp_path):
    """-vv shows the traceback of an error that is otherwise one line."""
    f = tmp_path / "afile"
    f.write_text("x")
    cmd = [sys.executable, "-m", "lossyvision.cli", "prepare-shards", "--dataset", "samples", "--out", str(f / "x"),
           "--codec", "jpeg", "--quality", "5", "--quiet"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = subprocess.run(cmd + ["-vv"], capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" in p.stderr
