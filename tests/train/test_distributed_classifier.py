"""The classifier under DDP on CPU (gloo, 2 processes launched by torchrun): the process group is
left on exit and after a failed set-up, the teacher cache is built by both ranks and equals the
single-process one, RNG states are saved and restored per rank, a checkpoint of 2 ranks resumes
in 1 process and one of 1 process in 2 (re-seeded, said in the log), and --global-batch is split
over the processes."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from .classifier_shards import make_dataset
from .dist_helpers import free_port, torchrun_env
from lossyvision.train import distributed, teacher_cache as tc
from lossyvision.train.classifier import Trainer, TrainConfig, train

REPO = Path(__file__).parents[2]

# each rank: a set-up that must fail (5 does not divide over 2), a 1-epoch run with the teacher cache
# built by both ranks, a resume that restores this rank's RNG state, then a resume of a 1-process
# run's checkpoint (re-seeded, with the line it logs); results in rank<r>.json.
# Each phase joins a fresh process group on its own port: a group re-created on the store it was
# destroyed on can read the old group's stale addresses (torchrun's agent store does).
SCRIPT = """
import json, logging, os, sys, torch
torch.set_num_threads(1)
import torch.distributed as dist
from lossyvision.pipelines.stream import OptionError
from lossyvision.train.classifier import Trainer, TrainConfig, train
cfg, ports, one = json.loads(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
rank = int(os.environ["RANK"])
res = {}
os.environ["MASTER_PORT"] = ports[0]
try:
    Trainer(TrainConfig(**{**cfg, "global_batch": 5}))
except OptionError as e:
    res["bad_batch"] = str(e)
res["initialized_after_bad_batch"] = dist.is_initialized()
os.environ["MASTER_PORT"] = ports[1]
summary = train(TrainConfig(**cfg))
res["per_process_batch"] = summary["per_process_batch"]
res["initialized_after_train"] = dist.is_initialized()
os.environ["MASTER_PORT"] = ports[2]
tr = Trainer(TrainConfig(**{**cfg, "epochs": 2, "resume": True}))
tr._resume()
ck = torch.load(os.path.join(cfg["out"], "last.pt"), weights_only=True)
res["restored_own_state"] = torch.equal(torch.get_rng_state(), ck["rng"]["ranks"][rank]["torch"])
tr.close()
os.environ["MASTER_PORT"] = ports[3]
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("resume:"):
            lines.append([record.levelname, record.getMessage()])
log = logging.getLogger("lossyvision.train.classifier")
log.setLevel(logging.DEBUG)
log.addHandler(Keep())
summary = train(TrainConfig(**{**cfg, "out": one, "epochs": 2, "resume": True}))
res["resumed_one"] = {k: summary[k] for k in ("epochs", "world_size", "per_process_batch")}
res["resumed_one"]["lines"] = lines
with open(os.path.join(cfg["out"], f"rank{rank}.json"), "w") as f:
    json.dump(res, f)
"""


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    # odd counts: the ranks' cache slices differ in size (val: 3 + 4)
    return make_dataset(tmp_path_factory.mktemp("shards"), n_train=21, n_val=7, shard_size=6)


def _cfg(toy, out, **kw) -> dict:
    base = dict(shards=str(toy), variant="jpeg-q10", out=str(out), model="small_cnn", recipe="expert", epochs=1,
                global_batch=8, lr=1e-3, alpha=1.0, workers=1, shuffle_buffer=4, progress=False, device="cpu",
                teacher_cache="auto", log_every=1, seed=3)
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def ddp(toy, tmp_path_factory):
    """The 2-rank run's folder and each rank's report (2 gloo processes, started as torchrun would).
    ``one`` beside it: a 1-epoch run of one process, resumed there by the 2 ranks for a 2nd epoch."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    script = out.parent / "ddp_classifier.py"
    script.write_text(SCRIPT)
    train(TrainConfig(**_cfg(toy, out.parent / "one", workers=0)))
    ports = ",".join(str(free_port()) for _ in range(4))
    procs = []
    for rank in range(2):  # what torchrun sets, without its agent (see SCRIPT)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **torchrun_env(rank, 2)}
        procs.append(subprocess.Popen([sys.executable, str(script), json.dumps(_cfg(toy, out)), ports,
                                       str(out.parent / "one")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_ranks_split_the_global_batch_and_leave_the_group(ddp):
    out, ranks = ddp
    for r in ranks:
        assert r["per_process_batch"] == 4
        assert r["initialized_after_train"] is False and r["initialized_after_bad_batch"] is False
        # a global batch that does not divide: one line that says what to change, on every rank
        assert "\n" not in r["bad_batch"] and "--global-batch 5 does not divide over 2 processes" in r["bad_batch"]
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["global_batch"], cfg["world_size"], cfg["per_process_batch"]) == (8, 2, 4)
    TrainConfig.from_dict(cfg)  # the derived keys do not break reading it back
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["per_process_batch"], summary["global_batch"]) == (2, 4, 8)
    rec = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    # train: 21 -> 10 per rank (equal counts), 2 full batches of 4 each; val: every sample once (3 + 4)
    assert rec["train_samples"] == 16 and rec["val_samples"] == 7
    assert not list(out.glob(".*part*"))  # the cache's part files are gone


def test_rng_states_are_saved_and_restored_per_rank(ddp):
    out, ranks = ddp
    ck = torch.load(out / "last.pt", weights_only=True)
    states = ck["rng"]["ranks"]
    assert len(states) == 2 and ck["world_size"] == 2
    assert not torch.equal(states[0]["torch"], states[1]["torch"])  # per-rank noise and dropout streams
    assert states[0]["python"] != states[1]["python"]
    assert all(r["restored_own_state"] for r in ranks)


def test_two_rank_teacher_cache_equals_the_single_process_one(ddp, toy, tmp_path):
    out, _ = ddp
    one = Trainer(TrainConfig(**_cfg(toy, tmp_path / "one", workers=0)))
    assert one.batch_size == 8  # --global-batch 8 in one process
    one._prepare_caches()  # creates the cache's folder
    for split in ("train", "val"):
        with h5py.File(out / f"teacher-{split}.h5", "r") as a, h5py.File(tmp_path / "one" / f"teacher-{split}.h5", "r") as b:
            assert list(a["keys"][:]) == list(b["keys"][:]) and len(a["keys"]) == {"train": 21, "val": 7}[split]
            np.testing.assert_allclose(a["logits"][:], b["logits"][:], rtol=1e-5, atol=1e-6)
            assert json.loads(a.attrs["meta"]) == json.loads(b.attrs["meta"])
            assert a["logits"].chunks is None  # contiguous: memory-mapped by every reader
        assert one.caches[split].mapped
    one.close()


def test_two_rank_validation_equals_the_single_process_one(ddp, toy, tmp_path):
    out, _ = ddp
    first = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == -1 and first["val_samples"] == 7  # the initial model, on both ranks' shares
    one = Trainer(TrainConfig(**_cfg(toy, tmp_path / "one", workers=0)))
    one._prepare_caches()
    va = one._run_epoch("val", train=False)
    one.close()
    assert va["samples"] == 7
    assert va["loss"] == pytest.approx(first["val_loss"], rel=1e-5, abs=1e-6)
    assert va["top1_pct"] == pytest.approx(first["val_top1_pct"])


def test_resume_in_one_process_from_a_two_rank_checkpoint(ddp, toy, tmp_path, caplog):
    out, _ = ddp
    run = tmp_path / "run"
    shutil.copytree(out, run)
    with caplog.at_level(logging.INFO, logger="lossyvision.train.classifier"):
        summary = train(TrainConfig(**_cfg(toy, run, epochs=2, resume=True, workers=0)))
    assert summary["epochs"] == 2 and summary["world_size"] == 1 and summary["per_process_batch"] == 8
    assert "the checkpoint holds RNG states for 2 rank(s) and this run has 1: re-seeded each rank" in caplog.text
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["epoch"] == 2 and len(ck["rng"]["ranks"]) == 1


def test_resume_in_two_processes_from_a_one_process_checkpoint(ddp):
    out, ranks = ddp
    one = out.parent / "one"
    for rank, r in enumerate(ranks):
        res = r["resumed_one"]
        assert (res["epochs"], res["world_size"], res["per_process_batch"]) == (2, 2, 4)
        # each rank re-seeded from the seed (3), the epoch it resumes at (1) and its rank; rank 0 says so
        seed = distributed.per_rank_seed(3 + 7919 * 1, rank)
        assert res["lines"] == [["INFO" if rank == 0 else "DEBUG",
                                 "resume: the checkpoint holds RNG states for 1 rank(s) and this run has 2: re-seeded "
                                 f"each rank from seed 3, epoch 1 and its rank (rank {rank}: {seed})"]]
    ck = torch.load(one / "last.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["world_size"] == 2 and ck["batch_size"] == 4
    states = ck["rng"]["ranks"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    records = [json.loads(line) for line in (one / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [-1, 0, 1]  # the 1-process run's, then the resumed epoch
    assert records[-1]["train_samples"] == 16 and records[-1]["val_samples"] == 7  # 2 ranks x 2 batches x 4
    assert json.loads((one / "summary.json").read_text())["world_size"] == 2


def test_a_bad_timeout_variable_is_one_line(toy, tmp_path, monkeypatch):
    from lossyvision.cli.classifier import train_expert

    monkeypatch.setenv("LOSSYVISION_DIST_TIMEOUT_S", "half an hour")
    res = CliRunner().invoke(train_expert, ["--shards", str(toy), "--variant", "jpeg-q10", "--out", str(tmp_path / "r"),
                                            "--model", "small_cnn", "--epochs", "1", "-b", "8", "--workers", "0",
                                            "--device", "cpu", "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "LOSSYVISION_DIST_TIMEOUT_S must be a number of seconds, got 'half an hour'" in lines[0]
    assert not (tmp_path / "r").exists()


def _small_teacher():
    """A seeded small_cnn teacher for 4 classes, its model spec, and the cache's mean and std."""
    torch.manual_seed(0)
    from lossyvision.train.models import create_model

    teacher = create_model("small_cnn", num_classes=4).eval()
    return teacher, {"name": "small_cnn", "weights": None, "num_classes": 4}, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_an_older_cache_format_is_rebuilt_with_a_log_line(toy, tmp_path, caplog):
    teacher, spec, mean, std = _small_teacher()
    path = tmp_path / "t.h5"
    first = tc.get_or_build(path, teacher, spec, toy / "val" / "orig", mean, std, batch_size=3)
    with h5py.File(path, "r+") as f:  # as format 2 wrote it: the same fields, another format
        meta = json.loads(f.attrs["meta"])
        f.attrs["meta"] = json.dumps({**meta, "format": "lossyvision-teacher-cache/2"})
    with caplog.at_level(logging.INFO, logger="lossyvision.train.teacher_cache"):
        again = tc.get_or_build(path, teacher, spec, toy / "val" / "orig", mean, std, batch_size=4)
    assert "has format lossyvision-teacher-cache/2" in caplog.text and "rebuilding it" in caplog.text
    assert json.loads(h5py.File(path, "r").attrs["meta"])["format"] == tc.FORMAT
    keys = sorted(first.index)
    assert torch.allclose(first.lookup(keys), again.lookup(keys), atol=1e-6)
    with pytest.raises(KeyError, match="not in the teacher cache"):
        again.lookup(["no/such/key"])


# holds an HDF5 file open for writing, with HDF5's (default) file lock, until its stdin closes
HOLD_FOR_WRITING = """
import sys, h5py
f = h5py.File(sys.argv[1], "r+")
print("holding", flush=True)
sys.stdin.read()
f.close()
"""


def test_the_cache_opens_without_a_file_lock(toy, tmp_path, monkeypatch):
    """Readers take no HDF5 lock (locking=False): they open a cache whose lock they could not get,
    here because another process holds it for writing; on NFS/Lustre without lock support no lock
    can be had at all."""
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)  # the library's default: lock
    teacher, spec, mean, std = _small_teacher()
    path = tmp_path / "t.h5"
    built = tc.get_or_build(path, teacher, spec, toy / "val" / "orig", mean, std, batch_size=4)
    keys = sorted(built.index)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FOR_WRITING, str(path)], env=dict(os.environ),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(OSError, match="unable to lock file"):  # what a locking reader gets
            h5py.File(path, "r")
        # get_or_build reads the meta, then open_cache maps the logits: neither asks for the lock
        again = tc.get_or_build(path, teacher, spec, toy / "val" / "orig", mean, std, batch_size=4)
        assert again.mapped and sorted(again.index) == keys
        assert torch.equal(again.lookup(keys), built.lookup(keys))
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
