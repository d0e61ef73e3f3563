"""The shard readers (streams, rate report, restore-shards, training) on an s3:// root, against local.

Real shards from prepare-shards are uploaded to a local S3 server (moto, tests/s3server.py); every
reader must give on the s3:// copy exactly what it gives on the local folder.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
import torch

from lossyvision import storage
from lossyvision.pipelines.stream import ShardStream, make_loader, read_variant, variant_dir
from tests.conftest import make_imagenet


def upload_tree(local_dir: str, url: str) -> None:
    """Copy every file under ``local_dir`` to the same relative key under ``url``."""
    for rel, _ in storage.walk_files(local_dir, ("",)):
        with open(os.path.join(local_dir, rel), "rb") as f:
            storage.write_bytes_atomic(storage.join(url, rel.replace(os.sep, "/")), f.read())


def prepare_imagenet(tmp: str) -> str:
    """Small labelled ImageNet-layout shards (train and val, jpeg-q10 + orig, 4 per shard); returns the shard root."""
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    src = make_imagenet(os.path.join(tmp, "ILSVRC2012"), per_class=2, odd=False)
    out = os.path.join(tmp, "shards")
    for split in ("train", "val"):
        prepare_shards(PrepareConfig(dataset="imagenet", src=src, split=split, out=out, codecs=[CodecSetting("jpeg", 10)],
                                     crop="resize72-center64", shard_size=4, progress=False, executor="local"))
    return out


@pytest.fixture(scope="module")
def roots(tmp_path_factory, s3_endpoint) -> tuple[str, str]:
    """(local shard root, the same tree uploaded to a fresh bucket)."""
    import fsspec

    local = prepare_imagenet(str(tmp_path_factory.mktemp("prep")))
    bucket = f"lv-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
    remote = f"s3://{bucket}/root"
    upload_tree(local, remote)
    return local, remote


def assert_same_items(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            assert torch.equal(u, v) if torch.is_tensor(u) else u == v


def split_dirs(roots: tuple[str, str], split: str = "val") -> tuple[str, str]:
    return tuple(storage.join(r, "imagenet", split) for r in roots)


def test_paired_and_single_streams_match_local(roots):
    local, remote = split_dirs(roots)
    v_local, v_remote = variant_dir(local, "jpeg-q10"), variant_dir(remote, "jpeg-q10")
    assert v_remote == remote + "/jpeg-q10"
    info = read_variant(v_remote)
    assert info.root == v_remote and info.variant == "jpeg-q10" and info.spec == "jpeg-q10"
    assert info.shards == read_variant(v_local).shards and len(info.shards) == 2
    paired_local = list(ShardStream(v_local, variant_dir(local, "orig")))
    paired_remote = list(ShardStream(v_remote, variant_dir(remote, "orig")))
    assert_same_items(paired_local, paired_remote)
    assert all(isinstance(y, int) and y >= 0 for _, _, y, _ in paired_remote)
    assert_same_items(list(ShardStream(v_local)), list(ShardStream(v_remote)))


def test_loader_workers_read_s3(roots):
    local, remote = split_dirs(roots, "train")

    def keys(root: str) -> list[str]:
        ds = ShardStream(variant_dir(root, "jpeg-q10"), shuffle=True, seed=1, buffer_size=3)
        return [k for _, _, batch in make_loader(ds, 2, num_workers=2) for k in batch]

    assert keys(remote) == keys(local) and len(keys(local)) == 6


def test_missing_variant_on_s3_names_what_is_there(roots):
    _, remote = split_dirs(roots)
    with pytest.raises(FileNotFoundError, match=r"variant 'bpg-qp41' not found under s3://.*available: jpeg-q10, orig"):
        variant_dir(remote, "bpg-qp41")
    with pytest.raises(FileNotFoundError, match="none \\(wrong --shards path\\?\\)"):
        variant_dir(storage.join(remote, "nope"), "orig")
    with pytest.raises(FileNotFoundError, match="no _manifest.json in s3://"):
        read_variant(storage.join(remote, "nope"))


def test_rate_report_on_s3_equals_local(roots, tmp_path, monkeypatch):
    from lossyvision.reports.rate_report import rate_report

    local, remote = roots
    a = rate_report(local, out=str(tmp_path / "a"), plot=False)
    b = rate_report(remote, out=str(tmp_path / "b"), plot=False)
    assert len(a.rows) == 4 and a.rows == b.rows and a.markdown == b.markdown
    monkeypatch.chdir(tmp_path)
    c = rate_report(storage.join(remote, "imagenet", "val"), plot=False)
    assert c.files["csv"] == os.path.join(".", "report-val", "rates.csv") and os.path.isfile(tmp_path / "report-val" / "rates.csv")
    assert not storage.exists(storage.join(remote, "imagenet", "val", "report"))


def test_restore_shards_reads_and_writes_s3(roots, s3_bucket, tmp_path):
    import webdataset as wds

    from lossyvision.pipelines.restore import RestoreConfig, restore_shards
    from lossyvision.train.networks.finenet import Generator
    from lossyvision.train.restoration import save_generator

    local, _ = roots
    remote = storage.join(s3_bucket, "root", "imagenet")
    upload_tree(os.path.join(local, "imagenet", "val"), storage.join(remote, "val"))
    gen = tmp_path / "generator.pt"
    torch.manual_seed(0)
    save_generator(gen, Generator(width=4, n_blocks=1), {"width": 4, "n_blocks": 1, "norm": "instance"}, {"step": 0})
    cfg = RestoreConfig(shards=remote, variant="jpeg-q10", generator=str(gen), split="val", device="cpu")
    manifest = restore_shards(cfg)
    out = storage.join(remote, "val", "jpeg-q10+restored")
    assert manifest["complete"] and manifest["num_samples"] == 6
    assert json.loads(storage.read_text(storage.join(out, "_manifest.json"))) == json.loads(json.dumps(manifest))
    # plain webdataset reads the restored shards (downloaded: it has no s3 reader of its own)
    files = []
    for s in manifest["shards"]:
        files.append(str(tmp_path / s["name"]))
        (tmp_path / s["name"]).write_bytes(storage.read_bytes(storage.join(out, s["name"])))
    samples = list(wds.WebDataset(files, shardshuffle=False))
    orig = [k for *_, k in ShardStream(storage.join(remote, "val", "orig"))]
    assert [s["__key__"] for s in samples] == orig
    assert all(json.loads(s["json"])["psnr"] is not None and "png" in s and "cls" in s for s in samples)
    streamed = list(ShardStream(out, storage.join(remote, "val", "orig")))
    assert [k for *_, k in streamed] == orig and streamed[0][1].shape == (3, 64, 64)
    # a rerun with the same generator finds its shards intact on s3 and skips them
    stamps = {s["name"]: storage.stat(storage.join(out, s["name"])) for s in manifest["shards"]}
    again = restore_shards(cfg)
    assert again["means"] == pytest.approx(manifest["means"])
    assert {s["name"]: storage.stat(storage.join(out, s["name"])) for s in manifest["shards"]} == stamps


def test_classifier_trains_one_step_and_evaluates_from_s3(roots, tmp_path):
    from click.testing import CliRunner

    from lossyvision.cli.classifier import eval_classifier
    from lossyvision.train.classifier import TrainConfig, train

    torch.set_num_threads(1)
    _, remote = roots
    run = tmp_path / "run"
    out = train(TrainConfig(shards=storage.join(remote, "imagenet"), variant="jpeg-q10", out=str(run),
                            model="small_cnn", recipe="expert", epochs=1, batch_size=4, workers=0, shuffle_buffer=4,
                            max_steps_per_epoch=1, teacher_cache="auto", progress=False, device="cpu"))
    assert out["epochs"] == 1 and (run / "last.pt").is_file() and (run / "teacher-train.h5").is_file()
    r = CliRunner().invoke(eval_classifier, ["--model", str(run / "last.pt"), "--shards", storage.join(remote, "imagenet"),
                                             "--variant", "jpeg-q10", "--workers", "0", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "| jpeg-q10 |" in r.output
