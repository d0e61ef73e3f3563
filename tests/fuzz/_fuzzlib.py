"""Shared pieces of the fuzz suite: real-photo images (good and malformed), filesystem snapshots,
in-process CLI runs and the checks every property makes on a prepare-shards result.

Expectation classes of a source entry (what the manifests and tars must show afterwards):

- GOOD: an image the job must encode: its key is a sample of every variant, and not a failure;
- BAD: not an image (or over the pixel limit, or not a regular file): its key is listed in every
  manifest's ``failures`` with a reason, and is no sample;
- EITHER: a damaged file that may or may not still decode (a flipped byte, a cut): exactly one of
  the two above, the same in every variant;
- NOT_SAMPLE: not an image entry at all (a directory named ``x.png``, a directory symlink loop):
  nothing reached through it becomes a sample; a failure entry is allowed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

GOOD, BAD, EITHER, NOT_SAMPLE = "good", "bad", "either", "not-sample"

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")

# Codec settings the properties draw from: (command line, variant folder name)
JPEG = (("--codec", "jpeg", "--quality", "50"), "jpeg-q50")
BPG = (("--codec", "bpg", "--quality", "40"), "bpg-qp40")
J2K = (("--codec", "j2k", "--quality", "50"), "j2k-r50")

# imageio.max_file_bytes(DEFAULT_MAX_PIXELS): 2^27 px * 8 B + 16 MiB; a sparse file one byte over
OVER_FILE_LIMIT = (1 << 27) * 8 + (16 << 20) + 1
MAX_PIXELS = 1 << 27


@functools.lru_cache(maxsize=None)
def photo(i: int) -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])())


def crop(i: int, h: int, w: int, y: int = 0, x: int = 0) -> np.ndarray:
    a = photo(i)
    y, x = y % max(1, a.shape[0] - h), x % max(1, a.shape[1] - w)
    return np.ascontiguousarray(a[y : y + h, x : x + w])


def encode(a: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    """Encode with Pillow; fmt PNG/JPEG/BMP/GIF/TIFF/WEBP; mode converts first (L, LA, RGBA, P, 1, CMYK)."""
    im = Image.fromarray(a)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    kw = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png16(a: np.ndarray, channels: int) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA) made from an 8-bit crop."""
    import imagecodecs

    g = a.astype(np.uint16) * 257
    if channels == 1:
        g = g[..., 0]
    elif channels == 2:
        g = np.dstack([g[..., 0], np.full(g.shape[:2], 40000, np.uint16)])
    elif channels == 4:
        g = np.dstack([g, np.full(g.shape[:2], 40000, np.uint16)])
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(g)))


def _chunk(t: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)


def huge_png(w: int, h: int, depth: int = 8, ctype: int = 2, idat: bool = True) -> bytes:
    """A PNG whose (valid-CRC) IHDR claims w x h; the pixel data is a few bytes (a bomb header)."""
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    if ctype == 3:
        out += _chunk(b"PLTE", bytes(range(48)))
    if idat:
        out += _chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return out + _chunk(b"IEND", b"")


def huge_jpeg(w: int, h: int) -> bytes:
    """SOI + a baseline SOF0 claiming w x h + EOI (no scan data)."""
    sof = struct.pack(">HBHHB", 17, 8, h, w, 3) + bytes([1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
    return b"\xff\xd8\xff\xc0" + sof + b"\xff\xd9"


# -- source folders -----------------------------------------------------------------------


@dataclass
class Expect:
    kind: str  # GOOD | BAD | EITHER | NOT_SAMPLE
    key: str
    what: str  # a short description for messages
    size: tuple[int, int] | None = None  # (h, w) of a GOOD image's orig sample
    reason: str | None = None  # a word the failure reason must hold


@dataclass
class SourceDir:
    root: str
    expects: list[Expect] = field(default_factory=list)

    def by_kind(self, kind: str) -> dict[str, Expect]:
        return {e.key: e for e in self.expects if e.kind == kind}


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def add_good(src: SourceDir, idx: int, spec: tuple) -> None:
    """spec = (photo, fmt, h, w, y, x)"""
    p, fmt, h, w, y, x = spec
    a = crop(p, h, w, y, x)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    _write(os.path.join(src.root, f"good{idx}.{ext}"), encode(a, fmt))
    src.expects.append(Expect(GOOD, f"good{idx}", f"good {fmt} {h}x{w}", a.shape[:2]))


def add_entry(src: SourceDir, idx: int, spec: tuple) -> None:
    """Materialise one drawn entry (see strategies in the test modules) under src.root."""
    kind, params = spec[0], spec[1:]
    r = src.root
    e = src.expects.append
    if kind == "random_bytes":
        ext, data = params
        name = f"rnd{idx}"
        _write(os.path.join(r, f"{name}.{ext}"), data)
        e(Expect(BAD if not _pillow_decodes(data) else EITHER, name, f"{len(data)} random bytes named .{ext}"))
    elif kind == "zero_byte":
        (ext,) = params
        _write(os.path.join(r, f"zero{idx}.{ext}"), b"")
        e(Expect(BAD, f"zero{idx}", f"zero-byte .{ext}", reason="zero-byte"))
    elif kind == "truncated":
        fmt, frac = params
        data = encode(crop(idx, 24, 32), fmt)
        cut = int(frac * (len(data) - 1))
        ext = "png" if fmt == "PNG" else "jpg"
        _write(os.path.join(r, f"cut{idx}.{ext}"), data[:cut])
        e(Expect(BAD if cut == 0 else EITHER, f"cut{idx}", f"{fmt} of {len(data)} bytes cut at {cut}"))
    elif kind == "flipped":
        fmt, flips = params
        data = bytearray(encode(crop(idx, 24, 32), fmt))
        for frac, xor in flips:
            data[int(frac * (len(data) - 1))] ^= xor
        ext = "png" if fmt == "PNG" else "jpg"
        _write(os.path.join(r, f"flip{idx}.{ext}"), bytes(data))
        e(Expect(EITHER, f"flip{idx}", f"{fmt} with bytes flipped at {[(int(f * (len(data) - 1)), x) for f, x in flips]}"))
    elif kind == "tiny":
        h, w, fmt = params
        a = crop(idx, h, w)
        ext = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "GIF": "gif", "TIFF": "tif", "WEBP": "webp"}[fmt]
        _write(os.path.join(r, f"tiny{idx}.{ext}"), encode(a, fmt))
        e(Expect(GOOD, f"tiny{idx}", f"tiny {h}x{w} {fmt}", (h, w)))
    elif kind == "mode":
        mode, h, w = params
        a = crop(idx + 1, h, w)
        if mode.startswith("png16-"):
            data, ext = png16(a, int(mode[-1])), "png"
        elif mode == "CMYK":
            data, ext = encode(a, "JPEG", "CMYK"), "jpg"
        elif mode == "L-jpeg":
            data, ext = encode(a, "JPEG", "L"), "jpg"
        elif mode == "I;16":
            im = Image.fromarray(np.ascontiguousarray(a[..., 0].astype(np.uint16) * 257))  # mode I;16
            buf = io.BytesIO()
            im.save(buf, "PNG")
            data, ext = buf.getvalue(), "png"
        else:
            data, ext = encode(a, "PNG", mode), "png"
        _write(os.path.join(r, f"mode{idx}.{ext}"), data)
        e(Expect(GOOD, f"mode{idx}", f"{mode} {h}x{w} image", (h, w)))
    elif kind == "frames":
        (fmt,) = params  # a multi-frame file (animated GIF/PNG/WebP, multi-page TIFF) or an EXIF-rotated JPEG
        frames = [Image.fromarray(crop(idx + k, 20, 28)) for k in range(3)]
        buf = io.BytesIO()
        if fmt == "EXIF-JPEG":
            ex = Image.Exif()
            ex[0x0112] = 6  # orientation: rotate 90 (not applied: stored pixel order is kept)
            frames[0].save(buf, "JPEG", exif=ex.tobytes())
            ext = "jpg"
        else:
            pil_fmt, ext = {"GIF": ("GIF", "gif"), "TIFF": ("TIFF", "tif"), "APNG": ("PNG", "png"), "WEBP": ("WEBP", "webp")}[fmt]
            frames[0].save(buf, pil_fmt, save_all=True, append_images=frames[1:])
        _write(os.path.join(r, f"frames{idx}.{ext}"), buf.getvalue())
        e(Expect(GOOD, f"frames{idx}", f"{fmt} with 3 frames", (20, 28)))
    elif kind == "weird_name":
        name, ext = params
        from lossyvision.pipelines.sources import make_key

        fname = f"w{idx}-{name}.{ext}"
        _write(os.path.join(r, fname), encode(crop(idx, 20, 24), "PNG" if ext.lower() == "png" else "JPEG"))
        e(Expect(GOOD, make_key(fname), f"a good image named {fname!r}", (20, 24)))
    elif kind == "huge_png":
        w, h, depth, ctype, idat = params
        _write(os.path.join(r, f"bomb{idx}.png"), huge_png(w, h, depth, ctype, idat))
        e(Expect(BAD, f"bomb{idx}", f"PNG header claiming {w}x{h} (depth {depth}, colour type {ctype}, IDAT {idat})"))
    elif kind == "huge_jpeg":
        w, h = params
        _write(os.path.join(r, f"bombj{idx}.jpg"), huge_jpeg(w, h))
        e(Expect(BAD, f"bombj{idx}", f"JPEG SOF claiming {w}x{h}"))
    elif kind == "sparse_huge":
        p = os.path.join(r, f"sparse{idx}.png")
        with open(p, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n")
            f.truncate(OVER_FILE_LIMIT)
        e(Expect(BAD, f"sparse{idx}", f"sparse file of {OVER_FILE_LIMIT} bytes named .png"))
    elif kind == "dir_named_png":
        (with_image,) = params
        d = os.path.join(r, f"x{idx}.png")
        os.makedirs(d)
        e(Expect(NOT_SAMPLE, f"x{idx}", "a directory named x.png"))
        if with_image:
            a = crop(idx, 20, 20)
            _write(os.path.join(d, "inner.png"), encode(a, "PNG"))
            e(Expect(GOOD, f"x{idx}_png/inner", "a good image inside a directory named x.png", (20, 20)))
    elif kind == "dangling_symlink":
        os.symlink(os.path.join(r, "no-such-target.png"), os.path.join(r, f"y{idx}.png"))
        e(Expect(BAD, f"y{idx}", "a dangling symlink y.png"))
    elif kind == "file_link_loop":
        os.symlink(f"lb{idx}.png", os.path.join(r, f"la{idx}.png"))
        os.symlink(f"la{idx}.png", os.path.join(r, f"lb{idx}.png"))
        e(Expect(BAD, f"la{idx}", "a symlink loop la.png -> lb.png -> la.png"))
        e(Expect(BAD, f"lb{idx}", "a symlink loop lb.png -> la.png -> lb.png"))
    elif kind == "dir_loop":
        (target,) = params  # "." (loop/ -> the folder holding it), ".." or the source root
        d = os.path.join(r, f"sub{idx}")
        os.makedirs(d)
        _write(os.path.join(d, "deep.png"), encode(crop(idx, 20, 20), "PNG"))
        e(Expect(GOOD, f"sub{idx}/deep", "a good image next to a directory symlink loop", (20, 20)))
        os.symlink(target if target != "root" else r, os.path.join(d, "loop"))
        e(Expect(NOT_SAMPLE, f"sub{idx}/loop", f"directory symlink sub/loop -> {target}"))
    elif kind == "fifo":
        os.mkfifo(os.path.join(r, f"z{idx}.png"))
        e(Expect(BAD, f"z{idx}", "a FIFO named z.png"))
    elif kind == "dev_zero":
        os.symlink("/dev/zero", os.path.join(r, f"d{idx}.png"))
        e(Expect(BAD, f"d{idx}", "a symlink d.png -> /dev/zero"))
    elif kind == "unreadable_dir":
        d = os.path.join(r, f"locked{idx}")
        _write(os.path.join(d, "hidden.png"), encode(crop(idx, 20, 20), "PNG"))
        os.chmod(d, 0)
        e(Expect(NOT_SAMPLE, f"locked{idx}", "an unreadable (chmod 000) subdirectory"))
        e(Expect(NOT_SAMPLE, f"locked{idx}/hidden", "an image in an unreadable subdirectory"))
    else:
        raise AssertionError(kind)


def _pillow_decodes(data: bytes) -> bool:
    try:
        Image.MAX_IMAGE_PIXELS, old = None, Image.MAX_IMAGE_PIXELS
        with Image.open(io.BytesIO(data)) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                return False
            im.load()
        return True
    except Exception:
        return False
    finally:
        Image.MAX_IMAGE_PIXELS = old


def make_source(parent: str, goods: list[tuple], entries: list[tuple]) -> SourceDir:
    src = SourceDir(os.path.join(parent, "src"))
    os.makedirs(src.root)
    for i, g in enumerate(goods):
        add_good(src, i, g)
    for i, spec in enumerate(entries):
        add_entry(src, i, spec)
    return src


# -- example folders and snapshots --------------------------------------------------------


def fresh_dir(base: str, name: str = "ex") -> str:
    """An empty example folder base/name (the previous example's is removed, FIFOs, loops, chmod 000 included)."""
    d = os.path.join(base, name)
    if os.path.lexists(d):
        for p, dirs, _ in os.walk(d):
            for x in dirs:
                q = os.path.join(p, x)
                if not os.path.islink(q):
                    with contextlib.suppress(OSError):
                        os.chmod(q, 0o755)
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def snapshot(top: str, exclude: tuple[str, ...] = ()) -> dict:
    """Every path under top (symlinks not followed, special files not opened): type, size, mtime,
    sha256 of small regular files; the subtrees in ``exclude`` (absolute paths) are left out."""
    out = {}
    ex = tuple(os.path.abspath(e) for e in exclude)

    def skip(p: str) -> bool:
        return any(p == e or p.startswith(e + os.sep) for e in ex)

    for d, dirs, files in os.walk(top, followlinks=False):
        dirs[:] = [x for x in dirs if not skip(os.path.join(d, x))]
        for n in dirs + files:
            p = os.path.join(d, n)
            if skip(p):
                continue
            rel = os.path.relpath(p, top)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                h = None
                if st.st_size <= 1 << 20:
                    try:
                        h = hashlib.sha256(open(p, "rb").read()).hexdigest()
                    except OSError:
                        h = "unreadable"
                out[rel] = ("file", st.st_size, st.st_mtime_ns, h)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode), st.st_mtime_ns)
    return out


def diff_snapshots(a: dict, b: dict) -> list[str]:
    added = sorted(set(b) - set(a))
    removed = sorted(set(a) - set(b))
    changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    return [f"created {k}" for k in added] + [f"removed {k}" for k in removed] + [f"changed {k}" for k in changed]


# -- running the CLI ----------------------------------------------------------------------


@dataclass
class Run:
    args: list[str]
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None
    tb: str

    def cmdline(self) -> str:
        import shlex

        return "lossyvision " + " ".join(shlex.quote(a) for a in self.args)


# Each in-process run is bounded, so that a reader that follows /dev/zero or blocks on a FIFO fails
# its example (MemoryError / TimeoutError, reported as a traceback) instead of taking the machine's
# memory or hanging the suite: the data segment may grow by at most GUARD_DATA_BYTES, and the run
# gets GUARD_SECONDS of wall time.
GUARD_DATA_BYTES = 3 << 30
GUARD_SECONDS = int(os.environ.get("LOSSYVISION_FUZZ_GUARD_S", "20"))


class RunTimeout(Exception):
    pass


def _vm_data() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def guarded():
    import resource
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = _vm_data() + GUARD_DATA_BYTES
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)

    def on_alarm(signum, frame):
        raise RunTimeout(f"the command ran for more than {GUARD_SECONDS} s (blocked reading a FIFO or a device?)")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    signal.alarm(GUARD_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def invoke(args: list[str], cwd: str) -> Run:
    """Run ``lossyvision ARGS`` in-process with cwd as the working directory (memory and time bounded)."""
    import traceback

    from click.testing import CliRunner

    from lossyvision.cli import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        with guarded():
            r = CliRunner().invoke(main, args, catch_exceptions=True)
    finally:
        os.chdir(old)
    tb = ""
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        tb = "".join(traceback.format_exception(type(r.exception), r.exception, r.exception.__traceback__))
    return Run(list(args), r.exit_code, r.stdout, r.stderr, r.exception, tb)


# Plain click's UsageError prints a usage preamble ("Usage: ...", "Try '... -h' for help.", a blank
# line) before its "Error: ..." line; that counts as lines (the CLI promises one). Set
# LOSSYVISION_FUZZ_LAX_STDERR=1 to ignore the preamble.
STRICT_STDERR = os.environ.get("LOSSYVISION_FUZZ_LAX_STDERR") != "1"


def stderr_lines(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if not STRICT_STDERR and lines and lines[0].startswith("Usage: "):
        lines = lines[1:]
        if lines and lines[0].startswith("Try '") and lines[0].endswith("for help."):
            lines = lines[1:]
    return lines


def check_cli_contract(run: Run, codes: tuple[int, ...] = (0, 1, 2)) -> None:
    """No traceback, an exit code in ``codes``, at most one line on stderr."""
    assert not run.tb, f"{run.cmdline()}\nunhandled exception (a traceback):\n{run.tb}"
    assert "Traceback" not in run.stdout + run.stderr, f"{run.cmdline()}\n'Traceback' printed:\n{run.stderr}{run.stdout}"
    lines = stderr_lines(run.stderr)
    assert len(lines) <= 1, f"{run.cmdline()}\n{len(lines)} lines on stderr (at most one allowed):\n" + "\n".join(lines[:8])
    assert run.exit_code in codes, (f"{run.cmdline()}\nexit code {run.exit_code}, expected one of {codes}; "
                                    f"stderr: {run.stderr.strip()[:400]!r}")


# -- reading the prepared output ----------------------------------------------------------


def read_variant(vdir: str) -> tuple[dict, list[dict]]:
    """(manifest, samples read by plain webdataset)."""
    import webdataset as wds

    with open(os.path.join(vdir, "_manifest.json")) as f:
        m = json.load(f)
    urls = [os.path.join(vdir, e["name"]) for e in m["shards"] if e]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False)) if urls else []
    return m, samples


def manifest_digest(base: str) -> dict:
    """What a rerun must reproduce: per variant, the shards' (name, count, sha256) and the failures."""
    out = {}
    for v in sorted(os.listdir(base)):
        p = os.path.join(base, v, "_manifest.json")
        if not os.path.isfile(p):
            continue
        m = json.load(open(p))
        out[v] = {"shards": [(e["name"], e["count"], e["sha256"]) if e else None for e in m["shards"]],
                  "failures": [(f["key"], f["reason"]) for f in m["failures"]],
                  "num_samples": m["num_samples"], "complete": m["complete"]}
    return out


def check_output(run: Run, src: SourceDir, out: str, split: str, variants: list[str]) -> None:
    """The prepared output under out/folder/<split>/ agrees with what the source held."""
    base = os.path.join(out, "folder", split)
    assert os.path.isdir(base), f"{run.cmdline()}\nno output folder {base}"
    found = sorted(v for v in os.listdir(base) if not v.startswith("."))
    assert found == sorted(variants), f"{run.cmdline()}\nvariant folders {found}, expected {sorted(variants)}"
    good = src.by_kind(GOOD)
    bad = src.by_kind(BAD)
    either = src.by_kind(EITHER)
    not_sample = src.by_kind(NOT_SAMPLE)
    where = {}  # EITHER key -> "sample" | "failure", must agree across variants
    for v in variants:
        m, samples = read_variant(os.path.join(base, v))
        keys = [s["__key__"] for s in samples]
        fails = {f["key"]: f for f in m["failures"]}
        desc = f"{run.cmdline()}\nsource: " + "; ".join(f"{e.key}: {e.what}" for e in src.expects) + f"\nvariant {v}: "
        assert m["complete"], desc + "manifest not complete"
        assert m["num_samples"] == len(samples), desc + f"manifest num_samples {m['num_samples']} but the tars hold {len(samples)}"
        assert len(keys) == len(set(keys)), desc + f"duplicate keys {sorted(k for k in set(keys) if keys.count(k) > 1)}"
        missing = sorted(set(good) - set(keys))
        assert not missing, desc + f"good images missing from the samples: {[(k, good[k].what, fails.get(k, {}).get('reason')) for k in missing]}"
        extra = sorted(set(keys) - set(good) - set(either))
        assert not extra, desc + f"samples that should not exist: {extra}" + \
            (f" (expected only {sorted(good)} + maybe {sorted(either)})" if extra else "")
        unlisted = sorted(k for k in bad if k not in fails)
        assert not unlisted, desc + f"bad entries not listed in failures: {[(k, bad[k].what) for k in unlisted]}; failures: {sorted(fails)}"
        for k, e in bad.items():
            assert isinstance(fails[k].get("reason"), str) and fails[k]["reason"].strip(), desc + f"failure {k} has no reason"
            if e.reason:
                assert e.reason in fails[k]["reason"], desc + f"failure {k} reason {fails[k]['reason']!r} lacks {e.reason!r}"
        both = sorted(set(fails) & set(keys))
        assert not both, desc + f"keys both a sample and a failure: {both}"
        unknown = sorted(set(fails) - set(bad) - set(either) - set(not_sample))
        assert not unknown, desc + f"failures for entries that are good: {[(k, fails[k]['reason']) for k in unknown]}"
        for k in either:
            state = "sample" if k in keys else "failure" if k in fails else "neither"
            assert state != "neither", desc + f"{k} ({either[k].what}) is neither a sample nor a failure"
            assert where.setdefault(k, state) == state, desc + f"{k} is a {state} here but a {where[k]} in another variant"
        ext = (m.get("codec") or {}).get("ext") or m.get("orig_format") or "png"
        for s in samples:
            assert ext in s and "json" in s, desc + f"sample {s['__key__']} lacks .{ext}/.json: {sorted(s)}"
        if v == "orig":
            for s in samples:
                if s["__key__"] in good and good[s["__key__"]].size:
                    if ext == "npy":
                        hw = tuple(np.load(io.BytesIO(s[ext]), allow_pickle=False).shape[:2])
                    else:
                        with Image.open(io.BytesIO(s[ext])) as im:
                            hw = (im.size[1], im.size[0])
                    assert hw == tuple(good[s["__key__"]].size), desc + f"orig {s['__key__']} is {hw}, source {good[s['__key__']].size}"
        for e in m["shards"]:
            p = os.path.join(base, v, e["name"])
            assert hashlib.sha256(open(p, "rb").read()).hexdigest() == e["sha256"], desc + f"{e['name']} sha256 differs from the manifest"
