"""Fault trials: kill prepare-shards at random moments, rerun it, and check the output is exactly
what an uninterrupted run writes.

Each trial starts ``prepare-shards`` (the real console command, on scikit-image's 18 photos at
384x384, JPEG/J2K/BPG, 9 shards), sends SIGINT, SIGTERM or SIGKILL after a seeded random delay,
checks the exit status (130 after SIGINT/SIGTERM, or killed by the signal if it came while Python
was still starting; killed after SIGKILL; 0 if it had finished),
reruns the same command, and compares every shard byte for byte, and every manifest's shard list,
with a reference run. It also checks that no temporary file is left. With ``--out s3://bucket/x``
(and ``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server) the trials run against object storage.

    python tools/faults/kill_trials.py --trials 30 --seed 0                 # in-process executor
    python tools/faults/kill_trials.py --trials 9 --executor ray --workers 2

Prints a table (per signal: trials, killed mid-job, identical after rerun) and exits 1 if any
trial's output differed. ``--json`` writes the per-trial records; ``--logs DIR`` keeps each
interrupted run's whole stderr, run with PYTHONFAULTHANDLER=1 (a crash prints every thread's stack).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from lossyvision import storage  # noqa: E402

SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "KILL": signal.SIGKILL}
JOB = ["--dataset", "samples", "--shard-size", "2", "--crop", "resize400-center384",
       "--codec", "jpeg", "--quality", "10", "--codec", "j2k", "--quality", "200", "--codec", "bpg", "--quality", "46", "--quiet"]  # fmt: skip
_ENTRY_KEYS = ("name", "index", "count", "sha256", "size", "first_key", "last_key", "sums", "counts", "failures", "source_sig")
_TIMINGS = ("enc_ms", "dec_ms")  # wall-clock measurements: the only numbers that differ between runs


def _entry(e: dict | None) -> dict | None:
    if not e:
        return None
    out = {k: e.get(k) for k in _ENTRY_KEYS}
    out["sums"] = {k: v for k, v in (out["sums"] or {}).items() if k not in _TIMINGS}
    return out


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def command(out: str, executor: str, workers: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "lossyvision.cli", "prepare-shards", *JOB, "--out", out, "--executor", executor]
    return cmd + (["--workers", str(workers)] if workers else [])


def snapshot(out: str) -> dict:
    """Every shard's bytes (as sha256), every manifest's shard list, and any temp file left."""
    base = storage.join(out, "samples", "all")
    shards, manifests, temps = {}, {}, []
    for rel, _ in storage.walk_files(base, ("",)):
        path = storage.join(base, rel)
        if ".tmp-" in rel:
            temps.append(rel)
        elif rel.endswith(".tar"):
            shards[rel] = storage.sha256(path)
        elif rel.endswith("manifest.json"):
            m = json.loads(storage.read_text(path))
            manifests[rel] = {"complete": m["complete"], "num_samples": m["num_samples"],
                              "shards": [_entry(e) for e in m["shards"]]}
    return {"shards": shards, "manifests": manifests, "temps": temps}


def run_trials(root: str, trials: int, seed: int, signals: list[str], executor: str = "local", workers: int | None = None,
               log=print, logs: str | None = None) -> list[dict]:
    """Run the trials under ``root`` (a folder or URL); returns one record per trial. With ``logs``
    (a local folder), each interrupted run's whole stderr goes to ``logs/trial-NNN.stderr``, and the
    commands run with PYTHONFAULTHANDLER=1, so a crash leaves the Python stack of every thread there."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if logs:
        os.makedirs(logs, exist_ok=True)
        env["PYTHONFAULTHANDLER"] = "1"
    ref_out = storage.join(root, "reference")
    t0 = time.perf_counter()
    subprocess.run(command(ref_out, executor, workers), check=True, env=env, capture_output=True)
    duration = time.perf_counter() - t0
    ref = snapshot(ref_out)
    assert not ref["temps"] and all(m["complete"] for m in ref["manifests"].values()), "reference run incomplete"
    log(f"reference run: {duration:.1f} s, {len(ref['shards'])} shard files")
    rng = random.Random(seed)
    records = []
    for i in range(trials):
        name = signals[i % len(signals)]
        delay = rng.uniform(0.3, duration)
        # A run can be faster than the reference (the machine's load varies): one that finished before
        # its signal is tried again in a fresh folder at half the delay, so trials land inside the job.
        for attempt in range(4):
            out = storage.join(root, f"trial-{i:03d}" + (f"-{attempt}" if attempt else ""))
            # SIGINT back to its default in the child: started in the background (nohup, `&` in a
            # script), these trials ignore SIGINT, and a child inheriting that would finish (exit 0)
            p = subprocess.Popen(command(out, executor, workers), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, preexec_fn=_default_sigint)
            time.sleep(delay)
            finished_first = p.poll() is not None
            if not finished_first:
                p.send_signal(SIGNALS[name])
            _, err = p.communicate(timeout=300)
            if not finished_first or attempt == 3:
                break
            delay = max(0.3, delay / 2)
        rc1 = p.returncode
        if logs:
            with open(os.path.join(logs, f"trial-{i:03d}.stderr"), "w") as f:
                f.write(f"# SIG{name} after {delay:.3f} s: exit {rc1}\n{err or ''}")
        # 130: the job's handler ran (cancel, say how to resume); -SIG: the signal came while Python was still starting
        expected = {0} if finished_first else {-SIGNALS[name]} | ({130} if name != "KILL" else set())
        rerun = subprocess.run(command(out, executor, workers), env=env, capture_output=True, text=True, timeout=600)
        snap = snapshot(out)
        identical = snap["shards"] == ref["shards"] and snap["manifests"] == ref["manifests"] and not snap["temps"]
        rec = {"trial": i, "signal": name, "delay_s": round(delay, 3), "killed_mid_job": not finished_first,
               "exit": rc1, "exit_ok": rc1 in expected or (rc1 == 0 and name != "KILL"), "rerun_exit": rerun.returncode,
               "identical": identical and rerun.returncode == 0}
        if not rec["exit_ok"] or not rec["identical"]:
            rec["stderr"] = (err or "")[-800:] + (rerun.stderr or "")[-800:]
        records.append(rec)
        log(f"trial {i:3d} SIG{name:<4} after {delay:4.1f} s: exit {rc1:4d} -> rerun {rerun.returncode}, "
            f"{'identical' if rec['identical'] else 'DIFFERENT'}")
    return records


def table(records: list[dict]) -> str:
    rows = ["| signal | trials | killed mid-job | expected exit | identical after rerun |", "| --- | ---: | ---: | ---: | ---: |"]
    for name in SIGNALS:
        rs = [r for r in records if r["signal"] == name]
        if rs:
            rows.append(f"| SIG{name} | {len(rs)} | {sum(r['killed_mid_job'] for r in rs)} | {sum(r['exit_ok'] for r in rs)} | "
                        f"{sum(r['identical'] for r in rs)} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--signals", default="INT,TERM,KILL", help="comma-separated subset of INT,TERM,KILL")
    ap.add_argument("--executor", choices=["local", "ray"], default="local")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=None, help="folder or URL for the runs (default: a temp folder)")
    ap.add_argument("--json", default=None, help="write the per-trial records here")
    ap.add_argument("--logs", default=None,
                    help="local folder for each interrupted run's whole stderr (runs with PYTHONFAULTHANDLER=1: a crash "
                         "prints every thread's Python stack)")
    a = ap.parse_args()
    signals = [s.strip().upper() for s in a.signals.split(",") if s.strip()]
    bad = [s for s in signals if s not in SIGNALS]
    if bad:
        ap.error(f"unknown signal(s) {bad}; choose from INT, TERM, KILL")
    with tempfile.TemporaryDirectory() as tmp:
        records = run_trials(a.out or tmp, a.trials, a.seed, signals, a.executor, a.workers, logs=a.logs)
    print()
    print(table(records))
    ok = all(r["identical"] and r["exit_ok"] for r in records)
    print(f"\n{sum(r['identical'] for r in records)}/{len(records)} trials identical after rerun")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
