"""Readers over corrupted shards and manifests: a small good prepare-shards output is built once per
module, copied per example and damaged (bytes flipped, cut, appended; shards deleted, replaced or
swapped; _manifest.json replaced by invalid JSON, a list, ``{}``..., or one shard entry altered).

- ``ShardStream``: building it and iterating to the end must raise ``ShardError`` whose message
  names the damaged shard (or, for a damaged manifest, ShardError/ValueError/FileNotFoundError
  naming _manifest.json); never another exception type, never a silent full pass (loaders verify
  every shard against the manifest's size and sha256).
- ``lossyvision rate-report ROOT --no-plot --out REPORT``: no traceback, exit 0/1/2, at most one
  line on stderr, nothing written outside REPORT.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from . import _fuzzlib as fz

pytestmark = pytest.mark.fuzz

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
VARIANTS = ("orig", "jpeg-q50", "bpg-qp40")
N_IMAGES, SHARD_SIZE, N_SHARDS = 5, 2, 3


@pytest.fixture(scope="module")
def good_output(tmp_path_factory):
    """OUT of a clean prepare-shards run: OUT/folder/all/{orig,jpeg-q50,bpg-qp40}, 3 shards of 2+2+1,
    and what ShardStream yields from each variant (the reference)."""
    from lossyvision.pipelines.stream import ShardStream

    d = str(tmp_path_factory.mktemp("good"))
    src = fz.make_source(d, [], [])
    for i in range(N_IMAGES):
        fz.add_good(src, i, (i % 4, "PNG" if i % 2 else "JPEG", 24, 32, 17 * i, 23 * i))
    out = os.path.join(d, "out")
    run = fz.invoke(["prepare-shards", "--dataset", "folder", "--src", src.root, "--split", "all", "--out", out,
                     *fz.JPEG[0], *fz.BPG[0], "--shard-size", str(SHARD_SIZE), "--executor", "local", "--quiet"], d)
    assert run.exit_code == 0 and not run.tb, (run.stderr, run.tb)
    base = os.path.join(out, "folder", "all")
    ref = {v: [(s[-1], [t.clone() for t in s[:-2]]) for s in ShardStream(os.path.join(base, v))] for v in VARIANTS}
    assert all(len(r) == N_IMAGES for r in ref.values())
    return Good(out, ref)


class Good(tuple):
    """(out, reference samples), shown briefly in hypothesis' falsifying examples."""

    def __new__(cls, out, ref):
        return super().__new__(cls, (out, ref))

    def __repr__(self) -> str:
        return f"<prepared output at {self[0]}>"


def copy_output(out: str, parent: str) -> tuple[str, str]:
    """A copy of OUT in a new folder (unique per example: a reader may cache per path)."""
    ex = tempfile.mkdtemp(dir=parent)
    root = os.path.join(ex, "out")
    shutil.copytree(out, root)
    for d, dirs, files in os.walk(root):
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    return ex, os.path.join(root, "folder", "all")


# -- corruptions --------------------------------------------------------------------------

fracs = st.floats(0.0, 1.0, allow_nan=False)
shard_i = st.integers(0, N_SHARDS - 1)

shard_damage = st.one_of(
    st.tuples(st.just("flip"), shard_i, st.lists(st.tuples(fracs, st.integers(1, 255)), min_size=1, max_size=3)),
    st.tuples(st.just("truncate"), shard_i, fracs),
    st.tuples(st.just("append"), shard_i, st.binary(min_size=1, max_size=1024)),
    st.tuples(st.just("delete"), shard_i),
    st.tuples(st.just("replace"), shard_i, st.binary(max_size=2048)),
    st.tuples(st.just("swap"), shard_i, shard_i).filter(lambda t: t[1] != t[2]),
)
manifest_damage = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(st.just("text"), st.sampled_from(["", "{", "[]", "{}", "null", "42", '"x"', '{"shards": "x"}',
                                                '{"shards": [1, 2]}', '{"shards": [{}]}', '{"shards": [null]}',
                                                '{"shards": [{"name": "shard-000000.tar"}]}', "\ufeff{}", "NaN"])),
    st.tuples(st.just("truncate-json"), fracs),
    st.tuples(st.just("delete-manifest")),
)
entry_damage = st.tuples(
    st.just("entry"), shard_i,
    st.sampled_from(["count+1", "count-1", "count=-5", "count=str", "count=null", "sha", "sha=null-other-size",
                     "size+1", "size=str", "name=../orig/shard-000000.tar", "name=/etc/hostname", "name=missing.tar",
                     "name=int", "name=shard-000001.tar", "drop-name", "codec=null", "codec=str", "entry=list"]))
damage = st.one_of(shard_damage, manifest_damage, entry_damage)


def apply(vdir: str, dmg: tuple) -> str:
    """Damage the variant folder; returns what a message must name (a shard file name or _manifest.json)."""
    kind = dmg[0]
    mpath = os.path.join(vdir, "_manifest.json")
    if kind in ("flip", "truncate", "append", "delete", "replace", "swap"):
        name = f"shard-{dmg[1]:06d}.tar"
        p = os.path.join(vdir, name)
        data = bytearray(open(p, "rb").read())
        if kind == "flip":
            flips: dict[int, int] = {}
            for frac, xor in dmg[2]:
                pos = int(frac * (len(data) - 1))
                flips[pos] = flips.get(pos, 0) ^ xor
            if not any(flips.values()):  # two flips of one byte cancelled out: keep the first
                flips = {int(dmg[2][0][0] * (len(data) - 1)): dmg[2][0][1]}
            for pos, xor in flips.items():
                data[pos] ^= xor
        elif kind == "truncate":
            data = data[: int(dmg[2] * (len(data) - 1))]
        elif kind == "append":
            data += dmg[2]
        elif kind == "replace":
            data = bytearray(dmg[2])
        elif kind == "swap":
            q = os.path.join(vdir, f"shard-{dmg[2]:06d}.tar")
            other = open(q, "rb").read()
            open(q, "wb").write(bytes(data))
            data = bytearray(other)
        if kind == "delete":
            os.remove(p)
        else:
            open(p, "wb").write(bytes(data))
        return name
    if kind == "bytes":
        open(mpath, "wb").write(dmg[1])
    elif kind == "text":
        open(mpath, "w").write(dmg[1])
    elif kind == "truncate-json":
        t = open(mpath, "rb").read().rstrip()  # a cut that only drops the trailing newline leaves valid JSON
        open(mpath, "wb").write(t[: int(dmg[1] * (len(t) - 1))])
    elif kind == "delete-manifest":
        os.remove(mpath)
    elif kind == "entry":
        m = json.load(open(mpath))
        e = m["shards"][dmg[1]]
        what = dmg[2]
        if what == "count+1":
            e["count"] += 1
        elif what == "count-1":
            e["count"] -= 1
        elif what == "count=-5":
            e["count"] = -5
        elif what == "count=str":
            e["count"] = "two"
        elif what == "count=null":
            e["count"] = None
        elif what == "sha":
            e["sha256"] = "0" * 64
        elif what == "sha=null-other-size":
            e["sha256"], e["size"] = None, e["size"] + 512
        elif what == "size+1":
            e["size"] += 1
        elif what == "size=str":
            e["size"] = "big"
        elif what.startswith("name="):
            e["name"] = 7 if what == "name=int" else what[5:]
        elif what == "drop-name":
            del e["name"]
        elif what == "codec=null":
            m["codec"] = None
        elif what == "codec=str":
            m["codec"] = "jpeg"
        elif what == "entry=list":
            m["shards"][dmg[1]] = [e["name"], e["count"]]
        json.dump(m, open(mpath, "w"))
    return "_manifest.json"


def describe(variant: str, dmg: tuple) -> str:
    shown = tuple(x if not isinstance(x, bytes) or len(x) < 40 else x[:40] + b"..." for x in dmg)
    return f"variant {variant}, damage {shown}"


@settings(max_examples=60, **SETTINGS)
@given(variant=st.sampled_from(VARIANTS), dmg=damage)
@example(variant="jpeg-q50", dmg=("entry", 0, "count-1"))
@example(variant="jpeg-q50", dmg=("entry", 1, "sha"))
@example(variant="bpg-qp40", dmg=("flip", 1, [(0.5, 1)]))
@example(variant="orig", dmg=("truncate", 2, 0.9))
@example(variant="jpeg-q50", dmg=("append", 0, b"junk"))
@example(variant="jpeg-q50", dmg=("text", "[]"))
@example(variant="jpeg-q50", dmg=("entry", 0, "name=../orig/shard-000000.tar"))
def test_stream_detects_damage(tmp_path, good_output, variant, dmg):
    from lossyvision.pipelines.stream import ShardError, ShardStream

    out, ref = good_output
    ex, base = copy_output(out, str(tmp_path))
    vdir = os.path.join(base, variant)
    culprit = apply(vdir, dmg)
    what = describe(variant, dmg)
    manifest_level = culprit == "_manifest.json"
    allowed = (ShardError, ValueError, FileNotFoundError) if manifest_level else (ShardError,)
    got = []
    try:
        if variant == "orig":  # orig is read as the paired side of jpeg-q50
            ds = ShardStream(os.path.join(base, "jpeg-q50"), os.path.join(base, "orig"))
            for s in ds:
                got.append((s[-1], [t.clone() for t in s[:1]]))
        else:
            for s in ShardStream(vdir):
                got.append((s[-1], [t.clone() for t in s[:-2]]))
    except allowed as e:
        msg = str(e)
        names = [culprit] + ([f"shard-{dmg[1]:06d}.tar"] if dmg[0] == "entry" else []) + \
            ([f"shard-{dmg[2]:06d}.tar"] if dmg[0] == "swap" else [])
        if dmg[0] == "entry" and dmg[2].startswith("name="):
            names.append(str(dmg[2][5:]))
        if dmg[0] == "entry":  # "variants A and B are not partitioned identically" names the folder
            names.append(vdir)
        assert any(n in msg for n in names), f"{what}: {type(e).__name__} does not name {names}: {msg[:300]!r}"
        assert "\n" not in msg.strip(), f"{what}: {type(e).__name__} message is several lines: {msg[:300]!r}"
        return
    except Exception as e:  # noqa: BLE001 - the property: no other exception type
        import traceback

        raise AssertionError(f"{what}: {type(e).__name__} instead of {[a.__name__ for a in allowed]}: {e}\n"
                             + "".join(traceback.format_exception(type(e), e, e.__traceback__))[-1500:]) from None
    want = ref[variant] if variant != "orig" else None
    if want is not None:
        same = len(got) == len(want) and all(k1 == k2 and all((a == b).all() for a, b in zip(t1, t2))
                                             for (k1, t1), (k2, t2) in zip(got, want))
    else:
        same = "unknown"
    raise AssertionError(f"{what}: read to the end without an error ({len(got)} samples of {N_IMAGES}; "
                         f"identical to the undamaged data: {same})")


@settings(max_examples=30, **SETTINGS)
@given(variant=st.sampled_from(VARIANTS), dmg=damage)
def test_rate_report_survives_damage(tmp_path, good_output, variant, dmg):
    out, _ = good_output
    ex, base = copy_output(out, str(tmp_path))
    apply(os.path.join(base, variant), dmg)
    report = os.path.join(ex, "report")
    cwd = os.path.join(ex, "cwd")
    os.makedirs(cwd)
    before = fz.snapshot(ex, exclude=(report,))
    run = fz.invoke(["rate-report", os.path.join(ex, "out"), "--no-plot", "--out", report], cwd)
    fz.check_cli_contract(run)
    outside = fz.diff_snapshots(before, fz.snapshot(ex, exclude=(report,)))
    assert not outside, f"{describe(variant, dmg)}: {run.cmdline()}\nwritten outside --out: {outside[:10]}"
    shutil.rmtree(ex, ignore_errors=True)
