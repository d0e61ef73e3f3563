"""Issue 11, training/eval half: every bad option or input of the training and evaluation commands
ends in one line on stderr naming what to change (exit 2: a bad option value, 1: a failure while
running), errors raised in DataLoader workers included; shards are checked against their manifest
(size, sha256) and against the pixel limit before decoding."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lossyvision.cli.classifier import eval_classifier, eval_matrix, train_expert
from lossyvision.pipelines.stream import (ShardError, ShardStream, iter_tar_samples, read_variant,
                                          worker_error_message)

from .train.classifier_shards import make_dataset

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def toy_master(tmp_path_factory) -> Path:
    # 10 classes, as the case (.cls 999 with 10 classes); 16 + 8 samples in shards of 8
    return make_dataset(tmp_path_factory.mktemp("toy"), n_train=16, n_val=8, size=32, classes=10, shard_size=8)


@pytest.fixture
def toy(toy_master, tmp_path) -> Path:
    """A private copy: tests corrupt it."""
    return Path(shutil.copytree(toy_master, tmp_path / "toy"))


def rewrite_shard(vdir: Path, name: str, edit, update_manifest: bool = True) -> None:
    """Rewrite one shard with `edit(sample) -> sample` applied to each sample; the manifest's size and
    sha256 are updated (so the edit, not the integrity check, is what a loader meets)."""
    import webdataset as wds

    path = vdir / name
    samples = [edit(dict(s)) for s in iter_tar_samples(path)]
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)
    if update_manifest:
        m = json.loads((vdir / "_manifest.json").read_text())
        data = path.read_bytes()
        for e in m["shards"]:
            if e["name"] == name:
                e["size"], e["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        (vdir / "_manifest.json").write_text(json.dumps(m))


def edit_key(key: str, **members):
    def edit(s: dict) -> dict:
        if s["__key__"] == key:
            s.update(members)
        return s
    return edit


def first_key(vdir: Path, name: str = "shard-000000.tar") -> str:
    return next(iter_tar_samples(vdir / name))["__key__"]


def jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=10)
    return buf.getvalue()


def eval_args(toy: Path, *extra: str, workers: str | None = "2") -> list[str]:
    args = ["--model", "small_cnn", "--shards", str(toy), "--split", "val", "--variant", "jpeg-q10", "--device", "cpu",
            "--batch-size", "4", "--quiet", *extra]
    return args + (["--workers", workers] if workers is not None else [])


def one_line_error(res, code: int = 1) -> str:
    """The single stderr line of a failed command (no traceback, no worker wrapper)."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and "DataLoader worker" not in res.output, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


# -- 1. errors in DataLoader workers -------------------------------------------------------------

def test_decode_error_in_a_worker_is_one_line_naming_shard_and_key(toy):
    vdir = toy / "val" / "jpeg-q10"
    key = first_key(vdir)
    rewrite_shard(vdir, "shard-000000.tar", edit_key(key, jpg=b"\xff\xd8 this is not a jpeg"))
    line = one_line_error(CliRunner().invoke(eval_classifier, eval_args(toy)))
    assert "shard-000000.tar" in line and repr(key) in line and "does not decode" in line


def test_worker_errors_with_the_default_workers_too(toy):
    vdir = toy / "val" / "jpeg-q10"
    key = first_key(vdir)
    rewrite_shard(vdir, "shard-000000.tar", edit_key(key, jpg=b"garbage"))
    line = one_line_error(CliRunner().invoke(eval_classifier, eval_args(toy, workers=None)))  # default: 4 workers
    assert "shard-000000.tar" in line and repr(key) in line


@pytest.mark.parametrize("cls,expect", [(b"abc", "non-integer .cls"), (b"999", "outside the manifest's 10 classes"),
                                        (b"-7", "outside the manifest's 10 classes")])
def test_bad_cls_is_an_error_naming_shard_and_key(toy, cls, expect):
    vdir = toy / "val" / "jpeg-q10"
    key = first_key(vdir, "shard-000000.tar")
    rewrite_shard(vdir, "shard-000000.tar", edit_key(key, cls=cls))
    line = one_line_error(CliRunner().invoke(eval_classifier, eval_args(toy)))
    assert expect in line and "shard-000000.tar" in line and repr(key) in line


def test_label_beyond_the_models_outputs_is_an_error_not_a_miss(toy):
    # a manifest without classes: the model's 10 outputs are the bound
    vdir = toy / "val" / "jpeg-q10"
    m = json.loads((vdir / "_manifest.json").read_text())
    m["classes"] = None
    (vdir / "_manifest.json").write_text(json.dumps(m))
    key = first_key(vdir)
    rewrite_shard(vdir, "shard-000000.tar", edit_key(key, cls=b"999"))
    line = one_line_error(CliRunner().invoke(eval_classifier, eval_args(toy)))
    assert "class 999 but the model has 10 outputs" in line and repr(key) in line


def test_wrong_size_images_name_shard_and_key(toy):
    vdir = toy / "val" / "jpeg-q10"
    key = first_key(vdir)
    small = jpeg(np.zeros((16, 16, 3), np.uint8))
    # the json says 32x32: a bitstream that decodes to another size is corrupt
    rewrite_shard(vdir, "shard-000000.tar", edit_key(key, jpg=small))
    line = one_line_error(CliRunner().invoke(eval_classifier, eval_args(toy)))
    assert "decodes to 16x16 but its json says 32x32" in line and repr(key) in line
    # json and image agree but the batch mixes sizes
    meta = json.dumps({"h": 16, "w": 16, "bytes": len(small)}).encode()
    rewrite_shard(vdir, "shard-000000.tar", edit_key(key, jpg=small, json=meta))
    line = one_line_error(CliRunner().invoke(eval_classifier, eval_args(toy)))
    assert "shard-000000.tar" in line and repr(key) in line and "of the same batch is 32x32" in line


@pytest.mark.parametrize("text,expect", [("[1, 2]", "not a lossyvision manifest (a JSON list"),
                                         ("{not json", "not valid JSON")])
def test_manifest_that_is_a_list_or_not_json_is_one_line(toy, text, expect):
    (toy / "val" / "jpeg-q10" / "_manifest.json").write_text(text)
    line = one_line_error(CliRunner().invoke(eval_classifier, eval_args(toy)))
    assert expect in line and str(toy / "val" / "jpeg-q10" / "_manifest.json") in line


def test_segmentation_worker_error_keeps_the_shard_name(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from lossyvision.cli.segmentation import train_segmentation

    from .train.cityscapes_fixture import make_cityscapes_shards

    shards = make_cityscapes_shards(tmp_path, "train", n=4)
    vdir = shards / "train" / "jpeg-q10"
    key = first_key(vdir)
    rewrite_shard(vdir, "shard-000000.tar", edit_key(key, jpg=b"not a jpeg"), update_manifest=False)
    res = CliRunner().invoke(train_segmentation, ["--shards", str(shards), "--variant", "jpeg-q10", "--no-eval",
                                                  "--out", str(tmp_path / "seg"), "--encoder", "resnet18",
                                                  "--encoder-weights", "none",
                                                  "--crop-size", "32", "--batch-size", "2", "--steps", "1",
                                                  "--workers", "2", "--device", "cpu", "-q"])
    line = one_line_error(res)
    assert "shard-000000.tar" in line and repr(key) in line and "Caught" not in line


def test_traceback_only_with_vv(toy):
    vdir = toy / "val" / "jpeg-q10"
    rewrite_shard(vdir, "shard-000000.tar", edit_key(first_key(vdir), jpg=b"garbage"))
    res = CliRunner().invoke(eval_classifier, eval_args(toy, "-vv"))
    assert res.exit_code == 1 and "Traceback" in res.output
    assert res.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_worker_error_message_unwraps_torchs_wrapper():
    wrapped = ("Caught ShardError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 3, in f\n    raise ShardError(m)\n'
               "lossyvision.pipelines.stream.ShardError: s/shard-000001.tar: sample 'k' does not decode\n")
    assert worker_error_message(ShardError(wrapped)) == "s/shard-000001.tar: sample 'k' does not decode"
    assert worker_error_message(ValueError("plain")) == "plain"


# -- 2. integrity --------------------------------------------------------------------------------

def _flip_in_member(path: Path, key: str, ext: str) -> None:
    data = bytearray(path.read_bytes())
    name = f"{key}.{ext}".encode()
    hdr = data.index(name)  # the member's 512-byte header, then its data
    start = hdr + 512 + 200  # inside the JPEG's entropy-coded data
    data[start] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_bitstream_byte_fails_the_sha256_check(toy):
    vdir = toy / "val" / "jpeg-q10"
    key = first_key(vdir)
    _flip_in_member(vdir / "shard-000000.tar", key, "jpg")
    with pytest.raises(ShardError, match=r"shard-000000.tar: does not match the manifest's sha256; rebuild it with "
                                         "prepare-shards"):
        list(ShardStream(vdir))
    line = one_line_error(CliRunner().invoke(eval_classifier, eval_args(toy)))
    assert "shard-000000.tar: does not match the manifest's sha256" in line


def test_shard_of_another_size_fails_before_it_is_read(toy):
    vdir = toy / "val" / "jpeg-q10"
    with open(vdir / "shard-000000.tar", "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(ShardError, match=r"shard-000000.tar: \d+ bytes but the manifest says \d+"):
        list(ShardStream(vdir))


def test_shards_from_the_real_prepare_job_pass_the_integrity_check(imagenet_root, tmp_path):
    from lossyvision.pipelines import stream
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    prepare_shards(PrepareConfig(dataset="imagenet", src=imagenet_root, split="val", out=str(tmp_path),
                                 codecs=[CodecSetting("jpeg", 10)], shard_size=4, executor="local", progress=False))
    base = tmp_path / "imagenet" / "val"
    info = read_variant(base / "jpeg-q10")
    assert all(s.sha256 and s.size for s in info.shards)
    assert len(list(ShardStream(base / "jpeg-q10", base / "orig"))) == info.num_samples
    assert {(str(base / v / s.name), s.sha256) for v in ("jpeg-q10", "orig") for s in read_variant(base / v).shards} \
        <= stream._VERIFIED


# -- 3. pixel limit ------------------------------------------------------------------------------

def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h (a decompression bomb's header; no pixel data follows)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_pixel_bomb_in_a_shard_is_refused_before_decoding(toy):
    vdir = toy / "val" / "orig"
    key = first_key(vdir)
    rewrite_shard(vdir, "shard-000000.tar", edit_key(key, png=png_header_only(100_000, 100_000)))
    res = CliRunner().invoke(eval_classifier, [*eval_args(toy), "--variant", "orig"])
    line = one_line_error(res)
    assert "over --max-pixels 134217728" in line and "shard-000000.tar" in line and repr(key) in line


def test_max_pixels_option_applies_to_the_loaders(toy):
    line = one_line_error(CliRunner().invoke(eval_classifier, eval_args(toy, "--max-pixels", "100")))
    assert "32x32 = 1024 pixels is over --max-pixels 100" in line
    res = CliRunner().invoke(eval_classifier, eval_args(toy, "--max-pixels", "1024", "--limit", "5"))
    assert res.exit_code == 0, res.output
    assert "| 5 |" in res.output  # --limit is exact, not rounded up to a batch


def test_bitstreams_pillow_cannot_read_are_checked_from_their_json():
    from lossyvision.pipelines.imageio import SourceError
    from lossyvision.pipelines.stream import check_image_pixels

    meta = json.dumps({"h": 20_000, "w": 20_000}).encode()
    with pytest.raises(SourceError, match="20000x20000 = 400000000 pixels is over --max-pixels"):
        check_image_pixels(b"\0\0\0\x01 an hevc stream", "hevc", meta, 1 << 27)
    check_image_pixels(b"\0\0\0\x01 an hevc stream", "hevc", json.dumps({"h": 64, "w": 64}).encode(), 1 << 27)
    with pytest.raises(ValueError, match="no w and h"):
        check_image_pixels(b"\0\0\0\x01", "bpg", None, 1 << 27)


# -- 4. option values ----------------------------------------------------------------------------

def train_args(toy: Path, out: Path, *extra: str) -> list[str]:
    return ["--shards", str(toy), "--variant", "jpeg-q10", "--out", str(out), "--model", "small_cnn", "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--teacher-cache", "off", "--quiet", *extra]


@pytest.mark.parametrize("extra,expect", [
    (["--epochs", "0"], "--epochs"), (["--num-classes", "0"], "--num-classes"), (["--batch-size", "0"], "--batch-size"),
    (["--max-steps-per-epoch", "0"], "--max-steps-per-epoch"), (["--device", "gpu"], "choose cpu, cuda, cuda:N, mps"),
    (["--variant", "../escape"], "not a valid name"), (["--val-split", "a/b"], "not a valid name"),
    (["--max-pixels", "0"], "--max-pixels"), (["--lr", "0"], "--lr"), (["--resume", "--overwrite"], "give one of them"),
])
def test_training_option_values_exit_2(toy_master, tmp_path, extra, expect):
    res = CliRunner().invoke(train_expert, train_args(toy_master, tmp_path / "run", *extra))
    assert expect in one_line_error(res, 2)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train-expert", "eval-classifier", "train-segmentation", "restore-shards"])
def test_device_cuda_without_cuda_is_one_line(toy_master, tmp_path, command):
    from lossyvision.cli import segmentation as seg

    cmd, args = {
        "train-expert": (train_expert, train_args(toy_master, tmp_path / "run")),
        "eval-classifier": (eval_classifier, eval_args(toy_master)),
        "train-segmentation": (seg.train_segmentation, ["--shards", str(toy_master), "--out", str(tmp_path / "s")]),
        "restore-shards": (seg.restore_shards, ["--shards", str(toy_master), "--variant", "jpeg-q10",
                                                "--generator", str(tmp_path / "g.pt")]),
    }[command]
    res = CliRunner().invoke(cmd, [*args, "--device", "cuda"])
    assert "CUDA is not available here; use --device cpu" in one_line_error(res, 2)


@pytest.mark.parametrize("content", [b"", b"root:x:0:0:root:/root:/bin/bash\n"])
def test_files_that_are_not_checkpoints_are_one_line(toy_master, tmp_path, content):
    from lossyvision.cli.segmentation import eval_segmentation, restore_shards

    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    res = CliRunner().invoke(train_expert, train_args(toy_master, tmp_path / "run", "--weights", str(bad)))
    assert f"--weights {bad} is not a PyTorch checkpoint" in one_line_error(res, 2)
    res = CliRunner().invoke(eval_classifier, [*eval_args(toy_master), "--model", str(bad)])
    assert f"--model {bad} is not a PyTorch checkpoint" in one_line_error(res, 2)
    res = CliRunner().invoke(restore_shards, ["--shards", str(toy_master), "--split", "val", "--variant", "jpeg-q10",
                                              "--generator", str(bad), "--device", "cpu", "-q"])
    assert f"--generator {bad} is not a PyTorch checkpoint" in one_line_error(res, 2)
    assert not (toy_master / "val" / "jpeg-q10+restored").exists()
    res = CliRunner().invoke(eval_segmentation, ["--checkpoint", str(bad), "--shards", str(toy_master),
                                                 "--variant", "orig", "--out", str(tmp_path / "e"), "-q"])
    assert f"--checkpoint {bad} is not a PyTorch checkpoint" in one_line_error(res, 2)
    assert "Aborted" not in res.output


@pytest.mark.parametrize("command,extra,expect", [
    ("eval-classifier", ["--limit", "0"], "--limit"),
    ("eval-classifier", ["--limit", "-1"], "--limit"),
    ("eval-matrix", ["--limit", "0"], "--limit"),
    ("train-restoration", ["--limit", "0"], "--limit"),
    ("train-restoration", ["--steps", "0"], "--steps"),
    ("train-segmentation", ["--val-limit", "-1"], "--val-limit"),
    ("train-segmentation", ["--variant", "../../etc"], "not a valid name"),
    ("eval-segmentation", ["--limit", "0"], "--limit"),
    ("restore-shards", ["--out-variant", "../x"], "not a valid name"),
    ("restore-shards", ["--variant", "a" * 120], "not a valid name"),  # its default out variant <variant>+restored is too long
])
def test_limits_and_names_exit_2(toy_master, tmp_path, command, extra, expect):
    from lossyvision.cli import segmentation as seg

    gen = tmp_path / "g.pt"
    cmd, args = {
        "eval-classifier": (eval_classifier, eval_args(toy_master)),
        "eval-matrix": (eval_matrix, ["--model", "a=small_cnn", "--shards", str(toy_master), "--variant",
                                      "jpeg-q10", "--out", str(tmp_path / "m"), "--device", "cpu"]),
        "train-restoration": (seg.train_restoration, ["--shards", str(toy_master), "--variant", "jpeg-q10",
                                                      "--out", str(tmp_path / "r"), "--device", "cpu"]),
        "train-segmentation": (seg.train_segmentation, ["--shards", str(toy_master), "--out", str(tmp_path / "s"),
                                                        "--device", "cpu"]),
        "eval-segmentation": (seg.eval_segmentation, ["--checkpoint", str(gen), "--shards", str(toy_master),
                                                      "--out", str(tmp_path / "e")]),
        "restore-shards": (seg.restore_shards, ["--shards", str(toy_master), "--variant", "jpeg-q10",
                                                "--generator", str(gen), "--device", "cpu"]),
    }[command]
    res = CliRunner().invoke(cmd, [*args, *extra])
    assert expect in one_line_error(res, 2)
    assert not any(p.name not in ("toy",) for p in tmp_path.iterdir())  # nothing created


# -- 5. finished runs ----------------------------------------------------------------------------

def test_rerun_into_a_finished_run_is_refused(toy_master, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(train_expert, train_args(toy_master, out))
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1
    res = runner.invoke(train_expert, train_args(toy_master, out))
    assert f"{out} holds a finished run; pass --resume to continue it or --overwrite to replace it" in \
        one_line_error(res, 2)
    res = runner.invoke(train_expert, train_args(toy_master, out, "--resume"))
    assert res.exit_code == 0 and json.loads(res.output.strip().splitlines()[-1])["epochs"] == 1, res.output
    log_lines = len((out / "log.jsonl").read_text().splitlines())
    res = runner.invoke(train_expert, train_args(toy_master, out, "--overwrite"))
    assert res.exit_code == 0, res.output
    assert len((out / "log.jsonl").read_text().splitlines()) == log_lines  # replaced, not appended to


def test_segmentation_and_restoration_refuse_a_finished_run(tmp_path):
    from lossyvision.train.classifier import SUMMARY
    from lossyvision.train.restoration import RestorationConfig, train_restoration
    from lossyvision.train.segmentation import SegmentationConfig, train_segmentation

    from .train.cityscapes_fixture import make_cityscapes_shards

    shards = make_cityscapes_shards(tmp_path, "train", n=2)
    for out in (tmp_path / "seg", tmp_path / "gan"):
        out.mkdir()
        (out / SUMMARY).write_text("{}")
    with pytest.raises(ValueError, match="holds a finished run; pass --resume"):
        train_segmentation(SegmentationConfig(shards=str(shards), train_variant="jpeg-q10", evaluate=False,
                                              out_dir=str(tmp_path / "seg"), device="cpu"))
    with pytest.raises(ValueError, match="holds a finished run; pass --resume"):
        train_restoration(RestorationConfig(shards=str(shards), split="train", variant="jpeg-q10", out_dir=str(tmp_path / "gan"),
                                            device="cpu"))


# -- rate-report's library -----------------------------------------------------------------------

def test_rate_report_library_errors_name_the_file(toy, tmp_path):
    from lossyvision.eval.rates import ResultsError
    from lossyvision.reports.rate_report import rate_report

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"name": "x"}]))
    with pytest.raises(ResultsError, match=r"--results .*wrong.json is not an accuracy results file"):
        rate_report(str(toy), out=str(tmp_path / "rep"), results=[str(wrong)], plot=False)
    not_json = tmp_path / "x.json"
    not_json.write_text("{")
    with pytest.raises(ResultsError, match="is not valid JSON"):
        rate_report(str(toy), out=str(tmp_path / "rep"), results=[str(not_json)], plot=False)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(OSError, match="pass a writable --out"):
        rate_report(str(toy), out=str(a_file), plot=False)
    m = json.loads((toy / "val" / "orig" / "_manifest.json").read_text())
    del m["dataset"]
    (toy / "val" / "orig" / "_manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"orig/_manifest.json: not a complete lossyvision manifest"):
        rate_report(str(toy), out=str(tmp_path / "rep"), plot=False)


@pytest.mark.parametrize("shape,kw", [((224, 224, 3), {}), ((37, 53, 3), {"progressive": True}), ((40, 30), {}),
                                      ((30, 20, 3), {"exif": b"Exif\0\0" + b"x" * 100})])
def test_jpeg_header_size_matches_pillows(shape, kw):
    from lossyvision.pipelines.imageio import header_size
    from lossyvision.pipelines.stream import image_size

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)).save(buf, format="JPEG", **kw)
    assert image_size(buf.getvalue(), "jpg", None) == header_size(buf.getvalue())


def test_vgg_and_encoder_weights_that_are_not_checkpoints(tmp_path):
    from lossyvision.pipelines.stream import OptionError
    from lossyvision.train.networks.finenet import VGGFeatures

    bad = tmp_path / "vgg.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(OptionError, match=f"--vgg-weights {bad} is not a PyTorch checkpoint"):
        VGGFeatures(str(bad))


def test_unexpected_errors_are_one_line_with_their_type(toy_master, monkeypatch):
    import lossyvision.eval.classification as ec

    def boom(cfg):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(ec, "evaluate", boom)
    line = one_line_error(CliRunner().invoke(eval_classifier, eval_args(toy_master)))
    assert line == "Error: ZeroDivisionError: division by zero (rerun with -vv for the traceback)"


@pytest.mark.parametrize("cmd", [["train-classifier", "--variant", "jpeg-q5"], ["train-expert", "--variant", "jpeg-q5"],
                                 ["train-segmentation"], ["train-restoration"]])
def test_empty_out_is_refused(cmd, tmp_path):
    """An empty --out would write into the working directory."""
    from click.testing import CliRunner

    from lossyvision.cli import main

    r = CliRunner().invoke(main, [cmd[0], "--shards", str(tmp_path), *cmd[1:], "--out", ""])
    assert r.exit_code == 2 and "'--out': is empty" in r.output and len(r.output.strip().splitlines()) == 1, r.output
