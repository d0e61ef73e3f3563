"""prepare-shards over source folders holding malformed, odd and special entries (issue 11 item 7).

Each example builds a fresh folder of 1-3 good real-photo crops plus drawn entries, runs
``lossyvision prepare-shards --dataset folder ... --executor local --quiet`` in-process and asserts:
no traceback and at most one line on stderr; exit code 0 (bad images are listed in the manifests'
``failures``, they do not stop the job); nothing written outside ``--out``; every good image in
every variant (read back with webdataset), every bad one listed by key with a reason; and (in the
rerun property) a second run reproduces the manifests.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from . import _fuzzlib as fz

pytestmark = pytest.mark.fuzz

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- strategies ---------------------------------------------------------------------------

fracs = st.floats(0.0, 1.0, allow_nan=False)

goods = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["PNG", "JPEG"]), st.integers(24, 40), st.integers(24, 48),
              st.integers(0, 400), st.integers(0, 400)),
    min_size=1, max_size=3)

random_bytes = st.tuples(st.just("random_bytes"), st.sampled_from(["png", "jpg", "JPEG"]), st.binary(min_size=1, max_size=64))
zero_byte = st.tuples(st.just("zero_byte"), st.sampled_from(["png", "jpg"]))
truncated = st.tuples(st.just("truncated"), st.sampled_from(["PNG", "JPEG"]), fracs)
flipped = st.tuples(st.just("flipped"), st.sampled_from(["PNG", "JPEG"]),
                    st.lists(st.tuples(fracs, st.integers(1, 255)), min_size=1, max_size=3))
side = st.integers(1, 24)
tiny = st.builds(
    lambda hw, fmt: ("tiny", hw[0], hw[1], fmt),
    st.one_of(st.tuples(side, side), st.tuples(st.just(1), st.integers(1, 64)), st.tuples(st.integers(1, 64), st.just(1))),
    st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"]))
modes = st.tuples(st.just("mode"),
                  st.sampled_from(["L", "LA", "RGBA", "P", "1", "I;16", "CMYK", "L-jpeg", "png16-1", "png16-2", "png16-3", "png16-4"]),
                  st.integers(8, 40), st.integers(8, 40))
frames = st.tuples(st.just("frames"), st.sampled_from(["GIF", "TIFF", "APNG", "WEBP", "EXIF-JPEG"]))
name_chars = st.characters(codec="utf-8", exclude_characters="/\0")
weird_name = st.tuples(st.just("weird_name"), st.text(name_chars, max_size=12), st.sampled_from(["png", "PNG", "jpg", "JPEG", "jpeg"]))
big_side = st.integers(1, 2**31 - 1)
huge_png = st.tuples(st.just("huge_png"), big_side, big_side, st.sampled_from([8, 16]), st.sampled_from([0, 2, 6]),
                     st.booleans()).filter(lambda t: t[1] * t[2] > fz.MAX_PIXELS) | st.tuples(
    st.just("huge_png"), st.just(60000), st.just(60000), st.just(8), st.sampled_from([2, 3]), st.booleans())
huge_jpeg = st.tuples(st.just("huge_jpeg"), st.integers(12000, 65535), st.integers(12000, 65535))
sparse = st.tuples(st.just("sparse_huge"))
dir_named = st.tuples(st.just("dir_named_png"), st.booleans())
dangling = st.tuples(st.just("dangling_symlink"))
file_loop = st.tuples(st.just("file_link_loop"))
dir_loop = st.tuples(st.just("dir_loop"), st.sampled_from([".", "..", "root"]))
fifo = st.tuples(st.just("fifo"))
dev_zero = st.tuples(st.just("dev_zero"))
unreadable = st.tuples(st.just("unreadable_dir"))

FAMILIES = {
    "garbage": st.one_of(random_bytes, zero_byte, truncated, flipped),
    "edge-images": st.one_of(tiny, modes, frames),
    "names": weird_name,
    "huge": st.one_of(huge_png, huge_jpeg, sparse),
    "dir-named-png": dir_named,
    "dangling-symlink": dangling,
    "file-symlink-loop": file_loop,
    "dir-symlink-loop": dir_loop,
    "fifo": fifo,
    "dev-zero": dev_zero,
}
EXAMPLES = {"garbage": 15, "edge-images": 15, "huge": 6, "names": 15}
ANY_ENTRY = st.one_of(*FAMILIES.values())

codec_sets = st.tuples(st.booleans(), st.booleans())


def codec_args(extra: tuple[bool, bool]) -> tuple[list[str], list[str]]:
    sets = [fz.JPEG] + ([fz.BPG] if extra[0] else []) + ([fz.J2K] if extra[1] else [])
    return [a for s in sets for a in s[0]], ["orig"] + [s[1] for s in sets]


# -- the properties -------------------------------------------------------------------------


def _prepare(base: str, src: fz.SourceDir, codec_flags: list[str], out: str, cwd: str) -> fz.Run:
    return fz.invoke(["prepare-shards", "--dataset", "folder", "--src", src.root, "--split", "all", "--out", out,
                      *codec_flags, "--executor", "local", "--quiet"], cwd)


def run_and_check(tmp_path, good, entries, extra) -> tuple[fz.SourceDir, str, str, list[str], list[str]]:
    ex = fz.fresh_dir(str(tmp_path))
    src = fz.make_source(ex, good, entries)
    out = os.path.join(ex, "o", "out")
    cwd = os.path.join(ex, "cwd")
    os.makedirs(cwd)
    os.makedirs(os.path.dirname(out))
    flags, variants = codec_args(extra)
    before = fz.snapshot(str(tmp_path), exclude=(out,))
    run = _prepare(ex, src, flags, out, cwd)
    fz.check_cli_contract(run, codes=(0,))
    outside = fz.diff_snapshots(before, fz.snapshot(str(tmp_path), exclude=(out,)))
    assert not outside, f"{run.cmdline()}\nwritten outside --out: {outside[:10]}"
    fz.check_output(run, src, out, "all", variants)
    return src, out, cwd, flags, variants


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prepare_lists_bad_entries_and_keeps_good_ones(tmp_path, family):
    @settings(max_examples=EXAMPLES.get(family, 4), **SETTINGS)
    @given(good=goods, entries=st.lists(FAMILIES[family], min_size=1, max_size=3), extra=codec_sets)
    def prop(good, entries, extra):
        run_and_check(tmp_path, good, entries, extra)

    prop()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod 000 folders")
@settings(max_examples=3, **SETTINGS)
@given(good=goods)
def test_unreadable_subdirectory(tmp_path, good):
    ex = fz.fresh_dir(str(tmp_path))
    src = fz.make_source(ex, good, [("unreadable_dir",)])
    out, cwd = os.path.join(ex, "o", "out"), os.path.join(ex, "cwd")
    os.makedirs(cwd)
    flags, variants = codec_args((False, False))
    run = _prepare(ex, src, flags, out, cwd)
    fz.check_cli_contract(run, codes=(0, 1))  # a listed failure, or a one-line error naming the folder
    if run.exit_code == 0:
        fz.check_output(run, src, out, "all", variants)


@settings(max_examples=10, **SETTINGS)
@given(good=goods, entries=st.lists(ANY_ENTRY, min_size=1, max_size=3), extra=codec_sets)
@example(good=[(0, "PNG", 40, 48, 0, 0)], entries=[("fifo",), ("dev_zero",), ("dangling_symlink",)], extra=(True, True))
@example(good=[(1, "JPEG", 40, 48, 0, 0)], entries=[("huge_png", 60000, 60000, 8, 2, True), ("sparse_huge",), ("zero_byte", "png")], extra=(True, False))
@example(good=[(2, "PNG", 24, 24, 0, 0)], entries=[("tiny", 1, 1, "PNG"), ("tiny", 1, 64, "JPEG"), ("mode", "png16-3", 9, 9)], extra=(True, True))
@example(good=[(3, "PNG", 24, 24, 0, 0)], entries=[("dir_loop", "root"), ("file_link_loop",), ("dir_named_png", True)], extra=(False, False))
def test_prepare_mixed_entries(tmp_path, good, entries, extra):
    run_and_check(tmp_path, good, entries, extra)


@settings(max_examples=6, **SETTINGS)
@given(good=goods, entries=st.lists(ANY_ENTRY, min_size=1, max_size=3), extra=codec_sets)
def test_rerun_reaches_the_same_result(tmp_path, good, entries, extra):
    """A second run into the same --out exits 0 and leaves the same manifests (shard sha256,
    counts, failures); a run into a fresh --out writes the same shards."""
    src, out, cwd, flags, variants = run_and_check(tmp_path, good, entries, extra)
    base = os.path.join(out, "folder", "all")
    first = fz.manifest_digest(base)
    run = _prepare(os.path.dirname(src.root), src, flags, out, cwd)
    fz.check_cli_contract(run, codes=(0,))
    assert fz.manifest_digest(base) == first, f"{run.cmdline()} (rerun into the same --out)\nmanifests changed"
    out2 = os.path.join(os.path.dirname(src.root), "o2", "out")
    run = _prepare(os.path.dirname(src.root), src, flags, out2, cwd)
    fz.check_cli_contract(run, codes=(0,))
    assert fz.manifest_digest(os.path.join(out2, "folder", "all")) == first, f"{run.cmdline()} (a fresh --out)\nshards differ"
