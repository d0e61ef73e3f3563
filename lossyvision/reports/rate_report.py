"""The rate report: one row per variant (Markdown, CSV, JSON), Bjøntegaard deltas between the
curves, CompressAI-format curve files and the rate-distortion / rate-accuracy figures.

Accuracies and mIoU are percent everywhere (``top1_pct``, ``miou_pct``, ...).
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field
from typing import Iterable

from .. import storage
from ..eval.figures import DEFAULT_FORMATS, parse_formats
from ..pipelines.shards import MANIFEST
from ..eval.rates import ACCURACY_COLUMNS, COLUMNS, RESULT_LABELS, load_results, rate_table
from .bd import COLUMNS as BD_COLUMNS, DEFAULT_METHOD, bd_markdown, bd_table
from .compressai_json import write_compressai_json
from .plots import rate_accuracy_plot, rd_plot
from .tables import markdown, write_csv, write_json

log = logging.getLogger(__name__)

SHOWN = ["dataset", "split", "variant", "codec", "q", "images", "failures", "bytes_per_img", "bpp", "psnr", "ssim", "ms_ssim", "enc_ms", "dec_ms"]


@dataclass
class RateReport:
    rows: list[dict]
    markdown: str
    files: dict[str, str] = field(default_factory=dict)
    bd: list[dict] = field(default_factory=list)


def join_results(rows: list[dict], acc: list[dict]) -> list[dict]:
    """Each rate row once per accuracy row of its variant (one per recipe); rows without results stay."""
    by_variant: dict[str, list[dict]] = {}
    for a in acc:
        by_variant.setdefault(a["variant"], []).append(a)
    joined = []
    for r in rows:
        for a in by_variant.get(r["variant"], [None]):
            joined.append({**r, **({k: v for k, v in a.items() if k != "variant" and k not in r} if a else {})})
    return joined


def rate_report(root: str, out: str | None = None, results: list[str] | None = None, plot: bool = True,
                bd_reference: Iterable[str] = (), bd_method: str = DEFAULT_METHOD,
                formats: Iterable[str] = DEFAULT_FORMATS) -> RateReport:
    """Build the report for every variant under ``root`` (a path or URL); files go to ``out`` (see
    default_out). ``results`` are ``[LABEL=]FILE`` accuracy files (see eval.rates.load_results);
    ``bd_reference`` names the reference codec and/or recipe of the BD table (default: jpeg, and the
    first results file's recipe)."""
    formats = parse_formats(list(formats))
    rows = rate_table(root)
    if not rows:
        raise FileNotFoundError(f"no shard manifest ({MANIFEST}) under {root}; run prepare-shards first")
    columns = list(COLUMNS)
    shown = list(SHOWN)
    if any(r.get("restored") for r in rows):  # restore-shards variants: their codec's row, restored yes
        shown.insert(shown.index("q") + 1, "restored")
    if results:
        rows = join_results(rows, load_results(results))
        extra = [c for c in ("recipe", *ACCURACY_COLUMNS) if any(r.get(c) is not None for r in rows)]
        columns += [c for c in RESULT_LABELS if any(c in r for r in rows) and c not in extra] + extra
        columns = list(dict.fromkeys(columns))
        shown += extra
    bd = bd_table(rows, bd_reference, bd_method)
    out = out or default_out(root)
    files = {"csv": os.path.join(out, "rates.csv"), "json": os.path.join(out, "rates.json"),
             "bd_csv": os.path.join(out, "bd_rate.csv"), "bd_json": os.path.join(out, "bd_rate.json"),
             "compressai_json": os.path.join(out, "compressai")}
    try:
        _write(rows, columns, bd, out, files, plot, formats)
    except OSError as e:  # a read-only or full --out: one line naming the file and the fix
        raise type(e)(e.errno, f"{e.strerror or e}; pass a writable --out", e.filename or out) from None
    md = markdown(rows, shown)
    if bd:
        md += "\n\n" + bd_markdown(bd)
    return RateReport(rows, md, files, bd)


def _write(rows: list[dict], columns: list[str], bd: list[dict], out: str, files: dict, plot: bool,
           formats: tuple[str, ...]) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(20, "not a folder", out)
    write_csv(rows, columns, files["csv"])
    write_json([{k: r.get(k) for k in columns} for r in rows], files["json"])
    write_csv(bd, BD_COLUMNS, files["bd_csv"])
    write_json(bd, files["bd_json"])
    write_compressai_json(rows, files["compressai_json"])
    if plot:
        for kind, paths in (("rd_plot", rd_plot(rows, os.path.join(out, "rate_distortion"), formats)),
                            ("rate_accuracy_plot", rate_accuracy_plot(rows, os.path.join(out, "rate_accuracy"), formats))):
            for p in paths:
                files[f"{kind} ({os.path.basename(p)})" if len(paths) > len(formats) else f"{kind}.{p.rsplit('.', 1)[1]}"] = p


def default_out(root: str) -> str:
    """ROOT/report for a local root; for a URL root, a local ./report-<last path component>."""
    if not storage.is_remote(root):
        return os.path.join(storage.local_path(root), "report")
    # the report writers (CSV, JSON, matplotlib) need a local folder
    out = os.path.join(".", f"report-{posixpath.basename(root.rstrip('/')) or 'root'}")
    log.info("%s is not a local folder: writing the report to %s", root, out)
    return out
