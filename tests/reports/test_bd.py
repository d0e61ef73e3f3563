"""Bjøntegaard deltas: exact on cases with an analytic answer, equal to VCEG-M33's closed form, and
NaN with a reason where a curve cannot support one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lossyvision.reports.bd import BDReferenceError, bd_markdown, bd_pair, bd_table
from lossyvision.reports.curves import Curve

# x265 rate points (kbps) and PSNR from the bjontegaard package's README: a real, non-linear curve
RATE = [1358.24, 2486.44, 4593.60, 9487.76]
PSNR = [34.851, 36.845, 38.615, 40.037]


def curve(label, rates, values):
    return Curve(label, list(rates), list(values), [str(i) for i in range(len(rates))])


@pytest.mark.parametrize("method", ["pchip", "akima", "cubic"])
@pytest.mark.parametrize("factor", [0.5, 0.8, 1.0, 1.25])
def test_a_curve_shifted_by_a_rate_factor_has_exactly_that_bd_rate(method, factor):
    ref = curve("ref", RATE, PSNR)
    test = curve("test", [factor * r for r in RATE], PSNR)
    rate, quality, note = bd_pair(ref, test, method)
    assert rate == pytest.approx(100 * (factor - 1), abs=1e-9)
    assert note == "" or "over" in note  # the rate overlap shrinks with the factor, the quality one does not
    # and the same curve 0.7 dB higher at every rate has a BD-PSNR of exactly 0.7
    _, quality, _ = bd_pair(ref, curve("up", RATE, [p + 0.7 for p in PSNR]), method)
    assert quality == pytest.approx(0.7, abs=1e-9)


def test_curves_linear_in_log_rate_match_the_integral_by_hand():
    # Q = a + b log10(R): every method interpolates a straight line exactly, so the BD values are the
    # closed-form means over the common range
    a1, b1, a2, b2 = 10.0, 8.0, 14.0, 7.0
    lr1, lr2 = np.linspace(2.8, 4.2, 5), np.linspace(2.9, 4.0, 4)
    ref = curve("ref", 10 ** lr1, a1 + b1 * lr1)
    test = curve("test", 10 ** lr2, a2 + b2 * lr2)
    qlo, qhi = max(ref.values[0], test.values[0]), min(ref.values[-1], test.values[-1])
    qm = (qlo + qhi) / 2  # the log-rate difference is linear in Q: its mean is its value at the midpoint
    want_rate = 100 * (10 ** ((qm - a2) / b2 - (qm - a1) / b1) - 1)
    llo, lhi = max(lr1[0], lr2[0]), min(lr1[-1], lr2[-1])
    want_quality = (a2 - a1) + (b2 - b1) * (llo + lhi) / 2
    for method in ("pchip", "akima", "cubic"):
        rate, quality, _ = bd_pair(ref, test, method)
        assert rate == pytest.approx(want_rate, rel=1e-9) and quality == pytest.approx(want_quality, rel=1e-9)


def vceg_m33(r1, p1, r2, p2):
    """Bjontegaard's VCEG-M33 formulas as published: third-order fits in the natural log of the rate,
    integrated over the common interval; (BD-rate %, BD-PSNR dB)."""
    l1, l2 = np.log(r1), np.log(r2)
    f1, f2 = np.polyint(np.polyfit(l1, p1, 3)), np.polyint(np.polyfit(l2, p2, 3))
    lo, hi = max(l1.min(), l2.min()), min(l1.max(), l2.max())
    dpsnr = ((np.polyval(f2, hi) - np.polyval(f2, lo)) - (np.polyval(f1, hi) - np.polyval(f1, lo))) / (hi - lo)
    g1, g2 = np.polyint(np.polyfit(p1, l1, 3)), np.polyint(np.polyfit(p2, l2, 3))
    lo, hi = max(min(p1), min(p2)), min(max(p1), max(p2))
    drate = ((np.polyval(g2, hi) - np.polyval(g2, lo)) - (np.polyval(g1, hi) - np.polyval(g1, lo))) / (hi - lo)
    return 100 * (math.exp(drate) - 1), dpsnr


def test_cubic_is_vceg_m33():
    r2, p2 = [1356.24, 2451.52, 4469.00, 9787.80], [34.987, 36.970, 38.651, 40.121]
    want_rate, want_psnr = vceg_m33(np.array(RATE), np.array(PSNR), np.array(r2), np.array(p2))
    rate, quality, _ = bd_pair(curve("a", RATE, PSNR), curve("b", r2, p2), "cubic")
    assert rate == pytest.approx(want_rate, rel=1e-9) and quality == pytest.approx(want_psnr, rel=1e-9)
    # the test codec is slightly better: fewer bits, more dB; pchip and akima agree on the sign and size
    assert rate < 0 < quality
    for method in ("pchip", "akima"):
        r, q, _ = bd_pair(curve("a", RATE, PSNR), curve("b", r2, p2), method)
        assert r == pytest.approx(want_rate, abs=0.1) and q == pytest.approx(want_psnr, abs=0.01)


def test_three_points_work_with_pchip_and_are_refused_by_cubic():
    ref, test = curve("ref", RATE[:3], PSNR[:3]), curve("test", [0.8 * r for r in RATE[:3]], PSNR[:3])
    rate, _, note = bd_pair(ref, test, "pchip")
    assert rate == pytest.approx(-20.0, abs=1e-9) and "BD-rate" not in note
    rate, quality, note = bd_pair(ref, test, "cubic")
    assert math.isnan(rate) and math.isnan(quality) and "cubic needs 4 points" in note


def test_non_monotonic_and_disjoint_curves_give_nan_with_a_reason():
    ref = curve("ref", [0.1, 0.2, 0.4], [50.0, 60.0, 70.0])
    bumpy = curve("bumpy", [0.1, 0.2, 0.4], [50.0, 65.0, 64.0])  # accuracy falls at the top rate
    rate, quality, note = bd_pair(ref, bumpy, "pchip")
    assert math.isnan(rate) and "test quality does not rise with rate" in note
    assert math.isfinite(quality)  # quality at equal rate needs only distinct rates
    far = curve("far", [1.0, 2.0, 4.0], [80.0, 85.0, 90.0])
    rate, quality, note = bd_pair(ref, far, "pchip")
    assert math.isnan(rate) and math.isnan(quality)
    assert "quality ranges do not overlap" in note and "rate ranges do not overlap" in note


def _rows():
    def row(codec, q, bpp, psnr, variant=None):
        return {"dataset": "d", "split": "s", "variant": variant or f"{codec}-q{q}", "codec": codec, "q": q,
                "target_bpp": None, "bpp": bpp, "psnr": psnr, "ms_ssim_db": psnr and psnr / 3, "images": 4, "crop": "full"}
    rows = [row("lossless", None, 10.0, None, "orig")]
    rows += [row("jpeg", q, b, p) for q, b, p in ((90, 2.0, 40.0), (50, 1.0, 35.0), (10, 0.5, 30.0))]
    rows += [row("bpg", q, b / 2, p) for q, b, p in ((30, 2.0, 40.0), (40, 1.0, 35.0), (50, 0.5, 30.0))]
    rows += [row("j2k", q, b * 0.8, p) for q, b, p in ((10, 2.0, 40.0), (40, 1.0, 35.0), (80, 0.5, 30.0))]
    return rows


def test_table_compares_every_codec_with_jpeg_and_recipes_with_the_first():
    rows = _rows()
    t = bd_table(rows)
    codec = {(r["metric"], r["test"]): r for r in t}
    assert {r["reference"] for r in t} == {"jpeg"} and len(t) == 4  # bpg and j2k on PSNR and MS-SSIM
    assert codec[("psnr", "bpg")]["bd_rate_pct"] == pytest.approx(-50.0, abs=1e-9)
    assert codec[("psnr", "j2k")]["bd_rate_pct"] == pytest.approx(-20.0, abs=1e-9)
    assert codec[("psnr", "j2k")]["reference_points"] == 3 and codec[("psnr", "j2k")]["method"] == "pchip"
    t = bd_table(rows, ["j2k"])
    assert {r["reference"] for r in t} == {"j2k"}
    with pytest.raises(BDReferenceError, match="hevc.*codecs: bpg, j2k, jpeg"):
        bd_table(rows, ["hevc"])
    # two recipes on each codec: the second 3 points better at every rate
    acc = []
    for r in rows:
        for recipe, gain in (("pretrained", 0.0), ("expert", 3.0)):
            acc.append({**r, "recipe": recipe, "top1_pct": r["psnr"] + gain if r["psnr"] else 76.0})
    t = bd_table(acc)
    recipe = [r for r in t if r["comparison"] == "recipe"]
    assert {(r["fixed"], r["reference"], r["test"]) for r in recipe} == {
        ("codec=bpg", "pretrained", "expert"), ("codec=j2k", "pretrained", "expert"), ("codec=jpeg", "pretrained", "expert")}
    assert all(r["bd_quality"] == pytest.approx(3.0) and r["quality_unit"] == "points" and r["bd_rate_pct"] < 0
               for r in recipe)
    per_recipe = [r for r in t if r["comparison"] == "codec" and r["metric"] == "top1_pct"]
    assert {r["fixed"] for r in per_recipe} == {"recipe=pretrained", "recipe=expert"}
    md = bd_markdown(t)
    assert "| recipe (jpeg) | top-1 | pretrained | expert | 3/3 |" in md and "+3.000 points" in md
    assert bd_table(acc, ["expert"])[-1]["reference"] == "expert"
