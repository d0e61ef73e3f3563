"""Shared bits of the benchmarks: the median of repeated runs and the machine-readable ratio list.

Every script in tools/bench takes ``--json PATH`` and writes there::

    {"bench": "<script name>", "rows": [{"name": ..., "value": ..., "unit": ..., "target": ..., "ok": ...}]}

``target`` is a short human string (">= 1.8x", "<= 10 %") or null, ``ok`` is true/false when there is a
target and null otherwise. ``make bench`` (tools/bench/summary.py) runs every script and prints one table
of these rows. Timing is never asserted in tests: the smoke tests only check that the rows are there.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable


def median_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, list[float]]:
    """(median wall seconds, all runs) of ``fn()`` called ``repeats`` times."""
    runs = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs


def row(name: str, value: float | None, unit: str = "x", target: str | None = None, ok: bool | None = None) -> dict:
    """One measured number; ``target`` like ">= 1.8" with ``ok`` computed by the caller (or :func:`check`)."""
    return {"name": name, "value": None if value is None else float(value), "unit": unit, "target": target, "ok": ok}


def check(value: float, op: str, bound: float) -> bool:
    return value >= bound if op == ">=" else value <= bound


def target_row(name: str, value: float, op: str, bound: float, unit: str = "x") -> dict:
    """A row with a target, e.g. ``target_row("1 -> 2 workers", 1.85, ">=", 1.8)``."""
    target = f"{op} {bound:g}x" if unit == "x" else f"{op} {bound:g} {unit}"
    return row(name, value, unit, target, check(value, op, bound))


def write_json(path: str | None, bench: str, rows: list[dict], **extra: Any) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump({"bench": bench, "rows": rows, **extra}, f, indent=1)
        f.write("\n")
