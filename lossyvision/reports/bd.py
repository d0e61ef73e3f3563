"""Bjøntegaard deltas between rate curves: codec vs codec, and recipe vs recipe on one codec.

BD-rate is the mean difference of log-rate at equal quality over the quality range both curves
cover, as a percentage: -20 means the test curve needs 20 % fewer bits for the same PSNR (or
top-1). BD-quality is the mean quality difference at equal rate over the common log-rate range:
BD-PSNR and BD-MS-SSIM in dB, BD-accuracy and BD-mIoU in percentage points.

The deltas come from the `bjontegaard` package (FAU-LMS, maintained; its PCHIP matches the JCT-VC/
JVET common-test-condition spreadsheets to 10 decimals). The default interpolation is ``pchip``,
the piecewise cubic of those spreadsheets; MPEG VCM/FCM results go through such a CTC spreadsheet
too (CompressAI-Vision computes no BD in Python: ``scripts/metrics/gen_mpeg_cttc_csv.py`` writes the
sheet's CSV, accuracy in %). ``akima`` and the classic VCEG-M33 third-order fit ``cubic`` can be
chosen. PCHIP and Akima work from 2 points per curve (2
points: a straight line); ``cubic`` needs 4. A delta that cannot be computed is NaN (JSON null)
with the reason in ``note``: too few points, no overlap, or (BD-rate only) a quality that does not
rise with rate, since rate is then no function of quality.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable

from .curves import Curve, base_family, curves, family, groups, recipes

METHODS = ("pchip", "akima", "cubic")
DEFAULT_METHOD = "pchip"
MIN_POINTS = {"pchip": 2, "akima": 2, "cubic": 4}
#: quality metric -> (name in the table, unit of its delta)
METRICS = {"psnr": ("PSNR", "dB"), "ms_ssim_db": ("MS-SSIM", "dB"), "top1_pct": ("top-1", "points"),
           "top5_pct": ("top-5", "points"), "miou_pct": ("mIoU", "points")}
IMAGE_METRICS = ("psnr", "ms_ssim_db")
TASK_METRICS = ("top1_pct", "top5_pct", "miou_pct")
COLUMNS = ["dataset", "split", "comparison", "metric", "fixed", "reference", "test", "reference_points", "test_points",
           "bd_rate_pct", "bd_quality", "quality_unit", "method", "note"]
# below this share of the union range, a delta rests on a small part of either curve (the package's threshold)
MIN_OVERLAP = 0.75


class BDReferenceError(ValueError):
    """A --bd-reference that names no codec and no recipe of the report."""


def _overlap(a: list[float], b: list[float]) -> float:
    lo, hi = max(min(a), min(b)), min(max(a), max(b))
    span = max(max(a), max(b)) - min(min(a), min(b))
    return max(hi - lo, 0.0) / span if span > 0 else 0.0


def _rising(c: Curve) -> bool:
    return all(b > a for a, b in zip(c.values, c.values[1:]))


def bd_pair(ref: Curve, test: Curve, method: str = DEFAULT_METHOD) -> tuple[float, float, str]:
    """(BD-rate %, BD-quality, note) of ``test`` against ``ref``; NaN with the reason in the note."""
    import bjontegaard as bd

    if method not in METHODS:
        raise ValueError(f"BD method {method!r} is not one of {', '.join(METHODS)}")
    nan = float("nan")
    need = MIN_POINTS[method]
    if min(len(ref), len(test)) < need:
        return nan, nan, f"{method} needs {need} points per curve; have {len(ref)} and {len(test)}"
    notes = []
    rate, quality = nan, nan
    # bd_rate interpolates log-rate over quality: both curves must rise with rate (they are sorted by rate)
    if not (_rising(ref) and _rising(test)):
        which = " and ".join(n for n, c in (("reference", ref), ("test", test)) if not _rising(c))
        notes.append(f"BD-rate: {which} quality does not rise with rate")
    elif (ov := _overlap(ref.values, test.values)) == 0:
        notes.append("BD-rate: quality ranges do not overlap")
    else:
        if ov < MIN_OVERLAP:
            notes.append(f"BD-rate over {100 * ov:.0f} % of the quality range")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overlap is reported above; polyfit's conditioning is the method's
            rate = float(bd.bd_rate(ref.rates, ref.values, test.rates, test.values, method=method,
                                    require_matching_points=False, min_overlap=0))
    lr, lt = [math.log10(x) for x in ref.rates], [math.log10(x) for x in test.rates]
    if len(set(ref.rates)) < len(ref) or len(set(test.rates)) < len(test):
        notes.append("BD-quality: two points share one rate")
    elif (ov := _overlap(lr, lt)) == 0:
        notes.append("BD-quality: rate ranges do not overlap")
    else:
        if ov < MIN_OVERLAP:
            notes.append(f"BD-quality over {100 * ov:.0f} % of the log-rate range")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quality = float(bd.bd_psnr(ref.rates, ref.values, test.rates, test.values, method=method,
                                       require_matching_points=False, min_overlap=0))
    return rate, quality, "; ".join(notes)


def _pick(available: list[str], wanted: Iterable[str], default: str | None) -> str | None:
    for w in wanted:
        if w in available:
            return w
    if default in available:
        return default
    return available[0] if available else None


def bd_table(rows: list[dict], references: Iterable[str] = (), method: str = DEFAULT_METHOD) -> list[dict]:
    """Every BD comparison the rows support, as table rows (see COLUMNS).

    Codec vs codec: each codec family's curve against the reference codec (a ``references`` entry
    naming a family, else jpeg when present, else the first family) on PSNR and MS-SSIM (dB), and on
    each accuracy metric per recipe. Recipe vs recipe: on each codec with several recipes, each
    recipe against the reference recipe (a ``references`` entry naming a recipe, else the first
    results file's). Restoration: each restored family ('bpg+restored') against its codec ('bpg')
    where both curves exist, on the same metrics."""
    references = list(references)
    all_families = sorted({family(r) for r in rows if r.get("codec") != "lossless"})
    all_recipes = recipes(rows)
    unknown = [x for x in references if x not in all_families and x not in all_recipes]
    if unknown:
        raise BDReferenceError(f"--bd-reference {unknown[0]!r} names no codec and no recipe here; codecs: "
                               f"{', '.join(all_families) or 'none'}; recipes: {', '.join(all_recipes) or 'none'}")
    out = []
    for g in groups(rows):
        base = {"dataset": g.dataset, "split": g.split, "method": method}
        for metric in (*IMAGE_METRICS, *TASK_METRICS):
            for recipe in ([None] if metric in IMAGE_METRICS else recipes(g.rows)):
                cs = curves(g.rows, metric, recipe=recipe)
                ref = _pick(sorted(cs), references, "jpeg")
                fixed = "" if recipe is None else f"recipe={recipe}"
                for label in sorted(cs):
                    if label == ref or (label != base_family(label) and base_family(label) == ref):
                        continue  # a restored family against its own codec is the restoration row below
                    out.append(_row(base, "codec", metric, fixed, cs[ref], cs[label], method))
                for label in sorted(cs):
                    if label != base_family(label) and base_family(label) in cs:
                        out.append(_row(base, "restoration", metric, fixed, cs[base_family(label)], cs[label], method))
        for metric in TASK_METRICS:
            rs = recipes([r for r in g.rows if r.get(metric) is not None])
            if len(rs) < 2:
                continue
            for fam in sorted({family(r) for r in g.rows if r.get("codec") != "lossless"}):
                cs = curves([r for r in g.rows if family(r) == fam], metric, key=lambda r: r["recipe"])
                present = [x for x in rs if x in cs]
                ref = _pick(present, references, present[0] if present else None)
                for label in present:
                    if label != ref:
                        out.append(_row(base, "recipe", metric, f"codec={fam}", cs[ref], cs[label], method))
    return out


def _row(base: dict, comparison: str, metric: str, fixed: str, ref: Curve, test: Curve, method: str) -> dict:
    rate, quality, note = bd_pair(ref, test, method)
    return {**base, "comparison": comparison, "metric": metric, "fixed": fixed, "reference": ref.label,
            "test": test.label, "reference_points": len(ref), "test_points": len(test),
            "bd_rate_pct": None if math.isnan(rate) else rate, "bd_quality": None if math.isnan(quality) else quality,
            "quality_unit": METRICS[metric][1], "method": method, "note": note}


def bd_markdown(bd_rows: list[dict]) -> str:
    """The BD table as Markdown, with a sentence that says how to read it."""
    if not bd_rows:
        return ""
    method = bd_rows[0]["method"]
    several = len({(r["dataset"], r["split"]) for r in bd_rows}) > 1
    head = (["dataset/split"] if several else []) + ["comparison", "quality", "reference", "test", "points",
                                                      "BD-rate (%)", "BD-quality", "note"]
    lines = [f"Bjøntegaard deltas ({method}): BD-rate = bits the test needs against the reference at equal quality "
             "(negative = fewer bits); BD-quality = its quality gain at equal rate (dB for PSNR and MS-SSIM, "
             "percentage points for accuracy and mIoU).", "",
             "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in bd_rows:
        fixed = f" ({r['fixed'].split('=', 1)[1]})" if r["fixed"] else ""
        cells = ([f"{r['dataset']}/{r['split']}"] if several else []) + [
            r["comparison"] + fixed, METRICS[r["metric"]][0], r["reference"], r["test"],
            f"{r['reference_points']}/{r['test_points']}",
            "-" if r["bd_rate_pct"] is None else f"{r['bd_rate_pct']:+.2f}",
            "-" if r["bd_quality"] is None else f"{r['bd_quality']:+.3f} {r['quality_unit']}",
            r["note"] or ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
