"""The rate report: one row per variant, as Markdown, CSV, JSON and a rate-distortion plot."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..eval.rates import COLUMNS, load_results, rate_table
from .plots import rate_accuracy_plot, rd_plot
from .tables import markdown, write_csv, write_json

SHOWN = ["dataset", "split", "variant", "codec", "q", "images", "failures", "bytes_per_img", "bpp", "psnr", "ssim", "ms_ssim", "enc_ms", "dec_ms"]


@dataclass
class RateReport:
    rows: list[dict]
    markdown: str
    files: dict[str, str] = field(default_factory=dict)


def rate_report(root: str, out: str | None = None, results: list[str] | None = None, plot: bool = True) -> RateReport:
    """Build the report for every variant under ``root``; files go to ``out`` (default ROOT/report)."""
    rows = rate_table(root)
    if not rows:
        raise FileNotFoundError(f"no manifest.json under {root}; run prepare-shards first")
    columns = list(COLUMNS)
    shown = list(SHOWN)
    if results:
        acc = load_results(results)
        by_variant: dict[str, list[dict]] = {}
        for a in acc:
            by_variant.setdefault(a["variant"], []).append(a)
        joined = []
        for r in rows:
            for a in by_variant.get(r["variant"], [None]):
                joined.append({**r, **({k: v for k, v in a.items() if k not in r} if a else {})})
        rows = joined
        extra = [c for c in ("model", "top1", "top5") if any(c in r for r in rows)]
        columns += extra
        shown += extra
    out = out or os.path.join(root, "report")
    files = {"csv": os.path.join(out, "rates.csv"), "json": os.path.join(out, "rates.json")}
    write_csv(rows, columns, files["csv"])
    write_json(rows, files["json"])
    if plot:
        p = rd_plot(rows, os.path.join(out, "rate_distortion.png"))
        if p:
            files["rd_plot"] = p
        if results:
            p = rate_accuracy_plot(rows, os.path.join(out, "rate_accuracy.png"))
            if p:
                files["rate_accuracy_plot"] = p
    return RateReport(rows, markdown(rows, shown), files)
