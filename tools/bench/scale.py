"""prepare-shards at scale: per-image CPU cost of every stage at the paper settings, turned into wall times.

    python tools/bench/scale.py [--quick] [--json scale.json] [--rows-json rows.json] [--cores 16,128,1024]
                                [--fs-gbps 1] [--object-gbps 10] [--imagenet-images 24] [--cityscapes-frames 3]

Measures on this machine, one process, codecs single-threaded (as in prepare-shards' Ray tasks):

- ImageNet (paper 1): read + decode of a typical ILSVRC2012 training JPEG (500x375, quality 90; the
  train set averages ~400x350 px and ~110 KB: built here from scikit-image's real photos, nothing is
  downloaded), the imagenet crop (resize 256 bicubic + centre 224), each of the 9 settings
  (jpeg q75/10/5, j2k r75/200/400, bpg QP 41/46/51: encode + decode), PSNR + SSIM + MS-SSIM against
  the crop, and the lossless `orig` PNG (zlib level 1); bytes per image per variant.
- Cityscapes (paper 2): read + decode of a 2048x1024 frame PNG and its label map (real Cityscapes
  frames are ~2 MB PNGs; built here from real photos resized to 2048x1024), BPG QP 41/46/51 on the
  full frame (docs/restoration.md), the metrics, and the `orig` PNG + label PNG. MSH (paper 2's learned
  codec) is left out: it needs CompressAI's pretrained weights, which cannot be downloaded here.
- The same images through `prepare_shards` (1 worker, in-process: tar shards, manifests), which checks
  that the stages add up and gives the real bytes written per image (tar headers included), and the
  cost of one rewrite of a manifest as a function of the shards it lists (the driver rewrites every
  variant's manifest at most every MANIFEST_EVERY_S = 2 s while shards finish, and once at the end).

Then for each (dataset, split) and core count, at prepare-shards' default --shard-size for the dataset
(DEFAULT_SHARD_SIZES: cityscapes 100, else 1000): CPU-hours, wall time with perfect scaling over the
cores, the Ray bound (one task per shard: the last wave leaves cores idle), the storage bound (bytes
read + written / aggregate bandwidth of a shared filesystem or an object store), the driver's serial
work (its manifest rewrites), what limits the row, and the --shard-size (up to the default) that would
be fastest. Markdown to stdout; --json writes every number. ~45 s on a 2-core machine; `--quick`
measures fewer images (~10 s). --rows-json writes the headline numbers as the rows of
tools/bench/common.py (no targets; what `make bench` summarises): per dataset the CPU ms per image, the
CPU-hours of its train split, and that split's expected wall time (shared filesystem) on each core count.
Results and discussion: docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (tools/bench/common.py, next to this script)

from lossyvision.pipelines.prepare import DEFAULT_SHARD_SIZES, MANIFEST_EVERY_S, PrepareConfig

IMAGENET_SPECS = ["jpeg-q75", "jpeg-q10", "jpeg-q5", "j2k-r75", "j2k-r200", "j2k-r400", "bpg-qp41", "bpg-qp46", "bpg-qp51"]
CITYSCAPES_SPECS = ["bpg-qp41", "bpg-qp46", "bpg-qp51"]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right")  # natural colour photos

# images per split (ILSVRC2012; Cityscapes leftImg8bit fine + train_extra)
SPLITS = [("imagenet", "train", 1_281_167), ("imagenet", "val", 50_000),
          ("cityscapes", "train", 2_975), ("cityscapes", "val", 500), ("cityscapes", "train_extra", 19_998)]


def default_shard_size(dataset: str) -> int:
    """prepare-shards' default --shard-size for the dataset (PrepareConfig fills it from DEFAULT_SHARD_SIZES)."""
    return PrepareConfig(dataset=dataset, out="").shard_size


# Average source file sizes of the real datasets, used for the storage bound (the photos built here are
# smaller or larger than the average): ILSVRC2012 train ~138 GB / 1.28 M files; Cityscapes leftImg8bit
# ~11 GB / 5000 frames (its label maps are counted as measured here).
REAL_SOURCE_BYTES = {"imagenet": 110e3, "cityscapes": 2.2e6}
REWRITE_FIT = (200, 2000)  # manifest sizes (shards listed) timed to fit the driver's cost per manifest rewrite
LABEL_IDS = np.array([7, 8, 11, 17, 21, 23, 24, 26], dtype=np.uint8)  # road, sidewalk, building, pole, vegetation, sky, person, car


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- inputs -------------------------------------------------------------------------------------


def photos() -> list[np.ndarray]:
    from lossyvision.pipelines.sources import create_source

    src = create_source("samples", None, "all")
    out = [src.load(it)[0] for it in src.items() if it.key in PHOTOS]
    if not out:
        raise SystemExit("scikit-image's sample photos are missing")
    return out


def fit(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """Centre-crop to the aspect w:h, then resize (bicubic) to w x h."""
    im = Image.fromarray(a)
    s = min(im.width / w, im.height / h)
    cw, ch = int(w * s), int(h * s)
    x, y = (im.width - cw) // 2, (im.height - ch) // 2
    return np.asarray(im.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC))


def make_imagenet(root: str, n: int, pics: list[np.ndarray]) -> None:
    """ROOT/train/<wnid>/<wnid>_<i>.JPEG: 500x375 quality-90 JPEGs (flipped/mirrored variants of the photos)."""
    for i in range(n):
        a = fit(pics[i % len(pics)], 500, 375)
        k = i // len(pics)
        a = a[:, ::-1] if k % 2 else a
        a = a[::-1] if (k // 2) % 2 else a
        wnid = f"n{(i % 4):08d}"
        os.makedirs(os.path.join(root, "train", wnid), exist_ok=True)
        Image.fromarray(np.ascontiguousarray(a)).save(os.path.join(root, "train", wnid, f"{wnid}_{i}.JPEG"), quality=90)


def make_cityscapes(root: str, n: int, pics: list[np.ndarray]) -> None:
    """leftImg8bit/train/<city>/*_leftImg8bit.png (2048x1024, Pillow's default zlib level, as the
    dataset's PNGs) + gtFine/train/<city>/*_gtFine_labelIds.png (region-like label ids)."""
    order = [4, 5, 2, 3, 0, 1]  # street-like photos first (motorcycles, coffee, rocket)
    for i in range(n):
        a = fit(pics[order[i % len(order)] % len(pics)], 2048, 1024)
        g = np.asarray(Image.fromarray(a).convert("L").resize((128, 64), Image.BILINEAR))
        ids = LABEL_IDS[np.minimum(g // 32, len(LABEL_IDS) - 1)]
        ids = np.asarray(Image.fromarray(ids).resize((2048, 1024), Image.NEAREST))
        base = f"city_{i:06d}_000019"
        for sub, name, arr in (("leftImg8bit", f"{base}_leftImg8bit.png", a), ("gtFine", f"{base}_gtFine_labelIds.png", ids)):
            d = os.path.join(root, sub, "train", "city")
            os.makedirs(d, exist_ok=True)
            Image.fromarray(arr).save(os.path.join(d, name))


# -- stage timings ------------------------------------------------------------------------------


def timed(fn, repeat: int = 1):
    """(median ms over `repeat` calls, last result)."""
    ts, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), out


def warm_up(specs: list[str]) -> None:
    from lossyvision import codecs, quality

    a = fit(photos()[0], 256, 192)
    for s in specs:
        codecs.from_spec(s).roundtrip(a)
    quality.Reference(a).scores(a, True)
    codecs.png_encode(a, level=1)


def measure_stages(dataset: str, root: str, specs: list[str], repeat: int) -> dict:
    """Per-image ms and bytes of each stage, averaged over the images under ROOT (split train)."""
    from lossyvision import codecs, quality
    from lossyvision.pipelines.crops import parse_crop
    from lossyvision.pipelines.imageio import read_rgb
    from lossyvision.pipelines.sources import create_source

    src = create_source(dataset, root, "train")
    crop = parse_crop("imagenet" if dataset == "imagenet" else "full")
    cs = [codecs.from_spec(s) for s in specs]
    acc: dict[str, list[float]] = {}

    def add(k: str, v: float) -> None:
        acc.setdefault(k, []).append(v)

    for it in src.items():
        path = os.path.join(root, it.ref)
        add("source_bytes", os.path.getsize(path))
        if dataset == "cityscapes":
            add("label_source_bytes", os.path.getsize(os.path.join(root, it.label)))
            ms, _ = timed(lambda: read_rgb(path), repeat)
            add("image_decode_ms", ms)
        ms, (rgb, label) = timed(lambda: src.load(it), repeat)
        add("source_decode_ms", ms)  # read + decode (+ label map for cityscapes)
        ms, (rgb, label) = timed(lambda: crop(rgb, label), repeat)
        add("crop_ms", ms)
        add("pixels", rgb.shape[0] * rgb.shape[1])
        ms, ref = timed(lambda: quality.Reference(rgb), repeat)
        add("metrics_reference_ms", ms)  # reference statistics + MS-SSIM pyramid, once per image
        for c in cs:
            t = time.perf_counter()
            r = c.roundtrip(rgb)
            add(f"{c.spec}:codec_ms", (time.perf_counter() - t) * 1e3)
            add(f"{c.spec}:enc_ms", r.enc_ms)
            add(f"{c.spec}:dec_ms", r.dec_ms)
            add(f"{c.spec}:bytes", r.bytes)
            ms, _ = timed(lambda: (quality.psnr(rgb, r.decoded), ref.scores(r.decoded, True)), repeat)
            add(f"{c.spec}:metrics_ms", ms)
        ms, png = timed(lambda: codecs.png_encode(rgb, level=1), repeat)
        add("orig_png_ms", ms)
        add("orig_bytes", len(png))
        if isinstance(label, np.ndarray):
            ms, seg = timed(lambda: codecs.png_encode(np.ascontiguousarray(label, dtype=np.uint8), level=1), repeat)
            add("label_png_ms", ms)
            add("label_bytes", len(seg))
    return {k: float(np.mean(v)) for k, v in acc.items()} | {"images": len(src.items())}


def summarise(m: dict, specs: list[str]) -> dict:
    """Stage totals per image (ms) from measure_stages' output."""
    fam = {}
    for s in specs:
        f = s.split("-")[0]
        fam[f] = fam.get(f, 0.0) + m[f"{s}:codec_ms"]
    stages = {"source read + decode": m["source_decode_ms"], "crop": m["crop_ms"]}
    for f, v in fam.items():
        stages[f"{f} encode + decode ({sum(s.startswith(f + '-') for s in specs)} settings)"] = v
    stages["metrics (PSNR, SSIM, MS-SSIM)"] = m["metrics_reference_ms"] + sum(m[f"{s}:metrics_ms"] for s in specs)
    stages["orig PNG (+ label PNG)"] = m["orig_png_ms"] + m.get("label_png_ms", 0.0)
    return stages


def run_pipeline(dataset: str, root: str, specs: list[str], warm_up: bool) -> dict | None:
    """prepare_shards on the same images, 1 worker in-process, the default --shard-size (one shard for
    the default numbers of images): wall time per image (after a
    warm-up run on the first image, so first-time imports are not counted; the job's remaining start-up,
    tens of ms, is spread over the images) and bytes written per image."""
    from lossyvision.codecs import parse_spec
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    out = tempfile.mkdtemp(prefix="lv-scale-out-")
    try:
        settings = [CodecSetting(n, q=q, bpp=b, options=o) for n, q, b, o in map(parse_spec, specs)]

        def run(limit: int | None, where: str):
            cfg = PrepareConfig(dataset=dataset, src=root, split="train", out=os.path.join(out, where), codecs=settings,
                                executor="local", workers=1, shard_size=None, progress=False, limit=limit)
            t = time.perf_counter()
            res = prepare_shards(cfg)
            return time.perf_counter() - t, res

        warm_s = run(1, "warm-up")[0] if warm_up else None
        shutil.rmtree(os.path.join(out, "warm-up"), ignore_errors=True)
        wall, manifests = run(None, "all")
        n = next(iter(manifests.values()))["num_samples"]
        tar_bytes, manifest_bytes, variants = 0, 0, 0
        for dirpath, _, files in os.walk(out):
            for f in files:
                size = os.path.getsize(os.path.join(dirpath, f))
                if f.endswith(".tar"):
                    tar_bytes += size
                elif f == "_manifest.json":
                    manifest_bytes += size
                    variants += 1
        entry = json.dumps(next(iter(manifests.values()))["shards"][0], indent=1)
        return {"images": n, "wall_s": wall, "warm_up_s": warm_s, "ms_per_image": wall / n * 1e3,
                "tar_bytes_per_image": tar_bytes / n,
                "variants": variants, "manifest_entry_bytes": len(entry), "manifests": manifests}
    except Exception as e:  # the pipeline is under active development: report, fall back to the stage sum
        print(f"(prepare_shards run for {dataset} failed: {type(e).__name__}: {e}; using the stage sum)")
        return None
    finally:
        shutil.rmtree(out, ignore_errors=True)


def manifest_rewrite_ms(manifest: dict, n_shards: int) -> tuple[float, int]:
    """Time to rewrite one variant's manifest when it lists n_shards shards (the driver does this for
    every variant at most every MANIFEST_EVERY_S while shards finish, and at the end); returns (ms, bytes)."""
    from lossyvision.pipelines.shards import write_json_atomic

    m = json.loads(json.dumps(manifest))
    m["shards"] = [dict(m["shards"][0], index=i, name=f"shard-{i:06d}.tar") for i in range(n_shards)]
    m["num_shards"] = n_shards
    d = tempfile.mkdtemp(prefix="lv-scale-man-")
    try:
        p = os.path.join(d, "_manifest.json")
        ms, _ = timed(lambda: write_json_atomic(p, m), 3)
        return ms, os.path.getsize(p)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- the model ----------------------------------------------------------------------------------


def waves(n_tasks: int, cores: int) -> int:
    return math.ceil(n_tasks / cores)


def driver_work(n_tasks: int, wall_s: float, variants: int, rewrite: tuple[float, float]) -> dict:
    """The driver's manifest work over a job of n_tasks shards that run for wall_s seconds.

    prepare.py's on_result rewrites every variant's manifest when a result arrives at least
    MANIFEST_EVERY_S after the previous rewrite ended, and once more at the end. So there are
    R = min(n_tasks, ceil(wall_s / (MANIFEST_EVERY_S + W))) periodic rewrites plus the final one, W the
    time of one full rewrite (`variants` manifests listing n_tasks shards, c0 + b * n_tasks ms each;
    `rewrite` = (c0, b), measured). With the shards finishing evenly over the job, the j-th periodic
    rewrite lists about n_tasks * j / R shards: n_tasks * (R + 1) / 2 listed in all, plus n_tasks in
    the final one. (R = n_tasks, one rewrite per result, gives the old quadratic count back: it
    happens when shards finish less often than every 2 s, i.e. on few cores.)"""
    c0, b = rewrite
    full_s = variants * (c0 + b * n_tasks) / 1e3
    periodic = min(n_tasks, math.ceil(wall_s / (MANIFEST_EVERY_S + full_s)))
    listed = n_tasks * (periodic + 1) / 2 + n_tasks  # shard entries written, per variant, over the job
    return {"rewrites": periodic + 1, "listed": listed, "rewrite_s": full_s,
            "serial_s": variants * (c0 * (periodic + 1) + b * listed) / 1e3}


def driver_done_s(n_tasks: int, cores: int, shard_s: float, variants: int, rewrite: tuple[float, float]) -> float:
    """When the driver has written the last manifest. Shards run in ceil(n_tasks / cores) waves of
    `shard_s` seconds. The driver keeps 2 tasks per core in flight (raypool.run_ray), so a core that
    finishes starts its queued task even while the driver is writing manifests; only a rewrite longer
    than a shard (W > shard_s: many tiny shards) leaves cores idle, stretching every
    MANIFEST_EVERY_S + W period by W - shard_s. After the last result the driver may still write twice
    (the rewrite that result triggers, or the one in progress, and the final one): 2 W."""
    ray_wall = waves(n_tasks, cores) * shard_s
    w = driver_work(n_tasks, ray_wall, variants, rewrite)["rewrite_s"]
    stretch = (MANIFEST_EVERY_S + w) / (MANIFEST_EVERY_S + min(w, shard_s))
    return ray_wall * stretch + 2 * w


def best_shard_size(n: int, cores: int, t_img: float, variants: int, rewrite: tuple[float, float],
                    limit: int) -> tuple[int, float]:
    """The --shard-size (<= limit, the dataset's default) with the shortest wall time (waves of shards
    plus the driver's tail, see driver_done_s); returns (size, seconds). For k waves the smallest size
    that fits is the best of its kind, so only those are tried, from the fewest waves up; a smaller size
    must be 0.1 % faster to be chosen (per-task costs that the model leaves out, Ray scheduling and
    the tar files each shard creates, favour fewer, larger shards). The driver's cost hardly depends
    on the shard count any more (about one rewrite per 2 s), so this mostly fills the last wave."""
    k_min = waves(math.ceil(n / limit), cores)
    best, best_t = limit, driver_done_s(math.ceil(n / limit), cores, min(limit, n) * t_img, variants, rewrite)
    for k in range(k_min, k_min + 64):
        s = max(1, math.ceil(n / (k * cores)))
        if s > limit:
            continue
        t = driver_done_s(math.ceil(n / s), cores, min(s, n) * t_img, variants, rewrite)
        if t < best_t * 0.999:
            best, best_t = s, t
        if s == 1:
            break
    return best, best_t


def fmt_h(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def project(per_image: dict, cores_list: list[int], fs_bps: float, obj_bps: float) -> list[dict]:
    """One row per (dataset, split, cores): CPU-hours and the wall-time bounds (see the module docstring)."""
    rows = []
    for ds, split, n in SPLITS:
        p = per_image[ds]
        t_img, nv = p["cpu_s"], p["variants"]
        rewrite = p["rewrite"] or per_image["imagenet"]["rewrite"] or (0.0, 0.0)
        size = default_shard_size(ds)

        def job(size: int, cores: int) -> dict:
            """Ray waves, driver and storage of the job at this --shard-size on this many cores."""
            n_tasks = math.ceil(n / size)
            shard_s = min(size, n) * t_img
            ray_wall = waves(n_tasks, cores) * shard_s
            # the driver rewrites every variant's manifest about every 2 s while shards finish, and at the end
            drv = driver_work(n_tasks, ray_wall, nv, rewrite)
            manifest_bytes = nv * p["manifest_entry_bytes"] * drv["listed"]
            io_bytes = n * (p["read_bytes"] + p["write_bytes"]) + manifest_bytes
            return {"tasks": n_tasks, "ray_wall": ray_wall, "drv": drv, "manifest_bytes": manifest_bytes, "io_bytes": io_bytes,
                    "fs_s": io_bytes / fs_bps, "obj_s": io_bytes / obj_bps,
                    "done": driver_done_s(n_tasks, cores, shard_s, nv, rewrite)}

        for cores in cores_list:
            cpu_s = n * t_img
            perfect = max(cpu_s / cores, t_img)  # no faster than one image on one core
            j = job(size, cores)
            n_tasks, ray_wall, done, fs_s, obj_s = j["tasks"], j["ray_wall"], j["done"], j["fs_s"], j["obj_s"]
            eff = n_tasks / (waves(n_tasks, cores) * cores)
            # the best size is chosen on the cores' side (storage hardly depends on it), then bounded by storage too
            s_best, best_wall = best_shard_size(n, cores, t_img, nv, rewrite, size)
            jb = job(s_best, cores)
            wall_fs, wall_obj = max(done, fs_s), max(done, obj_s)
            if fs_s > done:
                limit = f"storage on the shared FS ({fs_s / done:.1f}x the CPU time); CPU ({p['top']}) on object storage"
            elif eff < 0.5:
                limit = f"too few shards ({n_tasks} for {cores} cores)"
            else:
                limit = f"CPU: {p['top']}" + (f"; last wave {1 - eff:.0%} idle" if eff < 0.9 else "")
            if done > 1.05 * ray_wall:
                limit += f"; driver +{fmt_h(done - ray_wall)} after the last wave"
            rows.append({"dataset": ds, "split": split, "images": n, "cores": cores, "shard_size": size,
                         "cpu_hours": cpu_s / 3600, "wall_perfect_s": perfect, "tasks": n_tasks, "wave_efficiency": eff,
                         "wall_ray_s": ray_wall, "storage_fs_s": fs_s, "storage_object_s": obj_s,
                         "manifest_rewrites": j["drv"]["rewrites"], "manifest_bytes": j["manifest_bytes"],
                         "manifest_rewrite_s": j["drv"]["rewrite_s"], "driver_s": j["drv"]["serial_s"], "driver_done_s": done,
                         "wall_expected_fs_s": wall_fs, "wall_expected_object_s": wall_obj, "limit": limit,
                         "best_shard_size": s_best, "wall_best_shard_size_s": best_wall,
                         "wall_best_shard_size_fs_s": max(best_wall, jb["fs_s"]),
                         "wall_best_shard_size_object_s": max(best_wall, jb["obj_s"]), "io_bytes": j["io_bytes"]})
    return rows


# -- report -------------------------------------------------------------------------------------


STAGE_NAMES = {"bpg": "BPG placebo", "j2k": "J2K", "jpe": "JPEG", "met": "metrics", "sou": "source decode",
               "ori": "orig PNG", "cro": "crop"}


def report_dataset(ds: str, specs: list[str], m: dict, p: dict | None) -> tuple[dict, dict]:
    """Print the per-variant and per-stage tables of one dataset; return (model inputs, JSON record)."""
    stages = summarise(m, specs)
    stage_sum = sum(stages.values())
    size = "224x224 crop" if ds == "imagenet" else "2048x1024 frame"
    label = f" + label map {m['label_source_bytes'] / 1e3:.0f} KB" if "label_source_bytes" in m else ""
    print(f"### {ds}: {m['images']} images, source {m['source_bytes'] / 1e3:.0f} KB{label}, coded as {size}\n")
    print("| variant | bytes/img | bpp | encode ms | decode ms | metrics ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| orig (PNG level 1) | {m['orig_bytes']:.0f} | {m['orig_bytes'] * 8 / m['pixels']:.3f} | {m['orig_png_ms']:.2f} | - | - |")
    for s in specs:
        print(f"| {s} | {m[s + ':bytes']:.0f} | {m[s + ':bytes'] * 8 / m['pixels']:.4f} | {m[s + ':enc_ms']:.2f} | "
              f"{m[s + ':dec_ms']:.2f} | {m[s + ':metrics_ms']:.2f} |")
    print("\n| stage | ms/image | share |")
    print("| --- | ---: | ---: |")
    for k, v in stages.items():
        print(f"| {k} | {v:.1f} | {v / stage_sum:.0%} |")
    print(f"| **sum of stages** | **{stage_sum:.1f}** | 100% |")
    if p:
        print(f"| prepare_shards, 1 worker: wall / images (tars, manifests) | {p['ms_per_image']:.1f} | "
              f"{p['ms_per_image'] / stage_sum:.2f} x sum |")
    print()

    cpu_ms = p["ms_per_image"] if p else stage_sum
    top_name, top_ms = max(stages.items(), key=lambda kv: kv[1])
    n_var = len(specs) + 1
    if p:
        write_bytes, entry = p["tar_bytes_per_image"], p["manifest_entry_bytes"]
        manifest = next(iter(p["manifests"].values()))
        # one manifest rewrite costs c0 + b * (shards listed) ms: fitted through two sizes
        lo, hi = REWRITE_FIT
        ms_lo, ms_hi = manifest_rewrite_ms(manifest, lo)[0], manifest_rewrite_ms(manifest, hi)[0]
        b = max(0.0, (ms_hi - ms_lo) / (hi - lo))
        rewrite = (max(0.0, ms_lo - b * lo), b)
    else:  # no pipeline run: payload + ~1 KB of tar header, padding and JSON per member (3 members per sample)
        write_bytes = m["orig_bytes"] + sum(m[s + ":bytes"] for s in specs) + n_var * (3 * 1024 + m.get("label_bytes", 0))
        entry, rewrite = 500, None
    read_bytes = REAL_SOURCE_BYTES[ds] + m.get("label_source_bytes", 0)
    print(f"per image: CPU {cpu_ms:.0f} ms ({'prepare_shards' if p else 'sum of stages'}), read "
          f"{read_bytes / 1e3:.0f} KB (the real dataset's average), write {write_bytes / 1e3:.0f} KB "
          f"({n_var} variants, {'measured tar bytes' if p else 'estimated'})\n")
    model = {"cpu_s": cpu_ms / 1e3, "read_bytes": read_bytes, "write_bytes": write_bytes, "variants": n_var,
             "manifest_entry_bytes": entry, "rewrite": rewrite,
             "top": f"{STAGE_NAMES[top_name[:3]]} {top_ms / stage_sum:.0%}"}
    record = {"measured": m, "stages_ms": stages, "stage_sum_ms": stage_sum,
              "pipeline": {k: v for k, v in p.items() if k != "manifests"} if p else None, **model}
    return model, record


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    sizes = ", ".join(f"{ds} {default_shard_size(ds)}" for ds in dict.fromkeys(r["dataset"] for r in rows))
    print(f"### Expected wall time (one Ray task per shard, default --shard-size: {sizes}; cores = concurrent tasks)\n")
    print(f"Assumptions: per-image CPU cost as measured above, the same on every core; perfect scaling = CPU time / cores; "
          f"Ray = ceil(shards / cores) waves x one shard's time; storage = (source bytes read + shard bytes written + "
          f"manifest rewrites) / aggregate bandwidth, shared filesystem {args.fs_gbps:g} GB/s, object store "
          f"{args.object_gbps:g} GB/s; source files of the real datasets' average size ({REAL_SOURCE_BYTES['imagenet'] / 1e3:.0f} KB "
          f"ImageNet, {REAL_SOURCE_BYTES['cityscapes'] / 1e6:.1f} MB Cityscapes); driver = its manifest rewrites over the "
          f"whole job (every variant's manifest at most every {MANIFEST_EVERY_S:g} s while shards finish, at most one per "
          f"shard, plus a final one), serial but overlapped with the encoding, so only its last rewrites add to the wall "
          f"time; expected = max(Ray + driver tail, storage); best --shard-size = the size up to the default with the "
          f"shortest Ray + driver time (a smaller one only if 0.1 % faster), and its expected wall time. Not modelled: "
          f"Ray/cluster start-up (~1 min), file-system metadata rates (1.28 M opens), hyperthreads (a vCPU is not a "
          f"core), clock speed under full load, per-task costs (Ray scheduling, the tar files each shard creates).\n")
    print("| dataset | split | images | cores | CPU-h | wall, perfect | shards x size | wave eff. | wall, Ray | storage FS / object | "
          "driver: rewrites, serial | expected (FS / object) | limited by | best --shard-size: FS / object |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        print(f"| {r['dataset']} | {r['split']} | {r['images']:,} | {r['cores']} | {r['cpu_hours']:.1f} | {fmt_h(r['wall_perfect_s'])} | "
              f"{r['tasks']} x {r['shard_size']} | {r['wave_efficiency']:.2f} | {fmt_h(r['wall_ray_s'])} | {fmt_h(r['storage_fs_s'])} / "
              f"{fmt_h(r['storage_object_s'])} | {r['manifest_rewrites']}, {fmt_h(r['driver_s'])} | {fmt_h(r['wall_expected_fs_s'])} / "
              f"{fmt_h(r['wall_expected_object_s'])} | {r['limit']} | {r['best_shard_size']}: {fmt_h(r['wall_best_shard_size_fs_s'])} / "
              f"{fmt_h(r['wall_best_shard_size_object_s'])} |")


def headline_rows(per_image: dict, rows: list[dict]) -> list[dict]:
    """The --rows-json rows: per dataset, CPU ms per image, then its train split's CPU-hours and
    expected wall time on the shared filesystem at each core count (docs/scale.md's summary; no targets)."""
    out = []
    for ds, p in per_image.items():
        out.append(common.row(f"{ds}: CPU per image", p["cpu_s"] * 1e3, "ms"))
        mine = [r for r in rows if r["dataset"] == ds and r["split"] == "train"]
        if mine:
            out.append(common.row(f"{ds}/train ({mine[0]['images']:,} images): CPU-hours", mine[0]["cpu_hours"], "h"))
        for r in mine:
            out.append(common.row(f"{ds}/train: expected wall on {r['cores']} cores, shared FS",
                                  r["wall_expected_fs_s"] / 60, "min"))
    return out


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 ImageNet images, 1 Cityscapes frame, no Cityscapes pipeline run")
    ap.add_argument("--imagenet-images", type=int, default=None, help="[24; quick 8]")
    ap.add_argument("--cityscapes-frames", type=int, default=None, help="[3; quick 1]")
    ap.add_argument("--repeat", type=int, default=None, help="repeats of the cheap stages, median [3; quick 1]")
    ap.add_argument("--cores", default="16,128,1024")
    ap.add_argument("--fs-gbps", type=float, default=1.0, help="aggregate bandwidth of a shared filesystem, GB/s [1]")
    ap.add_argument("--object-gbps", type=float, default=10.0, help="aggregate bandwidth of an object store, GB/s [10]")
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--rows-json", default=None, metavar="PATH",
                    help="write the headline rows of tools/bench/common.py here (what make bench summarises)")
    args = ap.parse_args()
    n_in = args.imagenet_images or (8 if args.quick else 24)
    n_cs = args.cityscapes_frames or (1 if args.quick else 3)
    repeat = args.repeat or (1 if args.quick else 3)
    cores_list = [int(c) for c in args.cores.split(",")]
    t_start = time.perf_counter()

    datasets = (("imagenet", IMAGENET_SPECS, n_in, make_imagenet), ("cityscapes", CITYSCAPES_SPECS, n_cs, make_cityscapes))
    meas, pipe = {}, {}
    tmp = tempfile.mkdtemp(prefix="lv-scale-src-")
    try:
        pics = photos()
        warm_up(IMAGENET_SPECS)
        for ds, specs, n, make in datasets:
            root = os.path.join(tmp, ds)
            make(root, n, pics)
            meas[ds] = measure_stages(ds, root, specs, repeat)
            # the first run warms up the pipeline's own imports; later ones are warm already
            pipe[ds] = None if (args.quick and ds == "cityscapes") else run_pipeline(ds, root, specs, warm_up=not pipe)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"prepare-shards at scale: per-image cost measured on this machine ({cpu_name()}, {os.cpu_count()} CPUs, one thread; "
          f"load average {load:.2f} at the end: other processes slow the numbers down), paper settings\n")
    per_image, records = {}, {}
    for ds, specs, _, _ in datasets:
        per_image[ds], records[ds] = report_dataset(ds, specs, meas[ds], pipe[ds])
    rows = project(per_image, cores_list, args.fs_gbps * 1e9, args.object_gbps * 1e9)
    print_table(rows, args)
    print(f"\nbenchmark took {time.perf_counter() - t_start:.0f} s")
    if args.json:
        out = {"machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "platform": platform.platform(), "load_average": load},
               "quick": args.quick, "benchmark_s": round(time.perf_counter() - t_start, 1),
               "assumptions": {"shared_fs_bytes_per_s": args.fs_gbps * 1e9, "object_store_bytes_per_s": args.object_gbps * 1e9,
                               "source_bytes": REAL_SOURCE_BYTES, "cores": cores_list, "splits": SPLITS,
                               # prepare.py's DEFAULT_SHARD_SIZES and its fallback, as PrepareConfig applies them
                               "shard_size": {ds: default_shard_size(ds) for ds in dict.fromkeys(d for d, _, _ in SPLITS)},
                               "default_shard_sizes": DEFAULT_SHARD_SIZES, "manifest_every_s": MANIFEST_EVERY_S},
               "datasets": records, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")
    common.write_json(args.rows_json, "scale", headline_rows(per_image, rows))


if __name__ == "__main__":
    main()
