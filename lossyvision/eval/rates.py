"""Rate statistics per variant, from the manifests that prepare-shards wrote, and the accuracy
results (eval-classifier, eval-segmentation) that the rate report joins onto them.

Accuracies and mIoU are percent, named ``*_pct`` (``top1_pct``, ``miou_pct``, ...).
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath

from .. import storage
from ..codecs import CodecError, parse_spec
from ..pipelines.shards import LEGACY_MANIFEST, MANIFEST, load_manifest

log = logging.getLogger(__name__)

COLUMNS = [
    "dataset", "split", "variant", "codec", "q", "target_bpp", "mean_bpp_target", "restored", "source_variant", "crop", "images", "failures", "bytes_per_img", "bpp",
    "psnr", "ssim", "ms_ssim", "ms_ssim_db", "enc_ms", "dec_ms", "complete",
]  # fmt: skip
#: accuracy columns a results file can bring, in table order (all percent)
ACCURACY_COLUMNS = ["top1_pct", "top5_pct", "miou_pct", "miou_small_pct", "miou_big_pct"]
#: the other columns of a results row that the report keeps
RESULT_LABELS = ["recipe", "model", "configuration", "train_variant", "test_variant", "samples"]


class ResultsError(ValueError):
    """A --results file that is not an accuracy results file (eval-classifier's or eval-segmentation's results.json)."""


def find_manifests(root: str) -> list[str]:
    """The manifest of every variant under ``root`` (a shard root, a dataset/split folder or one variant;
    a path or URL): its _manifest.json, or the legacy manifest.json of a folder that has only that."""
    for name in (MANIFEST, LEGACY_MANIFEST):
        if storage.isfile(storage.join(root, name)):
            return [storage.join(root, name)]
    found: dict[str, str] = {}
    for rel, _ in storage.walk_files(root, (MANIFEST, LEGACY_MANIFEST)):
        if _is_manifest(rel):
            folder, name = posixpath.split(rel.replace(os.sep, "/"))
            if name == MANIFEST or folder not in found:
                found[folder] = rel
    return sorted(storage.join(root, rel) for rel in found.values())


def _is_manifest(rel: str) -> bool:
    # walk_files matches lower-cased name endings; glob matched the exact name and skipped hidden folders
    parts = rel.replace(os.sep, "/").split("/")
    return parts[-1] in (MANIFEST, LEGACY_MANIFEST) and not any(p.startswith(".") for p in parts[:-1])


def _codec_of(info: dict | None, variant: str | None) -> tuple[str, object, float | None] | None:
    """(codec, q, per-image target bpp) from a manifest's codec block, else from a variant name."""
    spec = (info or {}).get("spec") or variant
    if not spec:
        return None
    try:
        codec, q, target, _ = parse_spec(spec)
    except CodecError:
        return ((info or {}).get("name") or "?", None, None) if info else None
    return codec, q, target


def variant_row(m: dict) -> dict:
    """One table row (paper 1 Table I columns plus MS-SSIM, timings and failures). A restored
    variant (restore-shards: codec null, a ``restored_from`` block) carries its source's codec and
    parameter with ``restored`` true: its rate is the source bitstream's."""
    means = m.get("means") or {}
    source = m.get("restored_from") if isinstance(m.get("restored_from"), dict) else None
    found = _codec_of(m.get("codec"), None) if m.get("codec") else \
        _codec_of(source.get("codec"), source.get("variant")) if source else None
    codec, q, target = found or ("lossless", None, None)
    return {
        "dataset": m["dataset"],
        "split": m["split"],
        "variant": m["variant"],
        "codec": codec,
        "q": q,
        "target_bpp": target,
        "mean_bpp_target": (m.get("rate_target") or {}).get("mean_bpp") if isinstance(m.get("rate_target"), dict) else None,
        "restored": source is not None,
        "source_variant": source.get("variant") if source else None,
        "crop": (m.get("crop") or {}).get("name") if isinstance(m.get("crop"), dict) else m.get("crop"),
        "images": m.get("num_samples", 0),
        "failures": m.get("num_failures", 0),
        "bytes_per_img": means.get("bytes"),
        "bpp": means.get("bpp"),
        "psnr": means.get("psnr"),
        "ssim": means.get("ssim"),
        "ms_ssim": means.get("ms_ssim"),
        "ms_ssim_db": ms_ssim_db(means.get("ms_ssim")),
        "enc_ms": means.get("enc_ms"),
        "dec_ms": means.get("dec_ms"),
        "complete": bool(m.get("complete")),
    }


def ms_ssim_db(v: float | None) -> float | None:
    """MS-SSIM in dB as CompressAI plots it, -10 log10(1 - MS-SSIM); None when missing or exactly 1."""
    if v is None or not math.isfinite(v) or v >= 1:
        return None
    return -10 * math.log10(1 - v)


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
    rows.sort(key=lambda r: (r["dataset"], r["split"], order.get(r["codec"], 1), r["codec"], r["restored"], -(r["bpp"] or 0)))
    return rows


def _parent(path: str) -> str:
    return posixpath.dirname(path) if storage.is_remote(path) else os.path.dirname(path)


def parse_results_arg(arg: str) -> tuple[str | None, str]:
    """``[LABEL=]FILE`` -> (LABEL or None, FILE); a FILE whose own name holds '=' stays whole."""
    label, sep, path = arg.partition("=")
    if not sep or not label or "/" in label or os.sep in label or (os.path.exists(arg) and not os.path.exists(path)):
        return None, arg
    return label, path


def _rows_of(data: object) -> list | None:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if "configuration" in data:  # one eval-segmentation record (OUT/results/*.json)
            return [data]
        rows = data.get("results", data.get("rows"))
        return rows if isinstance(rows, list) else None
    return None


def _classification_row(r: dict, label: str | None, fraction: bool) -> dict:
    out = {"variant": r["variant"], "recipe": label or r.get("model") or "model", "model": r.get("model"),
           "samples": r.get("samples")}
    for k in ("top1", "top5"):
        v = r.get(f"{k}_pct", r.get(k))
        if f"{k}_pct" not in r and v is not None and fraction:
            v = 100.0 * v
        out[f"{k}_pct"] = v
    return out


def _segmentation_row(r: dict, label: str | None) -> dict:
    config = r["configuration"]
    # the curve's rate is the compressed side's (training set first), as eval-segmentation's bpp
    side = r["train_variant"] if config[0] != "O" else r["test_variant"]
    out = {"variant": side.split("+", 1)[0] if side.endswith("+restored") else side,
           "recipe": f"{label}:{config}" if label else config, "configuration": config,
           "train_variant": r["train_variant"], "test_variant": r["test_variant"], "samples": r.get("images")}
    for new, old in (("miou_pct", "miou"), ("miou_small_pct", "small"), ("miou_big_pct", "big")):
        out[new] = r.get(new, r.get(old))
    return out


def load_results(paths: list[str]) -> list[dict]:
    """Accuracy results to join onto the rate table, one row per (variant, recipe), in percent.

    Each path is ``[LABEL=]FILE``: FILE is eval-classifier's JSON (rows with 'variant' and
    'top1_pct'), eval-segmentation's results.json or one of its OUT/results/*.json records. LABEL
    names the curve (the recipe) its rows belong to; give the same LABEL to several files (one expert
    model per variant, say) to make one curve of them. Without it, a classifier row's curve is its
    'model' and a segmentation row's its configuration (CO, CC, RO, ...). Files of the previous
    release (keys 'top1'/'top5' as fractions, 'miou'/'small'/'big' as percent) are read too, for one
    release. ResultsError names a file that is none of these."""
    out = []
    for arg in paths:
        label, p = parse_results_arg(arg)
        try:
            data = json.loads(storage.read_text(p))
        except (UnicodeDecodeError, ValueError) as e:
            raise ResultsError(f"--results {p} is not valid JSON ({e}); pass the results.json of eval-classifier "
                               "or eval-segmentation") from None
        rows = _rows_of(data)
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            rows = None
        elif all(isinstance(r.get("configuration"), str) and isinstance(r.get("train_variant"), str)
                 and isinstance(r.get("test_variant"), str) for r in rows):
            out.extend(_segmentation_row(r, label) for r in rows)
            continue
        elif all(isinstance(r.get("variant"), str) and any(k in r for k in ("top1_pct", "top5_pct", "top1", "top5"))
                 for r in rows):
            old = [r[k] for r in rows for k in ("top1", "top5") if f"{k}_pct" not in r and r.get(k) is not None]
            if old:
                log.warning("%s: keys 'top1'/'top5' are the previous release's (read for one more release); "
                            "rerun eval-classifier for top1_pct/top5_pct", p)
            # the previous eval-classifier wrote fractions; a value above 1 can only be a percentage
            fraction = bool(old) and max(old) <= 1
            out.extend(_classification_row(r, label, fraction) for r in rows)
            continue
        raise ResultsError(f"--results {p} is not an accuracy results file (rows with 'variant' and 'top1_pct', or "
                           "rows with 'configuration'); pass the results.json of eval-classifier or eval-segmentation")
    return out
