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
        if m is not None:
            rows.append(variant_row(m))
    order = {"lossless": 0}
    rows.sort(key=lambda r: (r["dataset"], r["split"], order.get(r["codec"], 1), r["codec"], -(r["bpp"] or 0)))
    return rows


def _parent(path: str) -> str:
    return posixpath.dirname(path) if storage.is_remote(path) else os.path.dirname(path)


def load_results(paths: list[str]) -> list[dict]:
    """Accuracy results (JSON lists of rows with 'variant' and metric columns) to join onto the table."""
    out = []
    for p in paths:
        data = json.loads(storage.read_text(p))
        out.extend(data if isinstance(data, list) else data.get("results", data.get("rows", [])))
    return out
