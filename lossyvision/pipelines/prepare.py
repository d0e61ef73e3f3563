"""The prepare job: read, crop, encode with every requested setting, measure, write aligned shards.

One task per output shard index: it reads and crops each source image once, encodes it with
every codec setting, measures bytes/PSNR/SSIM/MS-SSIM, and writes shard *i* of every variant
(``orig`` and one per setting). Tasks run in-process or as Ray tasks (``num_cpus=1``, bounded in
flight, handled in completion order); the driver only updates the manifests. See docs/shards.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .. import storage
from ..codecs import Codec, CodecError, create, png_encode
from ..names import NameError_, check_name
from .cards import update_reader_files
from .crops import FULL, IMAGENET, CropError, CropPolicy, parse_crop
from .imageio import DEFAULT_MAX_PIXELS
from .joblock import JobLock
from .meanbpp import (DEFAULT_RATE_SAMPLE, RateTargetError, SampleRates, check_options, check_target, choose, load_sample,
                      sample_positions)
from .shards import (FORMAT, LEGACY_MANIFEST, MANIFEST, TarShardWriter, clean_temp_files, library_versions, load_manifest, sample_json,
                     sha256_file, shard_name, write_json_atomic)
from .sources import Item, Source, SourceError, create_source

log = logging.getLogger(__name__)

DEFAULT_CROPS = {"imagenet": IMAGENET, "samples": IMAGENET}
# Cityscapes frames cost ~4 s of CPU and ~2.3 MB of output each: 100 per shard still gives
# 30 tasks for train (docs/scale.md), where 1000 would give 3.
# SDD patches are 1200x800 (~1 MP) and INRIA frames 5000x5000 (25 MP, tens of seconds each).
DEFAULT_SHARD_SIZES = {"cityscapes": 100, "sdd": 100, "inria": 10}
# the split a dataset is prepared from when --split is not given: its evaluation split
DEFAULT_SPLITS = {"folder": "all", "samples": "all", "fashion-mnist": "test"}
# The driver rewrites the manifests at most this often (and at the end, and when interrupted):
# rewriting all of them after every shard costs O(shards^2), minutes for ImageNet train at 1024 cores.
MANIFEST_EVERY_S = 2.0
ORIG = "orig"
ORDERS = ("shuffled", "sorted")


def is_training_split(split: str) -> bool:
    """`train`, `train_extra`, `train-small`, ...: splits whose shards feed training batches."""
    return split.lower().startswith("train")


def shard_order(n: int, policy: str, seed: int) -> list[int]:
    """Positions of the n sorted keys in shard order: themselves (sorted) or a seeded permutation.

    Python's Mersenne Twister `random.Random(seed).shuffle` has been the same algorithm since Python
    3.2 and depends only on the seed and the number of keys, so the order (and the shards' bytes) is
    the same run to run, on any worker count and on any machine."""
    order = list(range(n))
    if policy == "shuffled":
        random.Random(seed).shuffle(order)
    return order


class PrepareError(ValueError):
    """Bad options or an output that cannot be resumed; the message says what to change."""


class OutputNotSharedError(RuntimeError):
    """A worker cannot see the output folder the driver created: --out is not shared by all nodes."""


@dataclass
class CodecSetting:
    """One requested variant: a codec at a native parameter ``q``, at a per-image target ``bpp``, or
    at the one parameter whose mean rate over the split is closest to ``mean_bpp`` (chosen before the
    job; the variant is then named by that parameter, e.g. bpg-qp44, see meanbpp.py)."""

    name: str
    q: Any = None
    bpp: float | None = None
    options: dict = field(default_factory=dict)
    mean_bpp: float | None = None
    rate_target: dict | None = None  # set when a mean_bpp target was resolved: the manifest's "rate_target"

    def build(self) -> Codec:
        if self.mean_bpp is not None and self.q is None:  # unresolved: the codec at its default, for checks
            return create(self.name, None, **self.options)
        return create(self.name, self.q, bpp=self.bpp, **self.options)


@dataclass
class PrepareConfig:
    dataset: str
    out: str
    src: str | None = None
    split: str | None = None  # None: "all" for folder/samples, "test" for fashion-mnist, else "val"
    codecs: list[CodecSetting] = field(default_factory=list)
    crop: str | None = None  # None: the dataset's default (imagenet/samples: resize256-center224; others: full)
    shard_size: int | None = None  # None: 100 for cityscapes (2 MB frames, seconds each), else 1000
    workers: int | None = None  # None: all CPUs of the machine or cluster
    address: str | None = None  # Ray cluster address; None: RAY_ADDRESS or a local Ray
    executor: str = "auto"  # auto: a named cluster, else in-process unless the work pays Ray's start | ray | local
    write_orig: bool = True
    # None: "npy" for training splits (uncompressed: the paired loader's decode costs nothing, 1.5x+ an
    # ImageFolder of JPEGs; ~2.4x PNG's bytes), "png" otherwise (every image reader knows it; 1.5 ms to
    # decode a 224x224 crop); "qoi" in between (tools/bench/train.py)
    orig_format: str | None = None
    store_decoded: bool = False
    ms_ssim: bool = True
    # training splits are written in a seeded random order (a shard of sorted ImageNet keys holds one
    # or two classes, and so would every batch); other splits stay sorted (docs/shards.md)
    order: str | None = None  # None: "shuffled" for training splits (train*), else "sorted"
    order_seed: int = 0  # also the seed of the --mean-bpp sample
    rate_sample: int = DEFAULT_RATE_SAMPLE  # images (seeded random) a --mean-bpp target is chosen on
    limit: int | None = None  # first N images in shard order (sorted: by key; shuffled: a seeded random subset)
    break_lock: bool = False  # take over a lease lock left by a job known to be dead on another host
    # images (and crops, scales) with more pixels are listed as failures before any decode (imageio)
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True

    def __post_init__(self) -> None:
        if self.split is None:
            self.split = DEFAULT_SPLITS.get(self.dataset, "val")
        if self.shard_size is None:
            self.shard_size = DEFAULT_SHARD_SIZES.get(self.dataset, 1000)
        if self.order is None:
            self.order = "shuffled" if is_training_split(self.split) else "sorted"
        if self.orig_format is None:
            self.orig_format = "npy" if is_training_split(self.split) else "png"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ShardTask:
    index: int
    items: list[Item]
    source: Source
    crop: CropPolicy
    settings: list[CodecSetting]
    variants: dict[str, str]  # variant name -> output folder
    write_orig: bool
    store_decoded: bool
    ms_ssim: bool
    orig_format: str = "png"
    lock_path: str = ""  # the driver's lock file: a worker that cannot see it is not on the shared output
    max_pixels: int = DEFAULT_MAX_PIXELS


_STATS = ("bytes", "bpp", "psnr", "ssim", "ms_ssim", "enc_ms", "dec_ms")


def _label_fields(task: str, label: Any) -> dict[str, bytes]:
    if task == "classification":
        return {"cls": str(int(label)).encode()}
    if task == "segmentation" and label is not None:  # None: an images-only split (Cityscapes train_extra)
        return {"seg.png": png_encode(np.ascontiguousarray(label, dtype=np.uint8), level=1)}
    return {}


ORIG_FORMATS = ("png", "qoi", "npy")


def _encode_lossless(rgb: np.ndarray, fmt: str) -> bytes:
    if fmt == "qoi":
        import imagecodecs

        return bytes(imagecodecs.qoi_encode(rgb))
    if fmt == "npy":  # uncompressed: np.save's format, which webdataset, Ray Data and HF datasets decode
        import io

        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(rgb, dtype=np.uint8), allow_pickle=False)
        return buf.getvalue()
    return png_encode(rgb, level=1)  # zlib level 1: ~3x faster than 6 for ~1 % more bytes


def _single_threaded_opencv() -> None:
    """One task uses one core (codecs are single-threaded too): OpenCV's own thread pool would
    otherwise oversubscribe the cores the other workers are using."""
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def _reason(e: BaseException) -> str:
    """The failure reason recorded in the manifest: the library's own message for the errors it
    expects, the exception type too for anything else (a codec library's own error)."""
    if isinstance(e, (SourceError, CropError, CodecError)):
        return str(e)
    if isinstance(e, MemoryError):
        return "out of memory for this image; lower --max-pixels or give the workers more memory"
    return f"{type(e).__name__}: {e}"


def load_cropped(source: Source, crop: CropPolicy, item: Item, max_pixels: int) -> tuple[np.ndarray, Any]:
    """One source image and its label as the job encodes them: read, then cropped."""
    rgb, label = source.load(item)
    rgb, label = crop(rgb, label, max_pixels=max_pixels)
    if min(rgb.shape[:2]) < 1:
        raise CropError("empty image after cropping")
    return rgb, label


def roundtrips(rgb: np.ndarray, codecs: list[Codec]) -> Iterator[tuple[Codec, Any]]:
    """(codec, round trip) of every codec, in order. Images of at most ``quality.STRIP_PIXELS``
    pixels are coded by every codec before the first is measured, so that the metrics of all
    variants run back to back and find the reference's statistics still in the CPU cache (a codec
    run in between evicts them: 1.70 against 1.96 ms per 224x224 variant, measured in the
    nine-setting loop); larger images are decoded one at a time, so that a task holds one decoded
    image, whatever the number of codecs."""
    from .. import quality

    if rgb.shape[0] * rgb.shape[1] <= quality.STRIP_PIXELS:
        done = [(codec, codec.roundtrip(rgb)) for codec in codecs]  # ~0.15 MB per variant at 224x224
        while done:
            yield done.pop(0)
    else:
        for codec in codecs:
            yield codec, codec.roundtrip(rgb)


def raise_interrupt(e: BaseException) -> None:
    """Re-raise the interrupt (KeyboardInterrupt, SystemExit) that ``e`` wraps, if any. A signal that
    arrives while compiled code runs (the numba SSIM kernel, which releases the GIL) surfaces as
    ``SystemError: ... returned a result with an exception set``, caused by the KeyboardInterrupt:
    caught as one bad image, it listed a good image as failed and the job ended with exit 0."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if not isinstance(e, Exception):
            raise e
        e = e.__cause__ or e.__context__


def _encode_item(t: ShardTask, item: Item, codecs: list[Codec], quality: Any) -> dict[str, tuple[dict, dict]]:
    """Every variant's sample of one image and its stats, or an exception: nothing is written
    until the whole image (read, crop, orig, every encode, decode and metric) has succeeded."""
    rgb, label = load_cropped(t.source, t.crop, item, t.max_pixels)
    lab = _label_fields(t.source.task, label)
    made: dict[str, tuple[dict, dict]] = {}
    if t.write_orig:
        data = _encode_lossless(rgb, t.orig_format)
        meta = {"h": int(rgb.shape[0]), "w": int(rgb.shape[1]), "source": item.ref, "bytes": len(data)}
        made[ORIG] = ({"__key__": item.key, t.orig_format: data, "json": sample_json(meta), **lab},
                      {"bytes": len(data), "bpp": len(data) * 8.0 / (rgb.shape[0] * rgb.shape[1])})
        del data
    ref = quality.Reference(rgb) if min(rgb.shape[:2]) >= quality.WIN_SIZE else None
    for codec, r in roundtrips(rgb, codecs):
        ssim, ms = ref.scores(r.decoded, t.ms_ssim) if ref is not None else (None, None)
        st = {
            "spec": codec.spec,
            "q": r.q,
            "bytes": r.bytes,
            "bpp": r.bpp(),
            "h": int(rgb.shape[0]),
            "w": int(rgb.shape[1]),
            "psnr": quality.psnr(rgb, r.decoded),
            "ssim": ssim,
            "ms_ssim": ms,
        }
        if getattr(codec, "last_over_target", False):
            st["over_target"] = True
        s = {"__key__": item.key, codec.ext: r.data, "json": sample_json(st), **lab}
        if t.store_decoded:
            s["decoded.png"] = png_encode(r.decoded, level=1)
        made[codec.spec] = (s, {**st, "enc_ms": r.enc_ms, "dec_ms": r.dec_ms})
        del r  # the decoded image is not kept past its metrics
    return made


def encode_shard(t: ShardTask) -> dict:
    """Produce shard ``t.index`` of every variant; returns the manifest entries (runs in a worker)."""
    from .. import quality

    if t.lock_path and not storage.exists(t.lock_path):
        raise OutputNotSharedError(
            f"a worker on host {_hostname()} cannot see {t.lock_path}, which the driver created: the output must be on a "
            "filesystem every node mounts at the same path, or an object-store URL such as s3://bucket/shards"
        )
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    codecs = [s.build() for s in t.settings]
    _single_threaded_opencv()
    sums: dict[str, dict[str, float]] = {v: {} for v in t.variants}
    counts: dict[str, dict[str, int]] = {v: {} for v in t.variants}
    failures: list[dict] = []

    def add(variant: str, key: str, val: float | None) -> None:
        if val is None or not np.isfinite(val):
            return
        sums[variant][key] = sums[variant].get(key, 0.0) + float(val)
        counts[variant][key] = counts[variant].get(key, 0) + 1

    # Every variant's tar is written sample by sample as images finish, so the task holds one image
    # (its crop, its encodings) at a time whatever --shard-size is; each tar appears only on commit.
    with contextlib.ExitStack() as stack:
        writers = {v: stack.enter_context(TarShardWriter(storage.join(vdir, shard_name(t.index)))) for v, vdir in t.variants.items()}
        for item in t.items:
            try:
                made = _encode_item(t, item, codecs, quality)
            except Exception as e:  # noqa: BLE001 - one image never stops the job: it is listed with the reason
                raise_interrupt(e)
                failures.append({"source": item.ref, "key": item.key, "reason": _reason(e)})
                continue
            for v, (s, st) in made.items():
                writers[v].write(s)
                for k in _STATS:
                    add(v, k, st.get(k))
            del made

        entries = {}
        for variant, w in writers.items():
            sha, size = w.commit()
            path = storage.join(t.variants[variant], shard_name(t.index))
            st = storage.stat(path)
            entries[variant] = {
                "name": shard_name(t.index),
                "index": t.index,
                "count": w.count,
                "sha256": sha,
                "size": size,
                "stamp": st.stamp if st else None,
                "first_key": w.first_key,
                "last_key": w.last_key,
                "sums": sums[variant],
                "counts": counts[variant],
                "failures": failures,
            }
    # wall and CPU seconds of the task, for tools/bench/prepare.py's account of parallel efficiency
    return {"index": t.index, "images": len(t.items), "entries": entries,
            "wall_s": time.perf_counter() - t_wall, "cpu_s": time.process_time() - t_cpu}


# -- driver -------------------------------------------------------------------------------


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _order_info(cfg: PrepareConfig) -> dict:
    return {"policy": cfg.order, "seed": cfg.order_seed if cfg.order == "shuffled" else None}


def _options_fingerprint(crop: CropPolicy, shard_size: int, codec_info: dict | None, source: Source, order: dict) -> str:
    blob = {"crop": crop.to_dict(), "shard_size": shard_size, "codec": codec_info, "source": [source.name, getattr(source, "split", "")]}
    if order["policy"] != "sorted":  # sorted shards keep the fingerprint they had before orders existed
        blob["order"] = order
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _fingerprint(keys: list[str], options_fp: str) -> str:
    """Options plus the source keys in shard order: what fixes which image lands in which shard."""
    h = hashlib.sha256(options_fp.encode())
    for k in keys:
        h.update(k.encode() + b"\0")
    return h.hexdigest()


def _source_sig(items: list[Item]) -> str:
    """What a shard was made from: keys, labels and the size/change stamp of every source file."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.key}\0{it.label}\0{it.stamp}\n".encode())
    return h.hexdigest()


def _entry_done(entry: dict | None, vdir: str, found: dict[str, storage.FileStat]) -> bool:
    """A shard is done when its file matches the manifest: same size and change stamp as when it was
    recorded (one listing per variant, so a finished ImageNet job reruns as a no-op in seconds), else
    same sha256 (a copied or touched file)."""
    if not entry:
        return False
    st = found.get(entry["name"])
    if st is None or st.size != entry["size"]:
        return False
    recorded = entry.get("stamp") or str(entry.get("mtime_ns"))
    return st.stamp == recorded or sha256_file(storage.join(vdir, entry["name"])) == entry["sha256"]


def _summarise(m: dict) -> None:
    """Fill totals, means and failures of a manifest from its shard entries."""
    entries = [e for e in m["shards"] if e]
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    fails = []
    for e in entries:
        for k, v in e.get("sums", {}).items():
            sums[k] = sums.get(k, 0.0) + v
        for k, v in e.get("counts", {}).items():
            counts[k] = counts.get(k, 0) + v
        fails.extend(e.get("failures", []))
    m["num_samples"] = sum(e["count"] for e in entries)
    m["totals"] = {"bytes": int(sums.get("bytes", 0))}
    m["means"] = {k: (sums[k] / counts[k] if counts.get(k) else None) for k in _STATS if k in sums or k in ("bytes", "bpp")}
    m["failures"] = sorted(fails, key=lambda f: f["key"])
    m["num_failures"] = len(fails)
    m["complete"] = len(entries) == m["num_shards"] and all(entries)


def _set_classes(m: dict, source: Source) -> None:
    """The manifest's class names and, for segmentation, its "segmentation" block (classes, small,
    ignore_index: what training and evaluation read)."""
    if source.classes is not None:
        m["classes"] = list(source.classes)
    if source.class_list is not None:
        m["segmentation"] = source.class_list.to_manifest()


def _resolve_crop(cfg: PrepareConfig) -> CropPolicy:
    if cfg.crop:
        return parse_crop(cfg.crop)
    return DEFAULT_CROPS.get(cfg.dataset, FULL)


def validate(cfg: PrepareConfig) -> tuple[Source, CropPolicy, list[Codec]]:
    """Check options before any work starts; raise PrepareError with what to change."""
    if cfg.shard_size < 1:
        raise PrepareError(f"--shard-size must be at least 1, got {cfg.shard_size}")
    if cfg.workers is not None and cfg.workers < 1:
        raise PrepareError(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.executor not in ("auto", "ray", "local"):
        raise PrepareError(f"executor must be auto, ray or local, got {cfg.executor!r}")
    if cfg.order not in ORDERS:
        raise PrepareError(f"--order must be one of {', '.join(ORDERS)}, got {cfg.order!r}")
    if cfg.limit is not None and cfg.limit < 1:
        raise PrepareError(f"--limit must be at least 1, got {cfg.limit}")
    if cfg.max_pixels < 1:
        raise PrepareError(f"--max-pixels must be at least 1, got {cfg.max_pixels}")
    if cfg.rate_sample < 1:
        raise PrepareError(f"--rate-sample must be at least 1, got {cfg.rate_sample}")
    if not cfg.out or not str(cfg.out).strip():
        raise PrepareError("--out is empty; give the folder (or URL) to write the shards to")
    try:
        check_name("--dataset", cfg.dataset)
        check_name("--split", cfg.split)
    except NameError_ as e:
        raise PrepareError(str(e)) from None
    if cfg.orig_format not in ORIG_FORMATS:
        raise PrepareError(f"--orig-format must be one of {', '.join(ORIG_FORMATS)}, got {cfg.orig_format!r}")
    if not cfg.codecs and not cfg.write_orig:
        raise PrepareError("nothing to write: give at least one --codec, or keep the orig variant")
    try:
        crop = _resolve_crop(cfg)
        crop.check(cfg.max_pixels)
        for s in cfg.codecs:
            if s.mean_bpp is not None:
                if s.q is not None or s.bpp is not None:
                    raise PrepareError(f"codec {s.name}: give a mean_bpp target or a parameter (q or bpp), not both")
                s.mean_bpp = check_target(s.name, s.mean_bpp)
                check_options(s.name, s.options)
        codecs = [s.build() for s in cfg.codecs]
        for c in codecs:
            check_name("codec spec", c.spec)
    except (CropError, CodecError, NameError_, RateTargetError) as e:
        raise PrepareError(str(e)) from None
    _check_distinct([c.spec for c, s in zip(codecs, cfg.codecs) if s.mean_bpp is None or s.q is not None])
    targets = [(s.name, s.mean_bpp, tuple(sorted(s.options.items()))) for s in cfg.codecs if s.mean_bpp is not None and s.q is None]
    twice = sorted({f"{n} {b:g}" for n, b, o in targets if targets.count((n, b, o)) > 1})
    if twice:
        raise PrepareError(f"--mean-bpp target(s) requested twice: {', '.join(twice)}")
    for what, url in (("--src", cfg.src), ("--out", cfg.out)):
        if url is not None and storage.is_remote(url):
            _check_backend(what, url)
    if cfg.src is not None:
        if not storage.exists(cfg.src):
            raise PrepareError(f"--src {cfg.src} does not exist")
        if not storage.is_remote(cfg.src) and not storage.is_remote(cfg.out):
            src, out = os.path.realpath(storage.local_path(cfg.src)), os.path.realpath(storage.local_path(cfg.out))
            if out == src or out.startswith(src + os.sep):
                raise PrepareError(f"--out {cfg.out} is inside --src {cfg.src}; write shards outside the source tree")
    if not storage.is_remote(cfg.out):
        out = storage.local_path(cfg.out)
        if os.path.exists(out) and not os.path.isdir(out):
            raise PrepareError(f"--out {cfg.out} is a file, not a folder; give a folder to write the shards to")
    try:
        source = create_source(cfg.dataset, cfg.src, cfg.split, max_pixels=cfg.max_pixels)
    except SourceError as e:
        raise PrepareError(str(e)) from None
    try:  # setup errors (learned-codec weights missing) fail here, before any work, not once per image
        for c in codecs:
            c.check_ready()
    except CodecError as e:
        raise PrepareError(str(e)) from None
    return source, crop, codecs


def _check_distinct(specs: list[str]) -> None:
    dup = sorted({s for s in specs if specs.count(s) > 1})
    if dup:
        raise PrepareError(f"codec setting(s) requested twice: {', '.join(dup)}")


def resolve_rate_targets(cfg: PrepareConfig, source: Source, crop: CropPolicy, items: list[Item],
                         on_choice: Callable[[CodecSetting], None] | None = None) -> list[CodecSetting]:
    """cfg.codecs with every mean_bpp target replaced by the setting at the parameter chosen for it
    on a seeded sample of ``items`` (the job's images): see meanbpp.py. Two targets that choose the
    same parameter give one variant (a warning), whose record names the first."""
    pending = {id(s) for s in cfg.codecs if s.mean_bpp is not None and s.q is None}
    if not pending:
        return list(cfg.codecs)
    ordered = sorted(items, key=lambda it: it.key)
    picked = [ordered[i] for i in sample_positions(len(ordered), cfg.rate_sample, cfg.order_seed)]
    images = load_sample(picked, lambda it: load_cropped(source, crop, it, cfg.max_pixels)[0], lambda it: it.key)
    if not images:
        raise PrepareError(f"--mean-bpp: none of the {len(picked)} sample images could be read and cropped; "
                           "check --src, --crop and --max-pixels")
    rates = SampleRates(images)
    out: list[CodecSetting] = []
    chosen: dict[str, CodecSetting] = {}
    for s in cfg.codecs:
        if id(s) not in pending:
            out.append(s)
            continue
        try:
            rec = choose(s.name, s.options, float(s.mean_bpp), rates, cfg.order_seed, len(items))
        except RateTargetError as e:
            raise PrepareError(str(e)) from None
        r = CodecSetting(s.name, q=rec["chosen"], options=dict(s.options), mean_bpp=s.mean_bpp, rate_target=rec)
        spec = r.build().spec
        if spec in chosen:
            log.warning("--mean-bpp %g for %s chooses %s, as %g does: writing it once", s.mean_bpp, s.name, spec,
                        chosen[spec].mean_bpp)
            chosen[spec].rate_target.setdefault("also_targets", []).append(float(s.mean_bpp))
            continue
        chosen[spec] = r
        out.append(r)
        if on_choice is not None:
            on_choice(r)
    return out


def _check_backend(what: str, url: str) -> None:
    import fsspec

    proto = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(proto)
    except (ImportError, ValueError) as e:
        extra = storage.BACKEND_EXTRAS.get(proto)
        hint = f"pip install 'lossyvision[{extra}]'" if extra else "install the fsspec backend for it"
        raise PrepareError(f"{what} {url}: no filesystem for '{proto}://' ({e}); {hint}") from None


def _source_change_message(vdir: str, old: dict, chunks: list[list[Item]], n_items: int) -> str:
    """Say how the source list differs from the one a manifest was made from."""
    old_n = old.get("num_sources")
    first = None
    for i, e in enumerate(old.get("shards", [])):
        if e and (i >= len(chunks) or (e.get("first_key"), e.get("last_key")) != (chunks[i][0].key, chunks[i][-1].key)):
            first = i
            break
    what = f"{old_n} images then, {n_items} now" if old_n is not None else f"{n_items} images now"
    where = f"; the first shard that differs is {shard_name(first)}" if first is not None else ""
    return (f"the source list changed since {vdir} was written ({what}{where}). Shards are cut from the (sorted or seeded-shuffled) key list, so every "
            "later shard would hold other images; write to a new --out, or delete that folder to rebuild it")


def prepare_shards(cfg: PrepareConfig, on_rate_choice: Callable[[CodecSetting], None] | None = None) -> dict[str, dict]:
    """Run the job; returns the final manifest of every variant. Resumes an interrupted run.

    ``cfg.src`` and ``cfg.out`` may be local paths or fsspec URLs (``s3://bucket/shards``). One job
    per output at a time (a lock in ``<out>/<dataset>/<split>/``). ``on_rate_choice`` is called with
    each resolved --mean-bpp setting (its ``rate_target`` record) before any shard is written."""
    t_start = time.perf_counter()
    source, crop, _ = validate(cfg)
    base = storage.join(cfg.out, cfg.dataset, cfg.split)
    with JobLock(base, break_lock=cfg.break_lock) as lock:
        return _prepare_locked(cfg, source, crop, base, lock.path, t_start, on_rate_choice)


def _prepare_locked(cfg: PrepareConfig, source: Source, crop: CropPolicy, base: str, lock_path: str, t_start: float,
                    on_rate_choice: Callable[[CodecSetting], None] | None = None) -> dict[str, dict]:
    items = sorted(source.items(), key=lambda it: it.key)  # sources list sorted already; the order must not depend on it
    items = [items[i] for i in shard_order(len(items), cfg.order, cfg.order_seed)]
    if cfg.limit:
        items = items[: cfg.limit]
    if not items:
        raise PrepareError(f"no images found for dataset '{cfg.dataset}' split '{cfg.split}' under {cfg.src}")
    settings = resolve_rate_targets(cfg, source, crop, items, on_rate_choice)
    codecs = [s.build() for s in settings]
    _check_distinct([c.spec for c in codecs])
    targets = {c.spec: s.rate_target for c, s in zip(codecs, settings) if s.rate_target is not None}
    keys = [it.key for it in items]
    variants: dict[str, str] = {}
    infos: dict[str, dict | None] = {}
    if cfg.write_orig:
        variants[ORIG] = storage.join(base, ORIG)
        infos[ORIG] = None
    for c in codecs:
        variants[c.spec] = storage.join(base, c.spec)
        infos[c.spec] = c.info()
    chunks = [items[i : i + cfg.shard_size] for i in range(0, len(items), cfg.shard_size)]
    n = len(chunks)
    sigs = [_source_sig(ch) for ch in chunks]
    versions = library_versions()

    manifests: dict[str, dict] = {}
    found: dict[str, dict[str, storage.FileStat]] = {}
    for v, vdir in variants.items():
        storage.makedirs(vdir)
        clean_temp_files(vdir)
        ofp = _options_fingerprint(crop, cfg.shard_size, infos[v] if v != ORIG else {"orig_format": cfg.orig_format}, source,
                                   _order_info(cfg))
        fp = _fingerprint(keys, ofp)
        old = load_manifest(vdir)  # ManifestError (exit 1) when it is not valid JSON or not ours
        if old is not None and old.get("fingerprint") != fp:
            if old.get("options_fingerprint") == ofp:
                raise PrepareError(_source_change_message(vdir, old, chunks, len(items)))
            raise PrepareError(
                f"{vdir} holds shards made with other options (crop, shard size, codec or its library version) or from "
                "another source; write to a new --out, or delete that folder to rebuild it"
            )
        m = old or {
            "format": FORMAT,
            "dataset": cfg.dataset,
            "split": cfg.split,
            "variant": v,
            "task": source.task,
            "classes": None,
            "codec": infos[v],
            "orig_format": cfg.orig_format if v == ORIG else None,
            "crop": crop.to_dict(),
            "source": source.describe(),
            "shard_size": cfg.shard_size,
            "order": _order_info(cfg),
            "num_shards": n,
            "num_sources": len(items),
            "fingerprint": fp,
            "options_fingerprint": ofp,
            "shards": [None] * n,
        }
        m["config"] = {k: val for k, val in cfg.to_dict().items() if k not in ("progress",)}
        if v in targets:
            m["rate_target"] = targets[v]
        m["versions"] = {**versions, **((infos[v] or {}).get("versions") or {})}
        manifests[v] = m
        found[v] = dict(storage.walk_files(vdir, (".tar",)))

    changed = [i for i in range(n) if any((manifests[v]["shards"][i] or {}).get("source_sig", sigs[i]) != sigs[i] for v in variants)]
    if changed:
        # Unlist them before any rebuild starts: a job killed during the rebuild must not leave old and new mixed.
        log.warning("%d shard(s) hold source images that changed since they were written (%s%s); rebuilding them",
                    len(changed), ", ".join(shard_name(i) for i in changed[:5]), ", ..." if len(changed) > 5 else "")
        for v, vdir in variants.items():
            for i in changed:
                manifests[v]["shards"][i] = None
            _summarise(manifests[v])
            write_json_atomic(storage.join(vdir, MANIFEST), manifests[v])
    pending = [i for i in range(n) if not all(_entry_done(manifests[v]["shards"][i], variants[v], found[v]) for v in variants)]
    pending_set = set(pending)
    done_images = sum(len(chunks[i]) for i in range(n) if i not in pending_set)
    log.info("%d images in %d shards x %d variants; %d shards to do", len(items), n, len(variants), len(pending))

    last_write = [time.monotonic()]

    def write_manifests() -> None:
        for v, vdir in variants.items():
            _set_classes(manifests[v], source)
            _summarise(manifests[v])
            write_json_atomic(storage.join(vdir, MANIFEST), manifests[v])
        last_write[0] = time.monotonic()

    def on_result(res: dict) -> None:
        i = res["index"]
        # machine-readable on purpose: tools/bench/prepare.py reads it for its parallel-efficiency account
        log.debug("task done: shard=%d images=%d wall_s=%.4f cpu_s=%.4f", i, res["images"], res.get("wall_s", 0.0), res.get("cpu_s", 0.0))
        for v, entry in res["entries"].items():
            entry["source_sig"] = sigs[i]
            manifests[v]["shards"][i] = entry
        if time.monotonic() - last_write[0] >= MANIFEST_EVERY_S:
            write_manifests()

    tasks = (ShardTask(i, chunks[i], source, crop, settings, variants, cfg.write_orig, cfg.store_decoded, cfg.ms_ssim, cfg.orig_format, lock_path,
                       cfg.max_pixels)
             for i in pending)
    if pending:
        try:
            _run(cfg, tasks, len(pending), on_result, total_images=len(items), done_images=done_images)
        except BaseException:
            try:  # record what did finish, so a rerun does not redo it (a full disk may refuse this too)
                write_manifests()
            except Exception as e:  # info, not a warning: the error that stops the job is the one line the user sees
                log.info("could not record the finished shards in the manifests: %s", e)
            for vdir in variants.values():  # tars of tasks that were cancelled mid-write (this job holds the lock)
                clean_temp_files(vdir)
            raise
    for v in variants:
        clean_temp_files(variants[v])  # left by tasks whose worker or node died and that ran again elsewhere
        _set_classes(manifests[v], source)
        _summarise(manifests[v])
        manifests[v]["wall_s"] = round(time.perf_counter() - t_start, 3)
        write_json_atomic(storage.join(variants[v], MANIFEST), manifests[v])
        # a folder written under the manifest's earlier name is renamed by any rerun (Ray Data reads every other file as a tar)
        storage.remove(storage.join(variants[v], LEGACY_MANIFEST))
    update_reader_files(storage.join(cfg.out, cfg.dataset))
    return manifests


# Starting a local Ray costs 3-5 s here and two workers then halve the remaining time, so Ray pays
# once about 10 s of single-process work remain (tools/bench/prepare.py: break-even ~340-450 JPEG images).
RAY_WORTH_S = 10.0


def _run(cfg: PrepareConfig, tasks, n_tasks: int, on_result: Callable[[dict], None], total_images: int, done_images: int) -> None:
    """Run tasks in-process or on Ray. ``auto`` joins a cluster when one is named; otherwise it runs
    the first shard in-process, and moves the rest to a local Ray only if they would take longer
    than RAY_WORTH_S on one core, so small jobs never pay Ray's start-up."""
    from tqdm import tqdm

    workers = cfg.workers or os.cpu_count() or 1
    cluster = bool(cfg.address or os.environ.get("RAY_ADDRESS"))
    use_ray = cfg.executor == "ray" or (cfg.executor == "auto" and cluster)
    bar = tqdm(total=total_images, initial=done_images, unit="img", desc="prepare-shards",
               disable=None if cfg.progress else True, dynamic_ncols=True)  # None: off when stderr is not a terminal
    tasks = iter(tasks)
    try:
        if not use_ray:
            left = n_tasks
            t0 = time.perf_counter()
            for t in tasks:
                res = encode_shard(t)
                on_result(res)
                bar.update(res["images"])
                left -= 1
                per_task = (time.perf_counter() - t0) / (n_tasks - left)
                if cfg.executor == "auto" and workers > 1 and left > 1 and per_task * left > RAY_WORTH_S:
                    log.info("about %.0f s of work left: moving to Ray with %d workers", per_task * left, workers)
                    use_ray = True
                    break
        if use_ray:
            from .raypool import run_ray

            for res in run_ray(encode_shard, tasks, workers=cfg.workers, address=cfg.address):
                on_result(res)
                bar.update(res["images"])
    finally:
        bar.close()
