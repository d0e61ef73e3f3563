"""Bad option values of prepare-shards: exit code 2, one line on stderr, no traceback, and nothing
created anywhere (not --out, not a path a --split like ``../../x`` or ``/abs/dir`` points at)."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import _fuzzlib as fz

pytestmark = pytest.mark.fuzz

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ABS = "<ABS>"  # replaced by an absolute folder inside the example (so nothing lands in the real /)

BAD_OPTIONS = [
    ("--split", "../../x"), ("--split", "../../../../x"), ("--split", ABS), ("--split", "a/b"), ("--split", ".."),
    ("--split", ""), ("--split", "."), ("--split", "x/../../.."), ("--split", "a/"), ("--split", "/"),
    ("--split", "x\x00y"),
    ("--quality", "nan"), ("--quality", "NaN"), ("--quality", "inf"), ("--quality", "-inf"), ("--quality", "+inf"), ("--quality", "1e999"), ("--quality", ""),
    ("--quality", "abc"), ("--quality", "50,nan"), ("--quality", "-5"), ("--quality", "1000"),
    ("--bpp", "nan"), ("--bpp", "inf"), ("--bpp", "-1"), ("--bpp", "0"),
    ("--crop", "scale:60000x60000"), ("--crop", "crop:0x0"), ("--crop", "scale:0x0"), ("--crop", "scale:0"),
    ("--crop", "scale:-1"), ("--crop", "crop:-1x5"), ("--crop", "scale:nan"), ("--crop", "scale:inf"),
    ("--crop", "crop:99999999999999999999x1"), ("--crop", "bogus"),
    ("--limit", "0"), ("--limit", "-1"),
    ("--out", ""),
    ("--max-pixels", "0"), ("--max-pixels", "-1"), ("--max-pixels", "nan"),
    ("--shard-size", "0"), ("--shard-size", "-1"), ("--workers", "0"), ("--workers", "-1"),
    ("--dataset", ""), ("--dataset", "../folder"), ("--dataset", "nosuch"),
    ("--codec", "nosuch"), ("--codec", "../jpeg"),
    ("--order-seed", "nan"),
]


def _example(tmp_path):
    ex = fz.fresh_dir(str(tmp_path))
    src = fz.make_source(ex, [(0, "PNG", 32, 40, 0, 0)], [])
    deep = os.path.join(ex, "o1", "o2", "o3")
    os.makedirs(deep)
    cwd = os.path.join(ex, "cwd")
    os.makedirs(cwd)
    return ex, src, os.path.join(deep, "out"), cwd


def _args(src: fz.SourceDir, out: str, **over: str) -> list[str]:
    opts = {"--dataset": "folder", "--src": src.root, "--split": "all", "--out": out, "--codec": "jpeg", "--quality": "50"}
    if "--bpp" in over:
        opts.pop("--quality")
    opts.update(over)
    args = ["prepare-shards"]
    for k, v in opts.items():
        args.append(f"{k}={v}")  # --opt=VALUE: a value starting with '-' is still the value
    return args + ["--executor", "local", "--quiet"]


@pytest.mark.parametrize("opt,value", BAD_OPTIONS, ids=[f"{o}={v!r}" for o, v in BAD_OPTIONS])
def test_bad_option_value_exits_2_and_creates_nothing(tmp_path, opt, value):
    ex, src, out, cwd = _example(tmp_path)
    if value == ABS:
        value = os.path.join(ex, "abs", "dir")
    before = fz.snapshot(str(tmp_path))
    run = fz.invoke(_args(src, out, **{opt: value}), cwd)
    fz.check_cli_contract(run, codes=(2,))
    created = fz.diff_snapshots(before, fz.snapshot(str(tmp_path)))
    assert not created, f"{run.cmdline()}\nexit {run.exit_code} but the filesystem changed: {created[:10]}"


def _safe_component(s: str) -> bool:
    """A split that cannot leave out/folder/: one non-empty path component, not '.' or '..'."""
    return bool(s) and "/" not in s and "\x00" not in s and s not in (".", "..")


split_text = st.one_of(
    st.lists(st.sampled_from(["..", ".", "/", "a", "train", "x", "-", "_", "\\", " ", "\x00", "é", "~", "*", "+", "="]),
             max_size=5).map("".join),
    st.text(max_size=8),
)


@settings(max_examples=30, **SETTINGS)
@given(split=split_text)
def test_any_split_stays_under_out(tmp_path, split):
    """Any --split: exit 0 writing only under OUT/folder/<split>/ (plus the dataset's reader cards,
    OUT/folder/README.md and _info.json, fixed names), or exit 2 creating nothing; a split that is not
    one safe path component must give exit 2."""
    ex, src, out, cwd = _example(tmp_path)
    before = fz.snapshot(str(tmp_path), exclude=(out,))
    run = fz.invoke(_args(src, out, **{"--split": split}), cwd)
    fz.check_cli_contract(run, codes=(0, 2) if _safe_component(split) else (2,))
    outside = fz.diff_snapshots(before, fz.snapshot(str(tmp_path), exclude=(out,)))
    assert not outside, f"{run.cmdline()}\nwritten outside --out: {outside[:10]}"
    if run.exit_code == 0:
        base = os.path.realpath(os.path.join(out, "folder", split))
        cards = {os.path.realpath(os.path.join(out, "folder", n)) for n in ("README.md", "_info.json")}
        for d, _, files in os.walk(out):
            for f in files:
                p = os.path.realpath(os.path.join(d, f))
                assert p.startswith(base + os.sep) or p in cards, f"{run.cmdline()}\n{p} is not under {base}"
        fz.check_output(run, src, out, split, ["orig", "jpeg-q50"])
    else:
        assert not os.path.lexists(out), f"{run.cmdline()}\nexit {run.exit_code} but {out} was created"


def _num(x: float) -> str:
    return repr(x) if not math.isnan(x) else "nan"


@settings(max_examples=25, **SETTINGS)
@given(which=st.sampled_from(["--quality", "--bpp"]), x=st.floats(allow_nan=True, allow_infinity=True))
def test_any_number_for_q_and_bpp(tmp_path, which, x):
    """--quality / --bpp for jpeg: a non-finite or out-of-range value is exit 2 with nothing created; an
    in-range one runs (exit 0) or is refused (exit 2)."""
    ex, src, out, cwd = _example(tmp_path)
    before = fz.snapshot(str(tmp_path), exclude=(out,))
    run = fz.invoke(_args(src, out, **{which: _num(x)}), cwd)
    in_range = math.isfinite(x) and ((1 <= x <= 100) if which == "--quality" else (0 < x <= 64))
    fz.check_cli_contract(run, codes=(0, 2) if in_range else (2,))
    outside = fz.diff_snapshots(before, fz.snapshot(str(tmp_path), exclude=(out,)))
    assert not outside, f"{run.cmdline()}\nwritten outside --out: {outside[:10]}"
    if run.exit_code == 2:
        assert not os.path.lexists(out), f"{run.cmdline()}\nexit 2 but {out} was created"


dims = st.one_of(st.integers(-3, 70000).map(str), st.sampled_from(["nan", "inf", "1e9", "0.5", "", "x"]))


@settings(max_examples=25, **SETTINGS)
@given(kind=st.sampled_from(["crop", "scale"]), w=dims, h=st.one_of(st.none(), dims), offset=st.one_of(st.none(), st.tuples(dims, dims)))
def test_any_crop(tmp_path, kind, w, h, offset):
    """--crop crop:WxH[+X+Y] / scale:WxH / scale:F: zero, negative, non-numeric or over --max-pixels
    sizes are exit 2 with nothing created; others run (0), fail every image (1: none usable) or are refused (2)."""
    spec = f"{kind}:{w}" + (f"x{h}" if h is not None else "") + (f"+{offset[0]}+{offset[1]}" if offset and kind == "crop" else "")
    ex, src, out, cwd = _example(tmp_path)
    before = fz.snapshot(str(tmp_path), exclude=(out,))
    run = fz.invoke(_args(src, out, **{"--crop": spec}), cwd)

    def num(t):
        try:
            v = float(t)
        except ValueError:
            return None
        return v if math.isfinite(v) else None

    vals = [num(w)] + ([num(h)] if h is not None else []) + ([num(o) for o in offset] if offset and kind == "crop" else [])
    if any(v is None for v in vals) or any(v <= 0 for v in vals[: 2 if h is not None else 1]) or any(v < 0 for v in vals):
        plausible = False
    elif kind == "scale" and h is None:
        plausible = 32 * 40 * vals[0] ** 2 <= fz.MAX_PIXELS
    else:
        plausible = vals[0] * (vals[1] if h is not None else vals[0]) <= fz.MAX_PIXELS
    fz.check_cli_contract(run, codes=(0, 1, 2) if plausible else (2,))
    outside = fz.diff_snapshots(before, fz.snapshot(str(tmp_path), exclude=(out,)))
    assert not outside, f"{run.cmdline()}\nwritten outside --out: {outside[:10]}"
    if run.exit_code == 2:
        assert not os.path.lexists(out), f"{run.cmdline()}\nexit 2 but {out} was created"
