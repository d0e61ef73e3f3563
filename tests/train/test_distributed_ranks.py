"""What the ranks do when one of them goes first or fails (issue 15), with 2 gloo processes on the CPU:
`local_rank_zero_first` runs each node's local rank 0 before the node's other ranks, and a failing
rank 0 neither leaves the others waiting nor stops them from trying; a teacher-cache build that fails
on one rank (a corrupt shard only that rank reads) fails on every rank at once with one line, well
inside the process-group timeout."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from .classifier_shards import make_dataset
from .dist_helpers import free_port, spawn_ranks, torchrun_env

from lossyvision.pipelines.stream import ShardError
from lossyvision.train import distributed
from lossyvision.train import teacher_cache as tc

TIMEOUT_S = 60  # the process-group timeout in the ranks: a hang fails the test instead of blocking it
PROMPT_S = 20  # "at once": well below TIMEOUT_S even on a loaded 2-core machine
HOLD_S = 1.0  # how long a body that goes first holds the others back
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _timed(info: distributed.DistInfo, fail: bool) -> dict:
    """Both ranks at a barrier, then one ``local_rank_zero_first`` body each: when it started and
    ended, and the error it raised (``fail``: local rank 0's body raises, as a failed download)."""
    distributed.barrier(info)  # both ranks arrive: a rank that does not wait starts at once
    rec: dict = {"entered": time.time()}
    try:
        with distributed.local_rank_zero_first(info):
            rec["start"] = time.time()
            if info.local_rank == 0:
                time.sleep(HOLD_S)
                if fail:
                    rec["end"] = time.time()
                    raise OSError("could not fetch the weights: no route to host")
            rec["end"] = time.time()
    except OSError as e:
        rec["error"] = str(e)
    rec["left"] = time.time()
    # the ranks are still in step (no barrier left over on either): a collective completes
    rec["sum"] = distributed.all_reduce_sum(torch.ones(1), info).item()
    return rec


def _rank_main(rank: int, port: int, bad_orig: str, reports: str) -> None:
    os.environ.update(torchrun_env(rank, 2, timeout_s=TIMEOUT_S), MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    report: dict = {"info": [info.rank, info.world_size, info.local_rank]}
    try:
        report["one_node"] = _timed(info, fail=False)
        # two nodes of one process each: both ranks are their node's local rank 0
        report["two_nodes"] = _timed(distributed.DistInfo(info.rank, info.world_size, local_rank=0), fail=False)
        report["rank0_fails"] = _timed(info, fail=True)

        from lossyvision.train.models import create_model

        torch.manual_seed(0)
        teacher = create_model("small_cnn", num_classes=4)
        spec = {"name": "small_cnn", "weights": None, "num_classes": 4}
        meta = tc.expected_meta(spec, teacher, bad_orig, MEAN, STD)
        distributed.barrier(info)
        t0 = time.time()
        try:
            tc.build_cache(Path(reports, "teacher.h5"), teacher, bad_orig, meta, batch_size=4, dist_info=info)
            report["cache"] = {"error": None}
        except Exception as e:  # noqa: BLE001 - what each rank raised is the result
            report["cache"] = {"type": type(e).__name__, "error": str(e)}
        report["cache"]["elapsed"] = time.time() - t0
        report["cache"]["sum"] = distributed.all_reduce_sum(torch.ones(1), info).item()
    finally:
        distributed.destroy(info)
    Path(reports, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def bad_orig(tmp_path_factory) -> Path:
    """21 `orig` samples in shards of 6, 6, 6 and 3; the last shard (read by rank 1 only: its
    samples 10-20) has flipped bytes, so its sha256 no longer matches the manifest."""
    root = make_dataset(tmp_path_factory.mktemp("shards"), n_train=21, n_val=1, shard_size=6)
    bad = root / "train" / "bad-orig"
    shutil.copytree(root / "train" / "orig", bad)
    last = sorted(bad.glob("shard-*.tar"))[-1]
    data = bytearray(last.read_bytes())
    for i in range(len(data) - 3000, len(data) - 2900):  # inside the last sample's PNG
        data[i] ^= 0xFF
    last.write_bytes(bytes(data))
    return bad


@pytest.fixture(scope="module")
def ranks(bad_orig, tmp_path_factory) -> tuple[Path, list[dict]]:
    reports = tmp_path_factory.mktemp("reports")
    spawn_ranks(_rank_main, (free_port(), str(bad_orig), str(reports)), world=2, timeout_s=240)
    return reports, [json.loads((reports / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_local_rank_zero_runs_first_then_the_others(ranks):
    _, (r0, r1) = ranks
    assert r0["info"] == [0, 2, 0] and r1["info"] == [1, 2, 1]
    a, b = r0["one_node"], r1["one_node"]
    assert "error" not in a and "error" not in b
    # rank 1 entered with rank 0 but started its body only after rank 0's had finished
    assert abs(a["entered"] - b["entered"]) < HOLD_S / 2
    assert b["start"] >= a["end"] >= a["start"] + HOLD_S
    assert a["sum"] == b["sum"] == 2


@pytest.mark.slow
def test_each_nodes_local_rank_zero_goes_first_at_the_same_time(ranks):
    _, (r0, r1) = ranks
    a, b = r0["two_nodes"], r1["two_nodes"]
    # one process per node: both are their node's local rank 0, neither waits for the other's body
    assert b["start"] < a["end"] and a["start"] < b["end"]
    assert a["sum"] == b["sum"] == 2


@pytest.mark.slow
def test_a_failing_rank_zero_still_lets_the_others_run_the_body(ranks):
    _, (r0, r1) = ranks
    a, b = r0["rank0_fails"], r1["rank0_fails"]
    # rank 0's error reaches its caller, after it released the others (not at the timeout)
    assert a["error"] == "could not fetch the weights: no route to host" and a["left"] - a["entered"] < PROMPT_S
    # rank 1 ran the body itself (it would fetch the weights on its own), after rank 0's failed
    assert "error" not in b and b["start"] >= a["end"] and b["left"] - b["entered"] < PROMPT_S
    assert a["sum"] == b["sum"] == 2  # and the group is still usable


@pytest.mark.slow
def test_a_teacher_cache_build_failing_on_one_rank_fails_every_rank_at_once(ranks):
    reports, (r0, r1) = ranks
    a, b = r0["cache"], r1["cache"]
    # rank 1 read the corrupt shard: its own error, one line naming the shard
    assert b["type"] == ShardError.__name__ and "\n" not in b["error"]
    assert "shard-000003.tar" in b["error"] and "sha256" in b["error"]
    # rank 0's slice was fine: it fails with the one line that points at the other rank's log
    assert a["type"] == "RuntimeError" and a["error"] == "the teacher-cache build failed on 1 of 2 ranks; see their log"
    assert a["elapsed"] < PROMPT_S and b["elapsed"] < PROMPT_S  # not the 60 s timeout
    assert a["sum"] == b["sum"] == 2
    assert not (reports / "teacher.h5").exists() and not (reports / "teacher.h5.tmp").exists()  # no cache
