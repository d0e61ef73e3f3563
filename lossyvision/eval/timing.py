"""Paper 2, Table IV: inference time per image of each configuration's pipeline.

What runs at inference depends only on the test side of a configuration: testing on originals
(OO, CO, RO: dataset restoration adds nothing to the deployed model) is the segmentation alone;
compression before inference (CC, OC) adds the codec's encode and decode; restoring before
inference (OR, RR) adds the restoration network on top. Each stage is timed on its own, per image,
on real shard data: the codec encodes the original at the variant's setting and decodes the
variant's stored bitstream (on the CPU, as the codecs run), the generator restores the decoded
image, and DeepLabv3+ segments the frame (whole frame, single scale, argmax brought back to the host,
so GPU work is finished when the clock stops). The first ``warmup`` images run every stage untimed
(cuDNN autotuning, allocator growth, codec start-up); medians and interquartile ranges are over the
next ``max_images``. A pipeline's per-image time is the sum of its stages for that image. Segmenting
a compressed or restored frame costs what segmenting the original does (same size, same network),
so one segmentation time per image serves every pipeline.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lossyvision import storage

log = logging.getLogger(__name__)

#: (test side, the configurations it serves, its stages in order)
PIPELINES = (
    ("O", "OO, CO, RO", ("segment",)),
    ("C", "CC, OC", ("encode", "decode", "segment")),
    ("R", "OR, RR", ("encode", "decode", "restore", "segment")),
)
STAGES = ("encode", "decode", "restore", "segment")


@dataclass
class TimingConfig:
    checkpoint: str = ""            # a segmentation model.pt (which one does not change its speed)
    shards: str = ""                # ROOT/<dataset> (a local path or an fsspec URL)
    variant: str = ""               # a codec variant, e.g. bpg-qp41: its codec and setting are timed
    generator: str | None = None    # generator.pt for the R pipeline (restore before inference)
    orig_variant: str = "orig"
    split: str = "val"
    out_dir: str = "runs/seg-timing"
    max_images: int = 20            # timed images, after the warm-up ones
    warmup: int = 2
    tile: int = 0                   # restoration tiling, as restore-shards (0: whole frame)
    overlap: int = 64
    device: str | None = None
    amp: bool = True
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        from lossyvision.names import check_name
        from lossyvision.pipelines.stream import check_limits

        check_name("--variant", self.variant)
        check_name("--orig-variant", self.orig_variant)
        check_name("--split", self.split)
        check_limits(limit=self.max_images, warmup=(self.warmup, 0), tile=(self.tile, 0),
                     overlap=(self.overlap, 0), max_pixels=self.max_pixels)

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda:{device.index or 0})"
    if device.type == "cpu":
        return f"{cpu_name()}, {torch.get_num_threads()} torch threads"
    return str(device)


def stats_ms(seconds: list[float]) -> dict[str, float]:
    """median, quartiles and IQR in milliseconds."""
    a = np.asarray(seconds, np.float64) * 1000
    q1, med, q3 = (float(v) for v in np.percentile(a, [25, 50, 75]))
    return {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1, "mean_ms": float(a.mean())}


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _pairs(orig_dir: str, variant_dir_: str):
    """(key, orig rgb, the variant's members) in shard order, the two variants read in lockstep."""
    from lossyvision.pipelines.stream import ShardError, check_aligned, iter_tar_samples, read_variant

    o, v = read_variant(orig_dir), read_variant(variant_dir_)
    check_aligned(o, v)
    for so, sv in zip(o.shards, v.shards):
        it = iter_tar_samples(v.shard_path(sv.name), sv.size, sv.sha256)
        for a in iter_tar_samples(o.shard_path(so.name), so.size, so.sha256):
            b = next(it, None)
            if b is None or b["__key__"] != a["__key__"]:
                raise ShardError(f"{v.shard_path(sv.name)}: key mismatch with {o.variant} at {a['__key__']!r}")
            if o.ext not in a or v.ext not in b:
                raise ShardError(f"{sv.name}: sample {a['__key__']!r} lacks its .{o.ext} / .{v.ext} member")
            yield a["__key__"], (a[o.ext], o.ext, a.get("json")), b


def time_pipelines(cfg: TimingConfig, progress_quiet: bool = False) -> dict:
    """Time every stage per image; write OUT/timing.{json,csv,md}; return the JSON summary."""
    from lossyvision import accel
    from lossyvision.nets.segmentation import load_segmentation_model
    from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS
    from lossyvision.pipelines.stream import (OptionError, check_image_pixels, decode_lossless, read_variant,
                                              resolve_device, to_device, variant_decoder, variant_dir)
    from lossyvision.progress import progress

    from .segmentation import predict

    split_dir = storage.join(cfg.shards, cfg.split)
    odir, vdir = variant_dir(split_dir, cfg.orig_variant), variant_dir(split_dir, cfg.variant)
    info = read_variant(vdir)
    if info.spec is None:
        raise OptionError(f"--variant {cfg.variant} has no codec (orig or restored); give the compressed variant, "
                          "e.g. bpg-qp41, and the generator with --generator")
    codec = variant_decoder(info)
    device = resolve_device(cfg.device)
    model, _ = load_segmentation_model(cfg.checkpoint, device)
    generator = None
    if cfg.generator:
        from lossyvision.pipelines.restore import load_generator

        generator, _ = load_generator(cfg.generator, device)
    dtype = accel.amp_dtype(device, None if cfg.amp else False)
    max_pixels = cfg.max_pixels or DEFAULT_MAX_PIXELS

    def segment(rgb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
        with torch.no_grad(), accel.autocast(device, dtype):
            return predict(model, to_device(x, device)).cpu().numpy()

    def restore(rgb: np.ndarray) -> np.ndarray:
        from lossyvision.pipelines.restore import restore_image

        return restore_image(generator, rgb, device, cfg.tile, cfg.overlap, cfg.amp)

    times: dict[str, list[float]] = {s: [] for s in STAGES}
    sizes: set[tuple[int, int]] = set()
    total = cfg.warmup + cfg.max_images
    n = 0
    with progress(total=total, desc=f"seg-timing {cfg.variant}", unit="img", quiet=progress_quiet) as bar:
        for key, (odata, oext, ometa), members in _pairs(odir, vdir):
            if n >= total:
                break
            check_image_pixels(odata, oext, ometa, max_pixels)
            rgb = decode_lossless(odata, oext)
            _, t_enc = _timed(lambda: codec.encode(rgb))
            decoded, t_dec = _timed(lambda: codec.decode(members[info.ext]))
            t_res = None
            if generator is not None:
                _, t_res = _timed(lambda: restore(decoded))
            _, t_seg = _timed(lambda: segment(rgb))
            if n >= cfg.warmup:
                times["encode"].append(t_enc)
                times["decode"].append(t_dec)
                times["segment"].append(t_seg)
                if t_res is not None:
                    times["restore"].append(t_res)
                sizes.add((rgb.shape[1], rgb.shape[0]))
            n += 1
            bar.update(1)
    timed = n - cfg.warmup
    if timed < 1:
        raise ValueError(f"{vdir} holds {n} images: fewer than --warmup {cfg.warmup} + 1; lower --warmup")
    stages = {s: stats_ms(v) for s, v in times.items() if v}
    pipelines = []
    for side, configs, steps in PIPELINES:
        if any(s not in stages for s in steps):
            continue
        per_image = [sum(times[s][i] for s in steps) for i in range(timed)]
        pipelines.append({"test_side": side, "configurations": configs, "stages": list(steps),
                          **stats_ms(per_image)})
    summary = {
        "variant": cfg.variant, "codec": info.spec, "split": cfg.split, "images": timed, "warmup": cfg.warmup,
        "frame_sizes": [f"{w}x{h}" for w, h in sorted(sizes)],
        "segment_device": device_name(device), "restore_device": device_name(device) if generator else None,
        "codec_device": cpu_name(), "amp": dtype is not None, "checkpoint": cfg.checkpoint, "generator": cfg.generator,
        "stages": stages, "pipelines": pipelines,
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "timing.json").write_text(json.dumps(summary, indent=1) + "\n")
    _write_csv(out / "timing.csv", summary)
    (out / "timing.md").write_text(timing_markdown(summary))
    return {**summary, "files": [str(out / f"timing.{e}") for e in ("json", "csv", "md")]}


def _write_csv(path: Path, summary: dict) -> None:
    cols = ["median_ms", "q1_ms", "q3_ms", "iqr_ms", "mean_ms"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "name", "configurations", *cols, "images", "device"])
        for s, st in summary["stages"].items():
            dev = summary["codec_device"] if s in ("encode", "decode") else summary["segment_device"]
            w.writerow(["stage", s, "", *(f"{st[c]:.3f}" for c in cols), summary["images"], dev])
        for p in summary["pipelines"]:
            w.writerow(["pipeline", "+".join(p["stages"]), p["configurations"], *(f"{p[c]:.3f}" for c in cols),
                        summary["images"], ""])


def timing_markdown(summary: dict) -> str:
    """Table IV's layout: one row per pipeline, its stages' medians beside its total (ms per image)."""
    st = summary["stages"]

    def cell(name: str, steps: list[str]) -> str:
        if name not in steps or name not in st:
            return "–"
        return f"{st[name]['median_ms']:.1f} (IQR {st[name]['iqr_ms']:.1f})"

    lines = [f"Inference time per image (ms: median over {summary['images']} images after {summary['warmup']} "
             f"warm-up ones, IQR in brackets), {summary['variant']} ({summary['codec']}), "
             f"{', '.join(summary['frame_sizes'])} frames.",
             "",
             f"Segmentation{' and restoration' if summary['restore_device'] else ''}: {summary['segment_device']}"
             f"{' with AMP' if summary['amp'] else ''}; codec: {summary['codec_device']}.",
             "",
             "| configurations | encode | decode | restore | segment | total |", "|---|---|---|---|---|---|"]
    for p in summary["pipelines"]:
        lines.append(f"| {p['configurations']} | " + " | ".join(cell(s, p["stages"]) for s in STAGES)
                     + f" | {p['median_ms']:.1f} (IQR {p['iqr_ms']:.1f}) |")
    return "\n".join(lines) + "\n"
