"""prepare-shards benchmark: pipeline vs bare loop, 1 vs 2 workers, one pass vs separate runs, Ray start.

    python tools/bench/prepare.py [--images 384] [--shard-size 8] [--codecs jpeg-q75,jpeg-q10,jpeg-q5]

Builds a folder of real-photo JPEGs of ImageNet-like size (500x375), then measures in one run:
- bare loop: read + decode source, crop (resize 256 + centre 224), encode + decode, PSNR/SSIM/MS-SSIM,
  one process, no Ray, no tar;
- the pipeline (prepare_shards) in-process with 1 worker, and on Ray with 2 workers;
- the three JPEG settings in one pass vs three separate runs;
- the local/Ray crossover: Ray's start-up against the per-image cost.
Prints ratios (all wall times from this one run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from PIL import Image


def make_folder(root: str, n: int) -> str:
    from lossyvision.pipelines.sources import create_source

    src = create_source("samples", None, "all")
    imgs = [src.load(it)[0] for it in src.items()]
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        a = imgs[i % len(imgs)]
        im = Image.fromarray(a).resize((500, 375), Image.BICUBIC).rotate(i % 4 * 90, expand=False)
        im.save(os.path.join(root, f"img_{i:05d}.JPEG"), quality=90)
    return root


def bare_loop(src_dir: str, specs: list[str]) -> float:
    from lossyvision import codecs, quality
    from lossyvision.pipelines.crops import IMAGENET
    from lossyvision.pipelines.imageio import read_rgb

    cs = [codecs.from_spec(s) for s in specs]
    t = time.perf_counter()
    for f in sorted(os.listdir(src_dir)):
        rgb, _ = IMAGENET(read_rgb(os.path.join(src_dir, f)))
        ref = quality.Reference(rgb)  # the same metric work as the pipeline: SSIM + MS-SSIM per setting
        for c in cs:
            r = c.roundtrip(rgb)
            quality.psnr(rgb, r.decoded), ref.scores(r.decoded)
    return time.perf_counter() - t


def pipeline(src_dir: str, specs: list[str], workers: int, executor: str, shard_size: int, orig: bool = True) -> float:
    from lossyvision.codecs import parse_spec
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    out = tempfile.mkdtemp(prefix="lv-bench-")
    settings = [CodecSetting(n, q=q, bpp=b, options=o) for n, q, b, o in map(parse_spec, specs)]
    cfg = PrepareConfig(dataset="folder", src=src_dir, split="all", out=out, codecs=settings, crop="imagenet",
                        workers=workers, executor=executor, shard_size=shard_size, progress=False, write_orig=orig)
    t = time.perf_counter()
    prepare_shards(cfg)
    dt = time.perf_counter() - t
    shutil.rmtree(out)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--codecs", default="jpeg-q75,jpeg-q10,jpeg-q5")
    args = ap.parse_args()
    specs = args.codecs.split(",")
    tmp = tempfile.mkdtemp(prefix="lv-bench-src-")
    src = make_folder(tmp, args.images)
    n = args.images
    try:
        bare = bare_loop(src, specs)
        p1 = pipeline(src, specs, 1, "local", args.shard_size, orig=False)
        import ray

        t = time.perf_counter()
        from lossyvision.pipelines.raypool import init_ray

        init_ray(2)
        ray_start = time.perf_counter() - t
        # warm the two worker processes (imports, codec libraries) so the timing below is steady state
        pipeline(src, specs[:1], 2, "ray", max(1, args.images // 4), orig=False)
        p2 = pipeline(src, specs, 2, "ray", args.shard_size, orig=False)
        separate = sum(pipeline(src, [s], 1, "local", args.shard_size, orig=False) for s in specs)
        ray.shutdown()
        print(f"prepare-shards benchmark: {n} real-photo JPEGs 500x375 -> resize256/center224, settings {', '.join(specs)}\n")
        print("| measurement | wall s | images/s | ratio |")
        print("| --- | --- | --- | --- |")
        print(f"| bare loop (decode+crop+encode+decode+metrics, 1 process) | {bare:.2f} | {n / bare:.1f} | 1.00 |")
        print(f"| pipeline, 1 worker, in-process (tars + manifests) | {p1:.2f} | {n / p1:.1f} | {p1 / bare:.2f} x bare |")
        print(f"| pipeline, 2 Ray workers (Ray already started) | {p2:.2f} | {n / p2:.1f} | {p1 / p2:.2f} x speed-up vs 1 worker |")
        print(f"| {len(specs)} settings as {len(specs)} separate runs (1 worker) | {separate:.2f} | - | one pass = {p1 / separate:.2f} x separate |")
        per_img = p1 / n
        print(f"| Ray start (local, 2 CPUs) | {ray_start:.2f} | - | pays off above ~{ray_start / (per_img / 2):.0f} images |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
