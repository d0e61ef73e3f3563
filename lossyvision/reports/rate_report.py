"""The rate report: one row per variant, as Markdown, CSV, JSON and a rate-distortion plot."""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field

from .. import storage
from ..eval.rates import COLUMNS, load_results, rate_table
from .plots import rate_accuracy_plot, rd_plot
from .tables import markdown, write_csv, write_json

log = logging.getLogger(__name__)

SHOWN = ["dataset", "split", "variant", "codec", "q", "images", "failures", "bytes_per_img", "bpp", "psnr", "ssim", "ms_ssim", "enc_ms", "dec_ms"]


@dataclass
class RateReport:
    rows: list[dict]
    markdown: str
    files: dict[str, str] = field(default_factory=dict)


def rate_report(root: str, out: str | None = None, results: list[str] | None = None, plot: bool = True) -> RateReport:
    """Build the report for every variant under ``root`` (a path or URL); files go to ``out`` (see default_out)."""
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
    out = out or default_out(root)
    files = {"csv": os.path.join(out, "rates.csv"), "json": os.path.join(out, "rates.json")}
    try:
        _write(rows, columns, out, files, plot, bool(results))
    except OSError as e:  # a read-only or full --out: one line naming the file and the fix
        raise type(e)(e.errno, f"{e.strerror or e}; pass a writable --out", e.filename or out) from None
    return RateReport(rows, markdown(rows, shown), files)


def _write(rows: list[dict], columns: list[str], out: str, files: dict, plot: bool, results: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(20, "not a folder", out)
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


def default_out(root: str) -> str:
    """ROOT/report for a local root; for a URL root, a local ./report-<last path component>."""
    if not storage.is_remote(root):
        return os.path.join(storage.local_path(root), "report")
    # the report writers (CSV, JSON, matplotlib) need a local folder
    out = os.path.join(".", f"report-{posixpath.basename(root.rstrip('/')) or 'root'}")
    log.info("%s is not a local folder: writing the report to %s", root, out)
    return out
