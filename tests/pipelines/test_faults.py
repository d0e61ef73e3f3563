"""Every way a prepare-shards job dies, and what a rerun makes of it: signals at random moments,
a second job on the same output, a full disk, a source tree that changed between runs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lossyvision.cli import main
from lossyvision.pipelines.joblock import JobLock, JobLockError
from lossyvision.pipelines.prepare import CodecSetting, OutputNotSharedError, PrepareConfig, PrepareError, ShardTask, encode_shard, prepare_shards
from tests.pipelines.test_prepare import digest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRIALS = os.path.join(ROOT, "tools", "faults", "kill_trials.py")
CLI = [sys.executable, "-m", "lossyvision.cli", "prepare-shards"]


def _photos_folder(root: str, n: int = 8) -> str:
    import skimage.data

    os.makedirs(root, exist_ok=True)
    for i, name in enumerate(("astronaut", "chelsea", "coffee", "rocket") * ((n + 3) // 4)):
        if i >= n:
            break
        a = getattr(skimage.data, name)()
        a = np.ascontiguousarray(np.roll(a, 17 * i, axis=1)[:200, :240])
        Image.fromarray(a).save(os.path.join(root, f"img{i:02d}.png"))
    return root


def _no_temps(root: str) -> bool:
    return not [f for _, _, fs in os.walk(root) for f in fs if ".tmp-" in f]


# -- signals at random moments ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("executor,trials", [("local", 6), pytest.param("ray", 3, marks=pytest.mark.ray)])
def test_random_signals_then_rerun_gives_identical_output(executor, trials, tmp_path):
    """tools/faults/kill_trials.py: SIGINT/SIGTERM/SIGKILL after seeded random delays; every rerun
    must give byte-identical shards and the same manifests as an uninterrupted run."""
    args = [sys.executable, TRIALS, "--trials", str(trials), "--seed", "6", "--executor", executor,
            "--out", str(tmp_path), "--json", str(tmp_path / "trials.json")]
    if executor == "ray":
        args += ["--workers", "2"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=900)
    records = json.load(open(tmp_path / "trials.json"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert len(records) == trials and all(r["identical"] and r["exit_ok"] for r in records)
    assert sum(r["killed_mid_job"] for r in records) >= trials - 1  # the delays land inside the job


# -- one job per output -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_job_on_the_same_output_is_refused(tmp_path):
    src, out = _photos_folder(str(tmp_path / "src"), 8), str(tmp_path / "out")
    args = ["--dataset", "folder", "--src", src, "--out", out, "--shard-size", "1", "--codec", "bpg", "--quality", "30,41", "--executor", "local", "--quiet"]
    first = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = os.path.join(out, "folder", "all", ".lock")
    deadline = time.time() + 60
    while time.time() < deadline and not (os.path.exists(lock) and open(lock).read().strip()):
        time.sleep(0.05)
    second = subprocess.run(CLI + args, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first job ended before the second started; make it longer"
    assert second.returncode == 1, second.stderr
    assert f"pid {first.pid}" in second.stderr and "is writing to" in second.stderr and "Traceback" not in second.stderr
    assert first.wait(timeout=300) == 0
    again = subprocess.run(CLI + args, capture_output=True, text=True, timeout=120)  # the lock died with its holder
    assert again.returncode == 0, again.stderr


def test_lease_lock_on_object_storage(s3_bucket):
    folder = f"{s3_bucket}/shards/imagenet/val"
    with JobLock(folder, stale_s=60):
        with pytest.raises(JobLockError, match="is writing to"):
            JobLock(folder, stale_s=60).acquire()
    second = JobLock(folder, stale_s=60)  # released: the next job takes it
    second.acquire()
    second.release()

    from lossyvision import storage

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    lease = json.loads(storage.read_text(f"{folder}/.lock"))
    storage.write_bytes_atomic(f"{folder}/.lock", json.dumps({**lease, "kind": "lease", "pid": int(dead), "heartbeat": time.time()}).encode())
    with JobLock(folder, stale_s=60):  # its holder was on this host and is gone: taken over
        pass
    storage.write_bytes_atomic(f"{folder}/.lock", json.dumps({**lease, "kind": "lease", "host": "elsewhere", "heartbeat": time.time()}).encode())
    with pytest.raises(JobLockError, match="--break-lock"):
        JobLock(folder, stale_s=60).acquire()
    with JobLock(folder, stale_s=60, break_lock=True):
        pass


def test_a_worker_that_cannot_see_the_output_says_so(tmp_path):
    from lossyvision.pipelines.crops import IMAGENET
    from lossyvision.pipelines.sources import create_source

    t = ShardTask(0, [], create_source("samples", None, "all"), IMAGENET, [], {}, True, False, False, lock_path=str(tmp_path / "missing" / ".lock"))
    with pytest.raises(OutputNotSharedError, match="every node mounts"):
        encode_shard(t)


# -- disk full ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path):
    """A 600 KiB tmpfs, or a skip saying why there cannot be one."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield str(mnt)
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_disk_full_leaves_no_corrupt_shard_and_resumes(tiny_fs, executor, tmp_path):
    args = ["--dataset", "samples", "--shard-size", "3", "--codec", "jpeg", "--quality", "75", "--executor", executor, "--quiet"]
    if executor == "ray":
        args += ["--workers", "2"]
    ref = str(tmp_path / "ref")
    assert subprocess.run(CLI + args + ["--out", ref, "--executor", "local"], capture_output=True).returncode == 0
    out = os.path.join(tiny_fs, "shards")
    p = subprocess.run(CLI + args + ["--out", out], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    assert "no space left on the device" in p.stderr and tiny_fs in p.stderr and "Traceback" not in p.stderr
    assert _no_temps(out)
    for variant in ("orig", "jpeg-q75"):
        vdir = os.path.join(out, "samples", "all", variant)
        if os.path.exists(os.path.join(vdir, "_manifest.json")):
            m = json.load(open(os.path.join(vdir, "_manifest.json")))  # still whole, valid JSON
            assert not m["complete"]
            for e in filter(None, m["shards"]):  # every shard it lists is whole
                assert digest(vdir)[e["name"]] == e["sha256"]
    subprocess.run(["mount", "-o", "remount,size=64m", tiny_fs], check=True)
    p = subprocess.run(CLI + args + ["--out", out], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert digest(out) == digest(ref)


# -- the source tree changed between runs -----------------------------------------------------


def test_changed_source_images_rebuild_only_their_shards(tmp_path, caplog):
    src = _photos_folder(str(tmp_path / "src"), 8)
    cfg = PrepareConfig(dataset="folder", src=src, out=str(tmp_path / "out"), codecs=[CodecSetting("jpeg", 10)], shard_size=2,
                        executor="local", progress=False)
    prepare_shards(cfg)
    before = digest(cfg.out)
    Image.fromarray(np.zeros((200, 240, 3), np.uint8) + 90).save(os.path.join(src, "img05.png"))  # same name, new content
    with caplog.at_level("WARNING"):
        manifests = prepare_shards(cfg)
    assert "1 shard(s) hold source images that changed" in caplog.text and "shard-000002.tar" in caplog.text
    after = digest(cfg.out)
    assert {k for k in before if before[k] != after[k]} == {"folder/all/orig/shard-000002.tar", "folder/all/jpeg-q10/shard-000002.tar"}
    fresh = dataclasses.replace(cfg, out=str(tmp_path / "fresh"))
    prepare_shards(fresh)
    assert digest(fresh.out) == after  # the same as a run on the changed tree: nothing old mixed in
    assert all(m["complete"] for m in manifests.values())


def test_added_or_removed_source_images_are_refused(tmp_path):
    src = _photos_folder(str(tmp_path / "src"), 6)
    args = ["prepare-shards", "--dataset", "folder", "--src", src, "--out", str(tmp_path / "out"), "--shard-size", "2",
            "--codec", "jpeg", "--quality", "10", "--executor", "local", "--quiet"]
    assert CliRunner().invoke(main, args).exit_code == 0
    shutil.copy(os.path.join(src, "img00.png"), os.path.join(src, "img00b.png"))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "source list changed" in r.output and "6 images then, 7 now" in r.output
    assert "shard-000000.tar" in r.output and "new --out" in r.output
    os.remove(os.path.join(src, "img00b.png"))
    assert CliRunner().invoke(main, args).exit_code == 0  # back as it was: a no-op resume
    with pytest.raises(PrepareError, match="source list changed"):
        os.remove(os.path.join(src, "img05.png"))
        prepare_shards(PrepareConfig(dataset="folder", src=src, out=str(tmp_path / "out"), codecs=[CodecSetting("jpeg", 10)],
                                     shard_size=2, executor="local", progress=False))


def test_tasks_carry_their_items_not_the_dataset(imagenet_root):
    """Ray ships each task its source object: the listing the driver cached must not travel with it."""
    import pickle

    from lossyvision.pipelines.sources import create_source

    src = create_source("imagenet", imagenet_root, "val")
    items = src.items()
    assert len(items) > 10 and src._items is not None
    clone = pickle.loads(pickle.dumps(src))
    assert clone._items is None and len(pickle.dumps(src)) < 1000
    assert clone.load(items[0])[0].shape == src.load(items[0])[0].shape  # and the clone still loads
