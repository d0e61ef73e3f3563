"""Every benchmark in tools/bench, then one table of every number they measure against its target.

    python tools/bench/summary.py [--quick] [--only codecs,train] [--large-code PATH] [--json all.json]

What ``make bench`` runs (``make bench BENCH_ARGS=--quick``). Runs each script as its own process, in
this order: codecs.py, prepare.py, hevc_cli.py, train.py, scale.py, segmentation.py, seg_input.py,
restore.py, each with ``--json`` to a temporary file (scale.py: ``--rows-json``; its ``--json`` writes
its own, fuller structure) in the protocol of tools/bench/common.py. Each script's stdout and stderr
are passed straight through, so its detailed Markdown tables appear as it runs; then one Markdown
table of all the rows:

    | bench | measurement | value | unit | target | ok |

with ok ✓ (target met), ✗ (missed) or – (no target). A missed target is reported, not an error (the
timings vary between runs on a shared machine). A script that is missing, exits non-zero or writes no
rows file gets one row "failed: <its last stderr line>", the others still run, and this exits 1 at
the end. A script may report itself skipped (``"skipped": reason`` in its file, e.g. a missing tool):
one row "skipped: <reason>", not a failure.

--quick passes each script its small, fast arguments (fewer photos, images, repeats; see QUICK) so the
whole run takes a few minutes on a 2-core machine: the numbers are then smoke-level, not the
benchmarks' results. --only runs the named scripts (names without .py) in the same order.
--large-code PATH passes prepare.py another checkout whose large-image peak RSS it measures next to this
one's (e.g. ``git worktree add /tmp/before 05e7f11~1``, the commit before the memory fix). --json
writes every row, each with its "bench", plus the failed scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import common  # noqa: E402  (tools/bench/common.py, next to this script)

ORDER = ["codecs", "prepare", "hevc_cli", "train", "scale", "segmentation", "seg_input", "restore"]
# the flag each script writes its common.py rows with
JSON_FLAG = {"scale": "--rows-json"}
# small, fast arguments per script (from each script's argparse)
QUICK = {
    "codecs": ["--sizes", "224x224", "--photos", "2", "--repeat", "1"],
    "prepare": ["--quick"],
    "hevc_cli": ["--quick"],
    "train": ["--images", "64", "--size", "112", "--batch-size", "16", "--repeats", "1", "--epochs", "1",
              "--steps", "2", "--mix-classes", "8", "--mix-per-class", "16", "--mix-shard-size", "16",
              "--mix-batch", "8"],
    "scale": ["--quick"],
    "segmentation": ["--size", "256x128", "--images", "3", "--encoder", "resnet18", "--gen-width", "16",
                     "--gen-blocks", "2"],
    "seg_input": ["--quick"],
    "restore": ["--quick"],
}
# arguments of a full run that differ from the scripts' defaults
FULL = {"prepare": ["--large"], "segmentation": ["--size", "512x256", "--images", "4"]}


def run_script(name: str, quick: bool, extra: Sequence[str] = ()) -> tuple[list[dict], str | None, str | None, float]:
    """Run tools/bench/<name>.py with ``extra`` arguments, its output passed through; (rows, failure,
    skipped reason, seconds)."""
    script = HERE / f"{name}.py"
    if not script.exists():
        return [], f"no such script: tools/bench/{name}.py", None, 0.0
    fd, tmp = tempfile.mkstemp(prefix=f"lv-bench-{name}-", suffix=".json")
    os.close(fd)
    os.unlink(tmp)  # the script creates it: a file left behind means the script wrote it
    cmd = [sys.executable, str(script), *(QUICK[name] if quick else FULL.get(name, [])), *extra,
           JSON_FLAG.get(name, "--json"), tmp]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    print(f"\n## tools/bench/{name}.py{' (quick)' if quick else ''}\n", flush=True)
    t = time.perf_counter()
    last = ""
    try:
        # stdout goes straight to ours; stderr is echoed line by line, keeping its last line for the table
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                last = line.strip()
        rc = proc.wait()
        seconds = time.perf_counter() - t
        if rc != 0:
            return [], f"exit {rc}: {last}" if last else f"exit {rc}", None, seconds
        try:
            with open(tmp) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            return [], f"no rows written ({type(e).__name__}: {e})", None, seconds
        rows = data.get("rows")
        if not isinstance(rows, list):
            return [], "rows file without a list of rows", None, seconds
        return rows, None, data.get("skipped"), seconds
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fmt_value(v) -> str:
    if v is None:
        return "–"
    v = float(v)
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def print_table(results: list[tuple[str, list[dict], str | None, str | None]]) -> None:
    print("| bench | measurement | value | unit | target | ok |")
    print("| --- | --- | ---: | --- | --- | --- |")
    for name, rows, failed, skipped in results:
        if failed:
            print(f"| {name} | {cell('failed: ' + failed)} | – | | | ✗ |")
            continue
        if skipped:
            print(f"| {name} | {cell('skipped: ' + str(skipped))} | – | | | – |")
        for r in rows:
            ok = {True: "✓", False: "✗"}.get(r.get("ok"), "–")
            print(f"| {name} | {cell(r.get('name', '?'))} | {fmt_value(r.get('value'))} | {cell(r.get('unit') or '')} | "
                  f"{cell(r.get('target') or '–')} | {ok} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small, fast arguments for every script (a few minutes)")
    ap.add_argument("--only", default=None, metavar="NAME,...", help=f"run only these, of {','.join(ORDER)}")
    ap.add_argument("--large-code", default=None, metavar="PATH",
                    help="another checkout for prepare.py's large-image peak RSS, measured next to this one's")
    ap.add_argument("--json", default=None, metavar="PATH", help="write every row (with its bench) here")
    args = ap.parse_args()
    if args.large_code and not os.path.isdir(os.path.join(args.large_code, "lossyvision")):
        ap.error(f"--large-code: {args.large_code} is not a lossyvision checkout (no lossyvision/ folder in it)")
    names = ORDER
    if args.only:
        wanted = [n.strip().removesuffix(".py") for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(ORDER))
        if unknown or not wanted:
            ap.error(f"--only: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(ORDER)}")
        names = [n for n in ORDER if n in wanted]

    t0 = time.perf_counter()
    results, took = [], []
    for name in names:
        extra = []
        if name == "prepare" and args.large_code:  # a full run measures large images already
            extra = [*(["--large"] if args.quick else []), "--large-code", args.large_code]
        rows, failed, skipped, seconds = run_script(name, args.quick, extra)
        results.append((name, rows, failed, skipped))
        took.append(f"{name} {seconds:.0f} s")
        print(f"\n({name}: {'failed' if failed else 'done'} in {seconds:.0f} s)", flush=True)

    print(f"\n## Summary{' (quick: smoke-level numbers)' if args.quick else ''}: {', '.join(took)}; "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print_table(results)
    failed = [name for name, _, f, _ in results if f]
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    common.write_json(args.json, "summary", [{"bench": name, **r} for name, rows, _, _ in results for r in rows],
                      failed={name: f for name, _, f, _ in results if f},
                      skipped={name: s for name, _, f, s in results if s and not f}, quick=args.quick)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
