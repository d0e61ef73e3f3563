"""Rate statistics per variant, from the manifests that prepare-shards wrote."""

from __future__ import annotations

import json
import os
import posixpath

from .. import storage
from ..codecs import CodecError, parse_spec
from ..pipelines.shards import MANIFEST, load_manifest

COLUMNS = [
    "dataset", "split", "variant", "codec", "q", "target_bpp", "images", "failures", "bytes_per_img", "bpp",
    "psnr", "ssim", "ms_ssim", "enc_ms", "dec_ms", "complete",
]  # fmt: skip


class ResultsError(ValueError):
    """A --results file that is not an accuracy results file (eval-classifier --json / eval-matrix)."""


def find_manifests(root: str) -> list[str]:
    """Every manifest.json under ``root`` (a shard root, a dataset/split folder or one variant; a path or URL)."""
    if storage.isfile(storage.join(root, MANIFEST)):
        return [storage.join(root, MANIFEST)]
    return sorted(storage.join(root, rel) for rel, _ in storage.walk_files(root, (MANIFEST,)) if _is_manifest(rel))


def _is_manifest(rel: str) -> bool:
    # walk_files matches lower-cased name endings; glob matched the exact name and skipped hidden folders
    parts = rel.replace(os.sep, "/").split("/")
    return parts[-1] == MANIFEST and not any(p.startswith(".") for p in parts[:-1])


def variant_row(m: dict) -> dict:
    """One table row (paper 1 Table I columns plus MS-SSIM, timings and failures)."""
    means = m.get("means") or {}
    codec, q, target = "-", None, None
    if m.get("codec"):
        try:
            codec, q, target, _ = parse_spec(m["codec"]["spec"])
        except CodecError:
            codec = m["codec"].get("name", "?")
    return {
        "dataset": m["dataset"],
        "split": m["split"],
        "variant": m["variant"],
        "codec": codec if m.get("codec") else "lossless",
        "q": q,
        "target_bpp": target,
        "images": m.get("num_samples", 0),
        "failures": m.get("num_failures", 0),
        "bytes_per_img": means.get("bytes"),
        "bpp": means.get("bpp"),
        "psnr": means.get("psnr"),
        "ssim": means.get("ssim"),
        "ms_ssim": means.get("ms_ssim"),
        "enc_ms": means.get("enc_ms"),
        "dec_ms": means.get("dec_ms"),
        "complete": bool(m.get("complete")),
    }


def rate_table(root: str) -> list[dict]:
    """Rows for every variant under ``root``, ordered by dataset, split, codec, then rate (high to low)."""
    rows = []
    for p in find_manifests(root):
        m = load_manifest(_parent(p))
        if m is None:
            continue
        try:
            rows.append(variant_row(m))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{p}: not a complete lossyvision manifest ({type(e).__name__}: {e}); rebuild the "
                             "variant with prepare-shards") from None
    order = {"lossless": 0}
    rows.sort(key=lambda r: (r["dataset"], r["split"], order.get(r["codec"], 1), r["codec"], -(r["bpp"] or 0)))
    return rows


def _parent(path: str) -> str:
    return posixpath.dirname(path) if storage.is_remote(path) else os.path.dirname(path)


def load_results(paths: list[str]) -> list[dict]:
    """Accuracy results (JSON lists of rows with 'variant' and metric columns) to join onto the table;
    ResultsError naming the file when one is not such a file."""
    out = []
    for p in paths:
        try:
            data = json.loads(storage.read_text(p))
        except (UnicodeDecodeError, ValueError) as e:
            raise ResultsError(f"--results {p} is not valid JSON ({e}); pass the --json of eval-classifier") from None
        rows = data if isinstance(data, list) else data.get("results", data.get("rows")) if isinstance(data, dict) else None
        if not isinstance(rows, list) or not rows or not all(
                isinstance(r, dict) and isinstance(r.get("variant"), str) and ("top1" in r or "top5" in r) for r in rows):
            raise ResultsError(f"--results {p} is not an accuracy results file (rows with 'variant' and 'top1'); "
                               "pass the --json of eval-classifier")
        out.extend(rows)
    return out
