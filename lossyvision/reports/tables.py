"""Write rows (lists of dicts) as Markdown, CSV and JSON that pandas reads back unchanged."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

FORMATS = {"bytes_per_img": "{:.0f}", "bpp": "{:.4f}", "psnr": "{:.2f}", "ssim": "{:.4f}", "ms_ssim": "{:.4f}", "ms_ssim_db": "{:.2f}",
           "enc_ms": "{:.2f}", "dec_ms": "{:.2f}", "top1_pct": "{:.2f}", "top5_pct": "{:.2f}", "miou_pct": "{:.2f}",
           "miou_small_pct": "{:.2f}", "miou_big_pct": "{:.2f}"}


def _cell(k: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return FORMATS.get(k, "{:.4g}").format(v)
    return str(v)


def markdown(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_csv(rows: list[dict], columns: list[str], path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})


def write_json(rows: list[dict], path: str) -> None:
    """A JSON list of records (``pandas.read_json(path)`` reads it as a table)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    with open(path, "w") as f:
        json.dump(clean, f, indent=1)
        f.write("\n")
