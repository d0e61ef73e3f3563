"""Rate curves in CompressAI's results format, so ``python -m compressai.utils.plot -f FILE ...``
draws lossyvision's codecs beside CompressAI's own results (compressai/results/image/*/*.json).

One file per codec family and dataset/split: ``{"name", "description", "results": {"bpp": [...],
"psnr-rgb": [...], "ms-ssim-rgb": [...], ...}}`` with the points in rising rate. PSNR and MS-SSIM
are on RGB as CompressAI computes them (lossyvision.quality); ``compressai.utils.plot -m ms-ssim``
converts MS-SSIM to dB itself. A metric missing at any point (MS-SSIM of images under 161 pixels)
is left out of that file rather than written as null, which the plot cannot read. Times are
seconds per image (``encoding_time``/``decoding_time``, as ``compressai.utils.bench``). With
accuracy results, one more file per codec and recipe carries ``top1_pct`` (or ``miou_pct``), for
``-m top1_pct``.
"""

from __future__ import annotations

import json
import os
import re

from ..eval.rates import ACCURACY_COLUMNS
from .curves import Group, family, groups, is_point, recipes, setting


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-") or "codec"


def _series(rows: list[dict], key: str, scale: float = 1.0) -> list[float] | None:
    vals = [r.get(key) for r in rows]
    if any(not isinstance(v, (int, float)) or v != v for v in vals):
        return None
    return [float(v) * scale for v in vals]


def _points(rows: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for r in rows:
        seen.setdefault(r["variant"], r)
    return sorted(seen.values(), key=lambda r: r["bpp"])


def _describe(g: Group, fam: str, pts: list[dict]) -> str:
    return (f"lossyvision rate-report: {fam} on {g.title()}; settings "
            + ", ".join(setting(r) for r in pts))


def compressai_files(rows: list[dict]) -> dict[str, dict]:
    """File name -> CompressAI results document, for every codec family (and recipe) in ``rows``."""
    out: dict[str, dict] = {}
    for g in groups(rows):
        lossy = [r for r in g.rows if is_point(r)]
        for fam in sorted({family(r) for r in lossy}):
            pts = _points([r for r in lossy if family(r) == fam])
            res: dict[str, list] = {"bpp": [float(r["bpp"]) for r in pts]}
            for key, name, scale in (("psnr", "psnr-rgb", 1.0), ("ms_ssim", "ms-ssim-rgb", 1.0), ("ssim", "ssim-rgb", 1.0),
                                     ("enc_ms", "encoding_time", 1e-3), ("dec_ms", "decoding_time", 1e-3)):
                s = _series(pts, key, scale)
                if s is not None:
                    res[name] = s
            res["q"] = [r.get("q") for r in pts]
            stem = f"{_slug(g.dataset)}-{_slug(g.split)}-{_slug(fam)}"
            out[f"{stem}.json"] = {"name": f"lossyvision {fam}", "description": _describe(g, fam, pts), "results": res}
            for recipe in recipes(lossy):
                rpts = sorted((r for r in lossy if family(r) == fam and r.get("recipe") == recipe), key=lambda r: r["bpp"])
                acc = {k: s for k in ACCURACY_COLUMNS if (s := _series(rpts, k)) is not None}
                if not rpts or not acc:
                    continue
                out[f"{stem}-{_slug(recipe)}.json"] = {
                    "name": f"lossyvision {fam} / {recipe}", "description": _describe(g, fam, rpts) + f"; recipe {recipe}",
                    "results": {"bpp": [float(r["bpp"]) for r in rpts], **acc}}
    return out


def write_compressai_json(rows: list[dict], folder: str) -> list[str]:
    """Write :func:`compressai_files` into ``folder``; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, doc in compressai_files(rows).items():
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        paths.append(path)
    return paths
