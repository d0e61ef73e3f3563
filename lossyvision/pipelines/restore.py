"""restore-shards: run a trained restoration generator over a variant and write an aligned variant.

The output variant (``<variant>+restored`` by default) holds, per sample, the restored image
as lossless PNG (``<key>.png``), the label copied from the source and a ``json`` whose
``bytes``/``bpp`` are those of the *source bitstream* (restoration happens at the receiver, so
the rate is what was transmitted) and whose ``psnr``/``ssim``/``ms_ssim`` compare the restored
image with ``orig`` (and ``ms_ssim_db``, paper 2's Table III scale). Its manifest has ``codec:
null`` (the member to read is ``png``, like ``orig``) and a ``restored_from`` block naming the
source variant, its codec and the generator. Any network of `lossyvision.nets.restoration`
(the GAN's FineNet, the RDN baseline) restores the same way. A split whose keys overlap the
generator's training keys is refused unless ``allow_overlap``.

Pipeline (``workers > 0``, the default): a thread decodes the source bitstreams ahead of the
generator, the generator runs whole frames in the calling thread, and a pool of ``workers``
threads decodes the reference, measures PSNR / SSIM / MS-SSIM and PNG-encodes behind it, with at
most ``in_flight`` images between the generator and the shard writer (the memory bound). Samples
reach the writer in source order, so the shards are byte-identical to the serial path
(``workers=0``). Tiling runs only when asked (``tile``) or for a frame that runs out of GPU memory
whole (retried once in tiles, logged, and recorded in its json as ``tiled_after_oom``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lossyvision import accel, storage
from lossyvision.nets.restoration import build_restoration_net, net_stride

log = logging.getLogger(__name__)

@dataclass
class RestoreConfig:
    shards: str = ""              # ROOT/<dataset>, e.g. ROOT/cityscapes (a local path or an fsspec URL)
    variant: str = ""             # source (compressed) variant, e.g. bpg-qp41
    generator: str = ""           # generator.pt written by train-restoration
    split: str = "train"
    out_variant: str | None = None  # default: "<variant>+restored"
    orig_variant: str = "orig"    # for PSNR/SSIM vs the original; skipped when absent
    tile: int = 0                 # 0: whole image at once; else core tile side (multiple of 8)
    overlap: int = 64             # context added around each tile and cropped away (multiple of 8)
    device: str | None = None
    amp: bool = True              # autocast on CUDA: bf16 where native (cc >= 8), else fp16
    png_level: int = 1            # zlib level of the restored PNGs (docs/shards.md: level 1)
    overwrite: bool = False       # rewrite shards written by another generator
    allow_overlap: bool = False   # restore even keys the generator was trained on (else refused)
    max_pixels: int | None = None  # None: lossyvision.pipelines.imageio.DEFAULT_MAX_PIXELS
    quiet: bool = False           # no progress bar (it is off anyway when stderr is not a terminal)
    workers: int | None = None    # threads measuring + PNG-encoding behind the generator (None: CPUs - 1, 1 to 4);
    #                               0: the serial path (decode, restore, encode one image at a time)
    in_flight: int | None = None  # most restored images not yet written (None: 2 x workers): bounds memory

    def __post_init__(self) -> None:
        from lossyvision.names import check_name
        from lossyvision.pipelines.stream import check_limits

        # every name becomes a path component under --shards: checked before anything is created
        for what, name in (("--variant", self.variant), ("--split", self.split), ("--orig-variant", self.orig_variant),
                           ("--out-variant", self.out_variant)):
            if name:
                check_name(what, name)
        if self.variant:
            check_name("--out-variant", self.output_variant)
        check_limits(tile=(self.tile, 0), overlap=(self.overlap, 0), max_pixels=self.max_pixels,
                     workers=(self.workers, 0), in_flight=self.in_flight)

    def resolved_workers(self) -> tuple[int, int]:
        """(workers, in_flight) with the defaults filled in."""
        workers = self.workers
        if workers is None:  # one core left to the thread that feeds the GPU and the decode thread
            workers = max(1, min(4, len(os.sched_getaffinity(0)) - 1)) if hasattr(os, "sched_getaffinity") \
                else max(1, min(4, (os.cpu_count() or 2) - 1))
        return workers, self.in_flight or max(2 * workers, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def output_variant(self) -> str:
        return self.out_variant or f"{self.variant}+restored"


# -- inference ---------------------------------------------------------------------------------

def _pad_to_stride(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = -h % stride, -w % stride
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


@torch.no_grad()
def restore_tensor(generator: torch.nn.Module, x: torch.Tensor, tile: int = 0, overlap: int = 64) -> torch.Tensor:
    """Restore Nx3xHxW in [-1, 1] (any H, W); ``tile > 0`` processes tile x tile cores.

    Each core is run with ``overlap`` pixels of real context on every side (clipped at the
    image border) and only the core is kept, so convolution borders never reach the output.
    Cores and context start on multiples of 8, the generator's stride, so every tile sees the
    same sampling grid as the whole image: with a purely convolutional generator the result
    equals whole-image inference wherever the receptive field fits in ``overlap``. Instance
    norm computes its statistics per tile, which makes tiles differ slightly from the whole
    image; large tiles (1024) keep that difference small. The stride is the network's own
    (``generator.stride``: FineNet 8, RDN 1).
    """
    S = net_stride(generator)
    if tile <= 0:
        xp, h, w = _pad_to_stride(x, S)
        return generator(xp)[..., :h, :w]
    if tile % S or overlap % S:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of {S}")
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            bottom, right = min(top + tile, h), min(left + tile, w)
            t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
            t1, l1 = min(bottom + overlap, h), min(right + overlap, w)
            window, wh, ww = _pad_to_stride(x[..., t0:t1, l0:l1], S)
            y = generator(window)[..., :wh, :ww]
            out[..., top:bottom, left:right] = y[..., top - t0:bottom - t0, left - l0:right - l0]
    return out


def restore_image(generator: torch.nn.Module, rgb: np.ndarray, device: torch.device,
                  tile: int = 0, overlap: int = 64, amp: bool = True) -> np.ndarray:
    """uint8 HxWx3 RGB -> restored uint8 HxWx3 RGB. Autocast on CUDA only (``amp``): bf16 where the
    GPU runs it natively, else fp16 (`lossyvision.accel.amp_dtype`). The frame travels as uint8
    both ways (a quarter of the float bytes)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(device).float() / 127.5 - 1
    with accel.autocast(device, accel.amp_dtype(device, None if amp else False)):
        y = restore_tensor(generator, x, tile, overlap).float()
    y = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y[0].permute(1, 2, 0).cpu().numpy()


def oom_tile(h: int, w: int, stride: int = 8) -> int:
    """The tile side for a frame that ran out of memory whole: half its long side, rounded up to the
    stride, at most 1024 (large tiles keep instance-norm statistics close to the whole frame's)."""
    half = -(-max(h, w) // 2)
    return max(stride, min(1024, -(-half // stride) * stride))


def restore_frame(generator: torch.nn.Module, rgb: np.ndarray, device: torch.device, tile: int = 0,
                  overlap: int = 64, amp: bool = True, key: str = "") -> tuple[np.ndarray, int]:
    """`restore_image`, and the tile side used after an out-of-memory error on the whole frame
    (0: none). Whole frames are the default because tiles change instance-norm statistics; a frame
    that does not fit is retried once in `oom_tile` tiles, with a log line."""
    try:
        return restore_image(generator, rgb, device, tile, overlap, amp), 0
    except torch.OutOfMemoryError:
        if tile:
            raise
    # outside the except block, so the failed attempt's tensors are freed before the retry
    if device.type == "cuda":
        torch.cuda.empty_cache()
    t = oom_tile(*rgb.shape[:2], net_stride(generator))
    log.warning("restore %s: the whole %dx%d frame ran out of %s memory; restoring it in %d-pixel tiles "
                "(overlap %d)", key, rgb.shape[1], rgb.shape[0], device.type, t, overlap)
    return restore_image(generator, rgb, device, t, overlap, amp), t


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A restoration network written by train-restoration (``generator.pt`` or a full ``last.pt``),
    in eval mode, and the checkpoint dict (arch, step, config, train_keys, ...)."""
    from lossyvision.pipelines.stream import OptionError, first_line

    if not os.path.isfile(path):
        raise FileNotFoundError(f"generator checkpoint {path} not found (train-restoration writes "
                                "OUT/generator.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except MemoryError:
        raise
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ValueError, ... here
        raise OptionError(f"--generator {path} is not a PyTorch checkpoint ({type(e).__name__}: "
                          f"{first_line(e, 200)})") from None
    if not isinstance(ckpt, dict) or "generator" not in ckpt or "arch" not in ckpt:
        raise OptionError(f"{path} is not a restoration checkpoint (no 'generator'/'arch' entries); pass the "
                          "generator.pt that train-restoration wrote")
    g = build_restoration_net(ckpt["arch"])
    g.load_state_dict(ckpt["generator"])
    return g.to(device).eval(), ckpt


# -- writing -----------------------------------------------------------------------------------

def _mean(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _paired(source: str, orig: str | None, source_check: tuple = (None, None),
            orig_check: tuple = (None, None)) -> Iterator[tuple[dict, dict | None]]:
    """Aligned samples of a source shard and its orig shard; each `(size, sha256)` from its manifest is checked."""
    from lossyvision.pipelines.stream import ShardError, iter_tar_samples

    oit = iter_tar_samples(orig, *orig_check) if orig is not None else None
    for s in iter_tar_samples(source, *source_check):
        o = None
        if oit is not None:
            o = next(oit, None)
            if o is None or o["__key__"] != s["__key__"]:
                raise ShardError(f"{os.path.basename(source)}: key {s['__key__']!r} has no aligned sample in {orig} "
                                 f"(found {None if o is None else o['__key__']!r})")
        yield s, o


# -- overlap -------------------------------------------------------------------------------------

_END = object()  # the producer thread's last item


def prefetch(items: Iterable, depth: int) -> Iterator:
    """``items`` produced by a background thread, at most ``depth`` ahead of the consumer, in order;
    an exception in the producer is raised in the consumer at its place in the sequence. Closing the
    returned generator stops the producer."""
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _END))
        except BaseException as e:  # handed to the consumer, raised there
            put((False, e))

    thread = threading.Thread(target=produce, name="restore-decode", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


class Marker:
    """An item that `ordered_map` passes through unchanged (here: the end of a shard)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def ordered_map(fn: Callable, items: Iterable, pool: concurrent.futures.Executor, max_in_flight: int) -> Iterator:
    """``fn(item)`` for each item, computed in ``pool``, yielded in input order; `Marker` items pass
    through. At most ``max_in_flight`` items are taken from ``items`` and not yet yielded, so the
    memory held is bounded and ``items`` (the generator's output) runs at most that far ahead."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(item if isinstance(item, Marker) else pool.submit(fn, item))
        while len(pending) >= max_in_flight or (pending and isinstance(pending[0], Marker)):
            head = pending.popleft()
            yield head if isinstance(head, Marker) else head.result()
    while pending:
        head = pending.popleft()
        yield head if isinstance(head, Marker) else head.result()


@dataclass
class _Decoded:
    """One source sample, decoded (the stage before the generator)."""

    source: dict
    orig: dict | None
    rgb: np.ndarray
    dec_ms: float
    ref: np.ndarray | None = None   # decoded here only when the reference needs a codec (else in `_finish`)
    restored: np.ndarray | None = None
    restore_ms: float = 0.0
    tiled: int = 0


@dataclass
class _Finished:
    out: dict                       # the sample as written
    stats: dict                     # its json, parsed
    dec_ms: float
    restore_ms: float


def _decode_source(s: dict, o: dict | None, src, orig, codecs: dict, max_pixels: int, shard: str) -> _Decoded:
    from lossyvision.pipelines.stream import ShardError, decode_image, first_line

    key = s["__key__"]
    try:
        t = time.perf_counter()
        rgb = decode_image(s, src, codecs, max_pixels)
    except Exception as e:  # a decoder's own error type, or over --max-pixels
        raise ShardError(f"{shard}: sample {key!r} does not decode ({type(e).__name__}: {first_line(e)})") from None
    item = _Decoded(s, o, rgb, (time.perf_counter() - t) * 1e3)
    if o is not None and orig.spec is not None:  # a codec object: decoded in this thread, like the source
        item.ref = decode_image(o, orig, codecs, max_pixels)
    return item


def _finish(item: _Decoded, orig, png_level: int, variant: str, spec: str | None, max_pixels: int) -> _Finished:
    """Everything after the generator, on the CPU: the reference, PNG, metrics, the sample json."""
    from lossyvision.codecs import png_encode
    from lossyvision.pipelines.shards import sample_json
    from lossyvision.pipelines.stream import decode_image
    from lossyvision.quality import Reference, ms_ssim_db, psnr

    s, o, restored = item.source, item.orig, item.restored
    meta = json.loads(s["json"]) if "json" in s else {}
    h, w = restored.shape[:2]
    ref = item.ref if item.ref is not None or o is None else decode_image(o, orig, {}, max_pixels)
    png = png_encode(restored, png_level)
    # SSIM and MS-SSIM share their full-scale pass: the values of quality.ssim / quality.ms_ssim, in half the time
    ss, ms = Reference(restored).scores(ref) if ref is not None else (None, None)
    stats = {
        "bytes": meta.get("bytes"), "bpp": meta.get("bpp"), "h": h, "w": w,
        "psnr": psnr(restored, ref) if ref is not None else None,
        "ssim": ss, "ms_ssim": ms, "ms_ssim_db": ms_ssim_db(ms),
        "q": meta.get("q"), "spec": meta.get("spec", spec), "source_variant": variant,
        "source_psnr": meta.get("psnr"), "source_ssim": meta.get("ssim"),
        "source_ms_ssim": meta.get("ms_ssim"), "source_ms_ssim_db": ms_ssim_db(meta.get("ms_ssim")),
        "png_bytes": len(png),
    }
    if item.tiled:
        stats["tiled_after_oom"] = item.tiled
    out = {"__key__": s["__key__"], "png": png, "json": sample_json(stats)}
    for ext in ("cls", "seg.png"):
        if ext in s or (o is not None and ext in o):
            out[ext] = s[ext] if ext in s else o[ext]
    return _Finished(out, json.loads(out["json"]), item.dec_ms, item.restore_ms)


def _fixed_shapes(manifest: dict) -> bool:
    """Whether every frame has one size, so that cudnn.benchmark's autotuning (once per input shape)
    pays off: a crop policy that fixes the size, or Cityscapes (1024x2048 throughout)."""
    crop = manifest.get("crop") or {}
    return bool((crop.get("crop_w") and crop.get("crop_h")) or (crop.get("scale_w") and crop.get("scale_h"))
                or manifest.get("dataset") == "cityscapes")


def _intact(path: str, sha256: str) -> bool:
    """True when a shard a previous run finished is still there with the sha256 its manifest records."""
    from lossyvision.pipelines.shards import sha256_file

    return storage.isfile(path) and sha256_file(path) == sha256


def restore_shards(cfg: RestoreConfig, progress: bool = True) -> dict:
    """Write ``<shards>/<split>/<output_variant>``; return its manifest. Reruns skip finished shards.

    A progress bar counts images (off with ``cfg.quiet`` or ``progress=False``, and when stderr is not
    a terminal); each shard written logs an INFO line with the rate and ETA."""
    from lossyvision.pipelines.shards import (FORMAT, LEGACY_MANIFEST, MANIFEST, has_manifest, library_versions,
                                              manifest_path, sha256_file, write_json_atomic, write_tar_atomic)
    from lossyvision.pipelines.stream import read_variant, resolve_device, variant_dir
    from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS
    from lossyvision.progress import progress as progress_bar, rate_eta
    from lossyvision.pipelines.trainkeys import check_overlap, variant_keys

    if not cfg.shards or not cfg.variant or not cfg.generator:
        raise ValueError("shards, variant and generator are required")
    if cfg.variant == cfg.orig_variant:
        raise ValueError(f"variant {cfg.variant!r} is the original; restore a compressed variant")
    max_pixels = cfg.max_pixels or DEFAULT_MAX_PIXELS
    split_dir = storage.join(cfg.shards, cfg.split)
    src = read_variant(variant_dir(split_dir, cfg.variant))
    orig = None
    if has_manifest(storage.join(split_dir, cfg.orig_variant)):
        orig = read_variant(storage.join(split_dir, cfg.orig_variant))
        from lossyvision.pipelines.stream import check_aligned
        check_aligned(orig, src)
    else:
        log.warning("no %s variant under %s: psnr/ssim vs the original are left null", cfg.orig_variant, split_dir)

    device = resolve_device(cfg.device)
    accel.configure_backends(device, fixed_shapes=_fixed_shapes(src.manifest))
    generator, ckpt = load_generator(cfg.generator, device)
    overlap = check_overlap(ckpt.get("train_keys"), variant_keys(variant_dir(split_dir, cfg.variant)), cfg.split,
                            str(cfg.generator), cfg.allow_overlap)
    gen_sha = sha256_file(str(cfg.generator))
    out_dir = storage.join(split_dir, cfg.output_variant)
    storage.makedirs(out_dir)
    mpath = storage.join(out_dir, MANIFEST)
    previous_path = manifest_path(out_dir)  # a run before the rename wrote manifest.json
    previous = json.loads(storage.read_text(previous_path)) if storage.isfile(previous_path) else None
    done: dict[str, dict] = {}
    if previous is not None:
        prev_sha = (previous.get("restored_from") or {}).get("generator_sha256")
        if prev_sha != gen_sha and not cfg.overwrite:
            raise ValueError(f"{out_dir} was written by another generator (sha256 {str(prev_sha)[:12]}...); "
                             "pass overwrite=True (--overwrite) or choose another out_variant")
        if prev_sha == gen_sha:
            done = {s["name"]: s for s in previous.get("shards", []) if _intact(storage.join(out_dir, s["name"]), s["sha256"])}

    src_codec = src.manifest.get("codec")
    manifest = {
        "format": FORMAT, "dataset": src.manifest.get("dataset"), "split": src.manifest.get("split", cfg.split),
        "variant": cfg.output_variant, "task": src.task, "codec": None,
        "restored_from": {"variant": cfg.variant, "codec": src_codec, "generator": str(cfg.generator),
                          "generator_sha256": gen_sha, "generator_arch": ckpt.get("arch"),
                          "generator_step": ckpt.get("step"),
                          "generator_recipe": (ckpt.get("config") or {}).get("recipe"),
                          "generator_train_split": (ckpt.get("train_keys") or {}).get("split"),
                          "train_key_overlap": None if overlap < 0 else overlap,
                          "tile": cfg.tile, "overlap": cfg.overlap},
        "crop": src.manifest.get("crop"), "config": cfg.to_dict(), "versions": library_versions("torch"),
        "shard_size": src.manifest.get("shard_size"), "shards": [], "num_samples": 0,
        "totals": {}, "means": {}, "failures": [], "complete": False,
    }
    if src.classes:
        manifest["classes"] = list(src.classes)
    per_sample: dict[str, list] = {k: [] for k in ("bytes", "bpp", "psnr", "ssim", "ms_ssim", "ms_ssim_db",
                                                   "source_psnr", "source_ssim", "source_ms_ssim",
                                                   "source_ms_ssim_db")}
    codecs: dict = {}  # spec -> codec, built on first use (by the decode thread only)
    workers, in_flight = cfg.resolved_workers()
    todo = [info for info in src.shards if info.name not in done]
    oom_keys: list[str] = []
    manifest["restored_from"]["tiled_after_oom"] = oom_keys  # keys restored in tiles after a GPU OOM

    def decoded() -> Iterator[_Decoded | Marker]:
        """Every sample of the shards to write, decoded, in order; a Marker after each shard."""
        for info in todo:
            opath = orig.shard_path(info.name) if orig is not None else None
            ocheck = next(((o.size, o.sha256) for o in orig.shards if o.name == info.name), (None, None)) \
                if orig is not None else (None, None)
            for s, o in _paired(src.shard_path(info.name), opath, (info.size, info.sha256), ocheck):
                yield _decode_source(s, o, src, orig, codecs, max_pixels, src.shard_path(info.name))
            yield Marker(info.name)

    def restored(items: Iterable) -> Iterator[_Decoded | Marker]:
        """The generator's stage, in this thread (the one that owns the device)."""
        for item in items:
            if not isinstance(item, Marker):
                t = time.perf_counter()
                item.restored, item.tiled = restore_frame(generator, item.rgb, device, cfg.tile, cfg.overlap,
                                                          cfg.amp, item.source["__key__"])
                item.restore_ms = (time.perf_counter() - t) * 1e3
                item.rgb = None  # the source pixels are not needed after the generator
                if item.tiled:
                    oom_keys.append(item.source["__key__"])
            yield item

    def finish(item: _Decoded) -> _Finished:
        return _finish(item, orig, cfg.png_level, cfg.variant, src.spec, max_pixels)

    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="restore-encode") if workers else None
    if pool is None:  # serial: one image at a time through every stage
        source = decoded()
        stream = (item if isinstance(item, Marker) else finish(item) for item in restored(source))
    else:
        source = prefetch(decoded(), in_flight)
        stream = ordered_map(finish, restored(source), pool, in_flight)
    t0, restored_here = time.perf_counter(), 0
    try:
        with progress_bar(total=src.num_samples, desc=f"restore {cfg.variant}", unit="img",
                          quiet=cfg.quiet or not progress, leave=True) as bar:
            for index, info in enumerate(src.shards):
                entry_stats: list[dict] = []
                if info.name in done:
                    entry = done[info.name]
                    # the per-sample stats of a skipped shard come back from its own json members
                    from lossyvision.pipelines.stream import iter_tar_samples
                    entry_stats = [json.loads(s["json"]) for s in iter_tar_samples(storage.join(out_dir, info.name))]
                    bar.update(entry["count"])
                else:
                    restore_ms, dec_ms, keys = [], [], []

                    def samples() -> Iterator[dict]:
                        for r in stream:
                            if isinstance(r, Marker):  # this shard's last sample was the one before
                                return
                            keys.append(r.out["__key__"])
                            dec_ms.append(r.dec_ms)
                            restore_ms.append(r.restore_ms)
                            entry_stats.append(r.stats)
                            bar.update(1)
                            yield r.out

                    sha, size = write_tar_atomic(storage.join(out_dir, info.name), samples())
                    if len(keys) != info.count:
                        raise ValueError(f"{src.shard_path(info.name)}: holds {len(keys)} samples, manifest says {info.count}")
                    entry = {"name": info.name, "index": index, "count": len(keys), "sha256": sha, "size": size, "first_key": keys[0] if keys else None,
                             "last_key": keys[-1] if keys else None, "enc_ms": _mean(restore_ms), "dec_ms": _mean(dec_ms),
                             "failures": 0}
                    restored_here += len(keys)
                    log.info("restore %s: shard %d/%d done (%s)", cfg.variant, index + 1, len(src.shards),
                             rate_eta(restored_here, time.perf_counter() - t0,
                                      src.num_samples - sum(e["count"] for e in manifest["shards"]) - len(keys), "img"))
                manifest["shards"].append(entry)
                for st in entry_stats:
                    for k in per_sample:
                        per_sample[k].append(st.get(k))
                manifest["num_samples"] = sum(s["count"] for s in manifest["shards"])
                manifest["totals"] = {"bytes": int(sum(v for v in per_sample["bytes"] if v is not None))}
                manifest["means"] = {k: _mean(v) for k, v in per_sample.items()}
                manifest["means"]["enc_ms"] = _mean([s.get("enc_ms") for s in manifest["shards"]])
                manifest["means"]["dec_ms"] = _mean([s.get("dec_ms") for s in manifest["shards"]])
                write_json_atomic(mpath, manifest)  # after every shard, so a killed run resumes
    finally:
        stream.close()
        source.close()  # stops the decode thread when a shard failed
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    manifest["complete"] = True
    write_json_atomic(mpath, manifest)
    storage.remove(storage.join(out_dir, LEGACY_MANIFEST))
    from lossyvision.pipelines.cards import update_reader_files

    update_reader_files(cfg.shards)  # the new variant becomes a config of the dataset card (and a timm split)
    log.info("wrote %s: %d samples, mean psnr %s (source %s)", out_dir, manifest["num_samples"],
             manifest["means"]["psnr"], manifest["means"]["source_psnr"])
    return manifest
