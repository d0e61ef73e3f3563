"""prepare-shards benchmark: where the time goes, how it scales, and what memory a large image costs.

    python tools/bench/prepare.py [--images 96] [--shard-size 8] [--repeats 3] [--large] [--quick] [--json PATH]

Builds a folder of real-photo JPEGs of ImageNet-like size (500x375, scikit-image's photos), then
measures in one run, each number the median of --repeats runs (this machine varies +-25 %):

- metric share: the bare per-image loop (read + decode + crop to 224, encode + decode, PSNR + SSIM
  + MS-SSIM) timed part by part, at paper 1's nine settings (jpeg q75/10/5, j2k r75/200/400, bpg
  QP 41/46/51) and at the three JPEG settings alone; target: metrics <= 10 % of the nine-setting loop;
  and the metrics alone on the same decoded variants with the fused kernel and with the OpenCV path
  (what a machine without numba runs), alternated;
- colour conversion: RGB -> YCbCr 4:2:0 and back for HEVC/BPG, ms per 224x224 crop (target <= 0.5);
- the pipeline (tars, manifests) in-process vs the bare loop, and 1 in-process worker vs 2 Ray
  workers (target >= 1.8x), runs alternated; then an account of what the second worker does not
  win: worker utilisation (task seconds / (2 x wall)), how much slower a task runs next to another
  one (contention for the two cores with the driver and Ray's own processes, memory bandwidth),
  and the CPU seconds the driver and Ray's processes used;
- the three JPEG settings in one pass vs three separate runs, and Ray's start-up;
- with --large: the peak RSS of a prepare-shards worker on 12 MP photos (4000x3000, upscaled from
  the real ones) with --crop full, in a fresh process, above its RSS after imports, as a multiple of
  the largest image's bytes (H x W x 3); --large-code PATH measures another checkout too (e.g. the
  commit before the fix) in the same run.

Markdown to stdout; --json writes every ratio with its target (tools/bench/common.py). --quick uses
smoke-test sizes (no meaningful numbers; CI runs it so the script cannot rot).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NINE = ["jpeg-q75", "jpeg-q10", "jpeg-q5", "j2k-r75", "j2k-r200", "j2k-r400", "bpg-qp41", "bpg-qp46", "bpg-qp51"]
JPEG = NINE[:3]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _photos():
    from lossyvision.pipelines.sources import create_source

    src = create_source("samples", None, "all")
    return [a for a in (src.load(it)[0] for it in src.items()) if a.ndim == 3]


def make_folder(root: str, n: int, size: tuple[int, int] = (500, 375)) -> str:
    os.makedirs(root, exist_ok=True)
    imgs = _photos()
    for i in range(n):
        im = Image.fromarray(imgs[i % len(imgs)]).resize(size, Image.BICUBIC).rotate(i % 4 * 90, expand=False)
        im.save(os.path.join(root, f"img_{i:05d}.JPEG"), quality=90)
    return root


def bare_parts(src_dir: str, specs: list[str]) -> dict[str, float]:
    """Seconds spent in source (read, decode, crop), codecs (encode + decode) and metrics, one process."""
    import cv2

    from lossyvision import codecs, quality
    from lossyvision.pipelines.crops import IMAGENET
    from lossyvision.pipelines.imageio import read_rgb
    from lossyvision.pipelines.prepare import roundtrips

    cv2.setNumThreads(1)  # as in prepare-shards' tasks
    cs = [codecs.from_spec(s) for s in specs]
    t = {"source": 0.0, "codecs": 0.0, "metrics": 0.0}
    for f in sorted(os.listdir(src_dir)):
        t0 = time.perf_counter()
        rgb, _ = IMAGENET(read_rgb(os.path.join(src_dir, f)))
        t1 = time.perf_counter()
        t["source"] += t1 - t0
        ref = quality.Reference(rgb)
        t["metrics"] += time.perf_counter() - t1
        variants = roundtrips(rgb, cs)  # in the pipeline's order (small images: every codec, then the metrics)
        while True:
            t2 = time.perf_counter()
            r = next(variants, (None, None))[1]
            t3 = time.perf_counter()
            t["codecs"] += t3 - t2
            if r is None:
                break
            quality.psnr(rgb, r.decoded), ref.scores(r.decoded)
            t["metrics"] += time.perf_counter() - t3
    t["total"] = sum(t.values())
    return t


def median_parts(src_dir: str, specs: list[str], repeats: int) -> dict[str, float]:
    runs = [bare_parts(src_dir, specs) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"share": statistics.median(r["metrics"] / r["total"] for r in runs)}


def metrics_ab(src_dir: str, specs: list[str], repeats: int, limit: int = 24) -> dict[str, float]:
    """ms per variant (Reference + SSIM + MS-SSIM + PSNR) with the fused kernel and with the OpenCV
    path (lossyvision/quality.py), on the same decoded variants, the two alternated per round."""
    from lossyvision import codecs, quality
    from lossyvision.pipelines.crops import IMAGENET
    from lossyvision.pipelines.imageio import read_rgb

    cs = [codecs.from_spec(s) for s in specs]
    pairs = []
    for f in sorted(os.listdir(src_dir))[:limit]:
        rgb, _ = IMAGENET(read_rgb(os.path.join(src_dir, f)))
        pairs.append((rgb, [c.roundtrip(rgb).decoded for c in cs]))

    def once() -> float:
        t = time.perf_counter()
        for rgb, decoded in pairs:
            ref = quality.Reference(rgb)
            for d in decoded:
                quality.psnr(rgb, d), ref.scores(d)
        return (time.perf_counter() - t) / (len(pairs) * len(cs)) * 1e3

    saved = quality.FUSED
    times: dict[str, list[float]] = {"fused": [], "opencv": []}
    try:
        for _ in range(repeats):
            for path, flag in (("fused", True), ("opencv", False)):
                quality.FUSED = flag
                times[path].append(once())
    finally:
        quality.FUSED = saved
    return {k: statistics.median(v) for k, v in times.items()}


def colour_ms(repeats: int) -> tuple[float, float]:
    import cv2

    from lossyvision.codecs.hevc import rgb_to_yuv420, yuv420_to_rgb
    from lossyvision.pipelines.crops import IMAGENET

    cv2.setNumThreads(1)
    crops = [IMAGENET(a)[0] for a in _photos()[:6]]
    fwd, inv = [], []
    for a in crops:
        yuv = rgb_to_yuv420(a)
        fwd.append(common.median_time(lambda: [rgb_to_yuv420(a) for _ in range(20)], repeats)[0] / 20)
        inv.append(common.median_time(lambda: [yuv420_to_rgb(yuv, 224, 224) for _ in range(20)], repeats)[0] / 20)
    return statistics.median(fwd) * 1e3, statistics.median(inv) * 1e3


class _TaskLog(logging.Handler):
    """Collects prepare-shards' per-task debug lines (wall and CPU seconds of each task)."""

    PAT = re.compile(r"task done: shard=(\d+) images=(\d+) wall_s=([\d.]+) cpu_s=([\d.]+)")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.tasks: list[tuple[float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = self.PAT.search(record.getMessage())
        if m:
            self.tasks.append((float(m.group(3)), float(m.group(4))))


def pipeline(src_dir: str, specs: list[str], workers: int, executor: str, shard_size: int) -> tuple[float, list[tuple[float, float]], float]:
    """(wall s, [(task wall, task cpu)], driver CPU s) of one prepare_shards run into a fresh folder."""
    from lossyvision.codecs import parse_spec
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    out = tempfile.mkdtemp(prefix="lv-bench-")
    settings = [CodecSetting(n, q=q, bpp=b, options=o) for n, q, b, o in map(parse_spec, specs)]
    cfg = PrepareConfig(dataset="folder", src=src_dir, split="all", out=out, codecs=settings, crop="imagenet",
                        workers=workers, executor=executor, shard_size=shard_size, progress=False, write_orig=False)
    lg = logging.getLogger("lossyvision.pipelines.prepare")
    h, level = _TaskLog(), lg.level
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    try:
        c0, t = time.process_time(), time.perf_counter()
        prepare_shards(cfg)
        dt, cpu = time.perf_counter() - t, time.process_time() - c0
    finally:
        lg.removeHandler(h)
        lg.setLevel(level)
        shutil.rmtree(out, ignore_errors=True)
    return dt, h.tasks, cpu


def _bare_total(src_dir: str) -> float:
    return bare_parts(src_dir, JPEG)["total"]


def machine_ceiling(src_dir: str, repeats: int) -> float:
    """Throughput of 2 independent processes running the bare loop at once, over 1 alone (no Ray, no
    shared state): what this machine's two cores give any two CPU-bound processes."""
    import multiprocessing as mp

    ratios = []
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_bare_total, [src_dir] * 2)  # imports and libraries loaded in both
        for _ in range(repeats):
            alone = pool.apply(_bare_total, (src_dir,))
            t = time.perf_counter()
            pool.map(_bare_total, [src_dir] * 2, chunksize=1)
            ratios.append(2 * alone / (time.perf_counter() - t))
    return statistics.median(ratios)


def ray_system_cpu() -> tuple[float, float]:
    """CPU seconds so far of Ray's worker processes and of its other processes (raylet, GCS, agents)."""
    import psutil

    workers = other = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            ct = p.cpu_times()
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "default_worker.py" in cmd or cmd.startswith("ray::"):  # workers rename themselves ray::<task>
            workers += ct.user + ct.system
        else:
            other += ct.user + ct.system
    return workers, other


# -- large images: peak RSS of a worker in a fresh process ------------------------------------------

_CHILD = r"""
import json, resource, sys, time
src, out, specs, shard_size = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
import numpy as np
from lossyvision.codecs import parse_spec, from_spec
from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards
from lossyvision import quality
import os, tempfile
from PIL import Image
settings = [CodecSetting(n, q=q, bpp=b, options=o) for n, q, b, o in map(parse_spec, specs)]
warm = tempfile.mkdtemp()
os.makedirs(os.path.join(warm, "src"))
Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(os.path.join(warm, "src", "w.png"))
# one tiny job first: every module, codec library and cache of the pipeline is loaded in the baseline
prepare_shards(PrepareConfig(dataset="folder", src=os.path.join(warm, "src"), split="train", out=os.path.join(warm, "out"), codecs=settings,
                             crop="full", workers=1, executor="local", shard_size=1, progress=False))
base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20  # resident now
cfg = PrepareConfig(dataset="folder", src=src, split="train", out=out, codecs=settings, crop="full", workers=1,
                    executor="local", shard_size=shard_size, progress=False)
t = time.perf_counter()
prepare_shards(cfg)
import lossyvision
# VmHWM is this address space's peak; ru_maxrss would also count the parent's RSS at fork (Linux
# carries it across exec), which made the number depend on who started the measurement
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"code": lossyvision.__file__, "baseline_mib": base, "peak_mib": hwm,
                  "wall_s": time.perf_counter() - t}))
"""


def peak_rss(src_dir: str, specs: list[str], shard_size: int, code: str | None = None) -> dict:
    """Peak RSS of prepare-shards (one in-process worker, --crop full) over ``src_dir`` in a fresh
    Python, with lossyvision imported from ``code`` (a checkout; default this one)."""
    out = tempfile.mkdtemp(prefix="lv-bench-rss-")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(code or REPO), "OMP_NUM_THREADS": "1"}
    try:
        p = subprocess.run([sys.executable, "-c", _CHILD, src_dir, out, ",".join(specs), str(shard_size)],
                           capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
        if p.returncode != 0:
            return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1], "rc": p.returncode}
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96, help="500x375 JPEGs for the loop and pipeline runs (96)")
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement; medians (3)")
    ap.add_argument("--scaling-images", type=int, default=384, help="images for 1 vs 2 workers (384)")
    ap.add_argument("--large", action="store_true", help="also measure peak RSS on 12 MP photos")
    ap.add_argument("--large-images", type=int, default=4)
    ap.add_argument("--large-size", default="4000x3000")
    ap.add_argument("--large-specs", default="jpeg-q75,bpg-qp51")
    ap.add_argument("--large-code", default=None, help="another checkout to measure the same way (e.g. the commit before)")
    ap.add_argument("--large-only", action="store_true", help="only the large-image memory measurement (implies --large)")
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes, seconds not minutes")
    ap.add_argument("--json", default=None, help="write the ratio rows here")
    args = ap.parse_args()
    if args.quick:
        args.images, args.scaling_images, args.repeats, args.shard_size = 4, 8, 1, 2
        args.large_images, args.large_size, args.large_specs = 2, "600x400", "jpeg-q75"
    rows: list[dict] = []
    tmp = tempfile.mkdtemp(prefix="lv-bench-src-")
    args.large = args.large or args.large_only
    try:
        if not args.large_only:
            rows += loop_and_scaling(args, tmp)
        if args.large:
            rows += large_images(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common.write_json(args.json, "prepare", rows)


def loop_and_scaling(args, tmp: str) -> list[dict]:
    n = args.images
    rows: list[dict] = []
    src = make_folder(os.path.join(tmp, "loop"), n)
    nine = median_parts(src, NINE, args.repeats)
    jpeg = median_parts(src, JPEG, args.repeats)
    fwd, inv = colour_ms(args.repeats)
    ab = metrics_ab(src, NINE, args.repeats, limit=min(n, 24))
    print(f"prepare-shards benchmark: real-photo JPEGs 500x375 -> resize256/center224, medians of {args.repeats} runs\n")
    print("| loop | images | source s | codecs s | metrics s | metrics share |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, p in (("nine settings", nine), ("JPEG only (3)", jpeg)):
        print(f"| {name} | {n} | {p['source']:.2f} | {p['codecs']:.2f} | {p['metrics']:.2f} | {100 * p['share']:.1f} % |")
    print(f"\nMetrics per variant on the same decoded variants (nine settings): fused kernel {ab['fused']:.2f} ms, "
          f"OpenCV path {ab['opencv']:.2f} ms ({ab['opencv'] / ab['fused']:.2f}x)")
    print(f"\nRGB -> YCbCr 4:2:0: {fwd:.3f} ms, back: {inv:.3f} ms per 224x224 crop\n")
    rows += [common.target_row("metrics share, nine settings", 100 * nine["share"], "<=", 10, "%"),
             common.row("metrics share, JPEG only", 100 * jpeg["share"], "%"),
             common.row("metrics ms per setting (SSIM+MS-SSIM+PSNR, 224x224)", nine["metrics"] / (n * len(NINE)) * 1e3, "ms"),
             common.row("metrics ms per variant, OpenCV path (no numba)", ab["opencv"], "ms"),
             common.row("metrics, fused kernel vs OpenCV path", ab["opencv"] / ab["fused"]),
             common.target_row("RGB -> YCbCr 4:2:0 per 224x224", fwd, "<=", 0.5, "ms"),
             common.target_row("YCbCr 4:2:0 -> RGB per 224x224", inv, "<=", 0.5, "ms")]

    # pipeline vs bare; 1 vs 2 workers
    big = make_folder(os.path.join(tmp, "scale"), args.scaling_images)
    ns = args.scaling_images
    from lossyvision.pipelines.raypool import init_ray

    ceiling = machine_ceiling(big, args.repeats)
    t = time.perf_counter()
    init_ray(2)
    ray_start = time.perf_counter() - t
    import ray

    pipeline(big, JPEG[:1], 2, "ray", max(1, ns // 4))  # warm both worker processes (imports, libraries)
    bares, one, two, tasks1, tasks2, drv2 = [], [], [], [], [], []
    w0, o0 = ray_system_cpu()
    for _ in range(args.repeats):  # alternated, so drift in the machine's speed hits all alike
        bares.append(bare_parts(big, JPEG)["total"])
        dt, tk, _ = pipeline(big, JPEG, 1, "local", args.shard_size)
        one.append(dt)
        tasks1 += tk
        dt, tk, cpu = pipeline(big, JPEG, 2, "ray", args.shard_size)
        two.append(dt)
        tasks2 += tk
        drv2.append(cpu)
    w1, o1 = ray_system_cpu()
    separate = statistics.median(sum(pipeline(big, [s], 1, "local", args.shard_size)[0] for s in JPEG) for _ in range(args.repeats))
    ray.shutdown()
    p1, p2, bare = statistics.median(one), statistics.median(two), statistics.median(bares)
    speedup = p1 / p2
    per1 = statistics.mean(w for w, _ in tasks1) if tasks1 else float("nan")
    per2 = statistics.mean(w for w, _ in tasks2) if tasks2 else float("nan")
    util = sum(w for w, _ in tasks2) / (2 * sum(two)) if tasks2 else float("nan")
    slow = per2 / per1
    cpu1 = sum(c for _, c in tasks1) / sum(w for w, _ in tasks1) if tasks1 else float("nan")
    cpu2 = sum(c for _, c in tasks2) / sum(w for w, _ in tasks2) if tasks2 else float("nan")
    print(f"Pipeline and scaling: {ns} images, settings {', '.join(JPEG)}, --shard-size {args.shard_size}\n")
    print("| measurement | wall s | images/s | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| bare loop (1 process) | {bare:.2f} | {ns / bare:.1f} | 1.00 |")
    print(f"| pipeline, 1 worker, in-process | {p1:.2f} | {ns / p1:.1f} | {bare / p1:.2f} x bare speed |")
    print(f"| pipeline, 2 Ray workers (Ray started) | {p2:.2f} | {ns / p2:.1f} | {speedup:.2f} x 1 worker |")
    print(f"| 3 settings as 3 separate runs | {separate:.2f} | - | one pass = {p1 / separate:.2f} x separate |")
    print(f"| Ray start (local, 2 CPUs) | {ray_start:.2f} | - | pays off above ~{ray_start / (p1 / ns / 2):.0f} images |")
    print(f"| machine ceiling: 2 independent bare loops at once vs 1 | - | - | {ceiling:.2f} x |")
    runs = len(two)
    print(f"\nWhere 2 workers lose against 2x: worker utilisation {100 * util:.1f} % (task seconds / (2 x wall)); "
          f"a task takes {slow:.2f}x as long next to another one as alone ({per2 * 1e3:.0f} vs {per1 * 1e3:.0f} ms per "
          f"{args.shard_size}-image task; a task's CPU time is {100 * cpu1:.0f} % of its wall alone and {100 * cpu2:.0f} % "
          f"alongside, so the slowdown is {'CPU time itself (shared caches, memory bandwidth, clock)' if cpu2 > 0.9 else 'waiting'}); "
          f"per run the driver used {statistics.median(drv2):.2f} CPU s and Ray's own "
          f"processes {(o1 - o0) / runs:.2f} CPU s (workers {(w1 - w0) / runs:.2f}) of {2 * p2:.2f} core-seconds. "
          f"Speed-up ~= 2 x utilisation / slowdown = {2 * util / slow:.2f}.\n")
    rows += [common.target_row("1 -> 2 workers (Ray)", speedup, ">=", 1.8),
             common.row("pipeline (1 worker) vs bare loop, speed", bare / p1),
             common.row("one pass vs separate runs, time", p1 / separate),
             common.row("2-worker utilisation", 100 * util, "%"),
             common.row("task slowdown next to another task", slow),
             common.row("machine ceiling: 2 independent processes vs 1", ceiling),
             common.row("2 workers vs machine ceiling", speedup / ceiling),
             common.row("Ray start", ray_start, "s")]

    return rows


def large_images(args, tmp: str) -> list[dict]:
    rows: list[dict] = []
    w, h = map(int, args.large_size.split("x"))
    lsrc = make_folder(os.path.join(tmp, "large"), args.large_images, (w, h))
    img_mib = w * h * 3 / 2**20
    cases = [("this checkout", None)] + ([(f"{args.large_code}", args.large_code)] if args.large_code else [])
    print(f"Peak RSS of one prepare-shards worker: {args.large_images} photos {w}x{h} (one image = {img_mib:.0f} MiB "
          f"of uint8 RGB), --crop full, {args.large_specs}, fresh process, above its RSS after imports\n")
    print("| code | --shard-size | peak - baseline MiB | x one image | wall s |")
    print("| --- | --- | --- | --- | --- |")
    for label, code in cases:
        for ss in (1, args.large_images):
            r = peak_rss(lsrc, args.large_specs.split(","), ss, code)
            if "error" in r:
                print(f"| {label} | {ss} | failed: {r['error']} | - | - |")
                rows.append(common.row(f"large-image peak RSS ({label}, shard {ss})", None, "MiB"))
                continue
            d = r["peak_mib"] - r["baseline_mib"]
            print(f"| {label} | {ss} | {d:.0f} | {d / img_mib:.1f} | {r['wall_s']:.1f} |")
            name = f"large-image peak RSS / image bytes ({'after' if code is None else 'other code'}, shard {ss})"
            rows.append(common.target_row(name, d / img_mib, "<=", 24) if code is None else common.row(name, d / img_mib))
    print()
    return rows


if __name__ == "__main__":
    main()
