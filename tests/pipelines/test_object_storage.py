"""prepare-shards with --src/--out on object storage: moto's S3 server, started by the test, stands in
for S3 (same API through s3fs). Write, resume after kills, read back with plain webdataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lossyvision import storage
from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards
from tests.pipelines.test_faults import _photos_folder
from tests.pipelines.test_prepare import digest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = [CodecSetting("jpeg", 10), CodecSetting("j2k", 200)]
# How a plain webdataset user reads a private bucket: a pipe that streams the object to stdout
# (`pipe:aws s3 cp s3://... -` with the AWS CLI; here fsspec, which knows the test server's endpoint).
CAT = "pipe:" + sys.executable + " -c 'import sys, fsspec; sys.stdout.buffer.write(fsspec.open(sys.argv[1]).open().read())' "


def s3_digest(url: str) -> dict[str, str]:
    """sha256 of every shard object under url, keyed like tests.pipelines.test_prepare.digest."""
    return {rel: storage.sha256(storage.join(url, rel)) for rel, _ in storage.walk_files(url, (".tar",))}


def test_shards_on_s3_are_the_local_bytes_and_read_back_with_plain_webdataset(s3_bucket, tmp_path, caplog):
    import webdataset as wds

    local = str(tmp_path / "local")
    common = dict(dataset="samples", codecs=SETTINGS, shard_size=5, executor="local", progress=False)
    prepare_shards(PrepareConfig(out=local, **common))
    url = f"{s3_bucket}/shards"
    manifests = prepare_shards(PrepareConfig(out=url, **common))
    assert s3_digest(url) == digest(local) and len(digest(local)) == 3 * 4
    assert all(m["complete"] for m in manifests.values())
    m = json.loads(storage.read_text(f"{url}/samples/all/jpeg-q10/_manifest.json"))
    shards = [f"{url}/samples/all/jpeg-q10/{e['name']}" for e in m["shards"]]
    samples = list(wds.WebDataset([CAT + s for s in shards], shardshuffle=False, empty_check=False))
    assert len(samples) == m["num_samples"] == 18
    assert all(json.loads(s["json"])["bytes"] == len(s["jpg"]) for s in samples)
    # a rerun is a no-op: every shard object is recognised from one listing (size + ETag) and kept
    with caplog.at_level("INFO", logger="lossyvision.pipelines.prepare"):
        prepare_shards(PrepareConfig(out=url, **common))
    assert "0 shards to do" in caplog.text


def test_source_tree_on_s3(s3_bucket, tmp_path):
    import fsspec

    src = _photos_folder(str(tmp_path / "photos"), 6)
    fs = fsspec.filesystem("s3")
    for f in sorted(os.listdir(src)):
        fs.put_file(os.path.join(src, f), f"{s3_bucket[5:]}/photos/{f}")
    common = dict(dataset="folder", codecs=SETTINGS, shard_size=4, executor="local", progress=False)
    prepare_shards(PrepareConfig(src=src, out=str(tmp_path / "from-disk"), **common))
    prepare_shards(PrepareConfig(src=f"{s3_bucket}/photos", out=str(tmp_path / "from-s3"), **common))
    assert digest(str(tmp_path / "from-s3")) == digest(str(tmp_path / "from-disk"))


@pytest.mark.slow
def test_kills_then_rerun_on_s3_give_identical_output(s3_bucket, tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "faults", "kill_trials.py"), "--trials", "3", "--seed", "3",
                        "--out", f"{s3_bucket}/trials", "--json", str(tmp_path / "t.json")], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    records = json.load(open(tmp_path / "t.json"))
    assert len(records) == 3 and all(r["identical"] for r in records)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_workers_write_to_s3_themselves(s3_bucket, tmp_path):
    """Two Ray workers read the sources and write the shard objects; only manifest entries reach the driver."""
    local = str(tmp_path / "local")
    common = dict(dataset="samples", codecs=SETTINGS, shard_size=3, progress=False)
    prepare_shards(PrepareConfig(out=local, executor="local", **common))
    url = f"{s3_bucket}/ray"
    p = subprocess.run([sys.executable, "-m", "lossyvision.cli", "prepare-shards", "--dataset", "samples", "--out", url, "--shard-size", "3",
                        "--codec", "jpeg", "--quality", "10", "--codec", "j2k", "--quality", "200", "--executor", "ray", "--workers", "2", "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert s3_digest(url) == digest(local)


def test_a_missing_bucket_is_an_error_not_created(s3_endpoint, tmp_path):
    import fsspec

    p = subprocess.run([sys.executable, "-m", "lossyvision.cli", "prepare-shards", "--dataset", "samples", "--out", "s3://no-such-bucket-lv/x",
                        "--codec", "jpeg", "--quality", "10", "--limit", "2", "--quiet"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "bucket 'no-such-bucket-lv' does not exist" in p.stderr and "Traceback" not in p.stderr
    assert "no-such-bucket-lv" not in fsspec.filesystem("s3", skip_instance_cache=True).ls("")
