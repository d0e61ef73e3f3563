"""restore-shards wall time: the serial path (workers=0) against the overlapped one (workers=N), side by side.

    python tools/bench/restore.py [--images 16] [--size 256x256] [--shard-size 8] [--workers 0,1,2]
        [--width 8 --blocks 2] [--gpu-ms 50] [--threads 1] [--device cpu] [--repeats 3] [--quick]
        [--json PATH]

Prepares --images of scikit-image's real photos (the ``samples`` dataset, at most 18), scaled to
--size, as ``orig`` + ``jpeg-q10`` shards of --shard-size with prepare_shards, saves a tiny untrained
FineNet generator (--width, --blocks; random init) with save_generator, then times
lossyvision.pipelines.restore.restore_shards over them with every --workers value (0 is the serial
path: decode, restore, measure and PNG-encode one image at a time; N > 0 decodes ahead in a thread and
measures + encodes behind the generator in N threads), in two modes:

- real generator: the tiny FineNet on --device, on --threads torch threads (the CPU work of the
  generator competes with the pipeline's, so the overlap wins little on a small machine);
- stand-in (--gpu-ms, 0 to skip it): the generator call replaced by one that sleeps --gpu-ms per
  image and returns its input, i.e. a GPU's inference as the host sees it (the thread that feeds the
  device only waits, without a CPU), so the overlap can hide the measuring and encoding behind it.

Each number is the median of --repeats runs, the runs of every workers value interleaved (their order
alternating between repeats) so that drift in the machine's load hits them alike. Prints a Markdown
table per mode with the ratio serial / overlapped, and checks that every run wrote byte-identical
shards (the sha256 in the manifests; restore_shards promises it): exit 1 when not. --json writes the
rows (tools/bench/common.py), none with a target: the speed-up depends on the machine's cores.
--quick: 4 images of 64x64, shards of 2, workers 0,1, a 5 ms stand-in, one run (a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (tools/bench/common.py, next to this script)

VARIANT = "jpeg-q10"


def prepare_input(work: Path, images: int, w: int, h: int, shard_size: int) -> Path:
    """ROOT/samples with split ``all``: ``orig`` and ``jpeg-q10`` of the first ``images`` photos at WxH."""
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    prepare_shards(PrepareConfig(dataset="samples", out=str(work / "shards"), codecs=[CodecSetting("jpeg", "10")],
                                 crop=f"scale:{w}x{h}", shard_size=shard_size, limit=images, executor="local",
                                 workers=1, progress=False, ms_ssim=False))
    root = work / "shards" / "samples"
    if not (root / "all" / VARIANT).is_dir():
        raise SystemExit(f"prepare_shards wrote no {VARIANT} variant under {root / 'all'}")
    return root


def save_tiny_generator(path: Path, width: int, blocks: int) -> dict:
    """An untrained FineNet (random init, seed 0): its speed is that of a trained one of its size."""
    import torch

    from lossyvision.nets.restoration import build_restoration_net
    from lossyvision.train.restoration import save_generator

    arch = {"net": "finenet", "width": width, "n_blocks": blocks, "norm": "instance"}
    torch.manual_seed(0)
    save_generator(path, build_restoration_net(arch), arch, {"step": 0, "train_keys": {"split": "bench", "keys": []}})
    return arch


@contextlib.contextmanager
def gpu_stand_in(ms: float):
    """Replace lossyvision.pipelines.restore.restore_image (which restore_frame looks up at each call)
    by a stand-in that sleeps ``ms`` and returns its input. The sleep stands for GPU inference as the
    host sees it: the thread that feeds the device launches the kernels and then only waits for them
    (without the GIL and without a CPU), which is the time the overlapped pipeline can hide the
    CPU stages behind. A benchmark may patch the library; the library and its tests never depend on it."""
    import numpy as np

    import lossyvision.pipelines.restore as R

    def waits_like_a_gpu(generator, rgb, device, tile=0, overlap=64, amp=True):
        time.sleep(ms / 1e3)
        return np.array(rgb)

    real = R.restore_image
    R.restore_image = waits_like_a_gpu
    try:
        yield
    finally:
        R.restore_image = real


def warm_up(generator_path: Path, device: str, w: int, h: int) -> None:
    """One untimed generator call at the bench's frame size, so that torch's one-time set-up does not
    land in whichever run comes first."""
    import numpy as np

    from lossyvision.pipelines.restore import load_generator, restore_image
    from lossyvision.pipelines.stream import resolve_device

    dev = resolve_device(device)
    g, _ = load_generator(generator_path, dev)
    restore_image(g, np.zeros((h, w, 3), np.uint8), dev)


def time_mode(root: Path, generator: Path, workers: list[int], repeats: int, device: str, tag: str):
    """{workers: [wall s per run]} and {workers: [shard sha256 lists per run]} of restore_shards."""
    from lossyvision.pipelines.restore import RestoreConfig, restore_shards

    times: dict[int, list[float]] = {n: [] for n in workers}
    shas: dict[int, list[list[str]]] = {n: [] for n in workers}
    for r in range(max(1, repeats)):
        for n in workers if r % 2 == 0 else workers[::-1]:  # alternated: drift hits every value alike
            out_variant = f"{VARIANT}+bench-{tag}-r{r}-w{n}"
            cfg = RestoreConfig(shards=str(root), split="all", variant=VARIANT, generator=str(generator),
                                out_variant=out_variant, device=device, quiet=True, workers=n)
            t = time.perf_counter()
            manifest = restore_shards(cfg, progress=False)
            times[n].append(time.perf_counter() - t)
            shas[n].append([s["sha256"] for s in manifest["shards"]])
            # removed outside the timing, so the dataset card restore_shards rewrites stays the same size
            shutil.rmtree(root / "all" / out_variant)
    return times, shas


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16, help="photos (scikit-image has 18)")
    ap.add_argument("--size", default="256x256", help="frame WxH the photos are scaled to")
    ap.add_argument("--shard-size", type=int, default=8, help="samples per shard")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated workers values; 0 (serial) is added first")
    ap.add_argument("--width", type=int, default=8, help="generator base channels (the paper's FineNet: 64)")
    ap.add_argument("--blocks", type=int, default=2, help="generator residual blocks (the paper's: 9)")
    ap.add_argument("--gpu-ms", type=float, default=50.0,
                    help="also time a stand-in generator that waits this long per image (0: skip it)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the generator's)")
    ap.add_argument("--device", default="cpu", help="the real generator's device (cpu, cuda, ...)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per workers value and mode; medians are reported")
    ap.add_argument("--quick", action="store_true", help="4 images of 64x64, workers 0,1, 5 ms stand-in, 1 run")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the rows here (tools/bench/common.py)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.size, args.shard_size, args.workers, args.repeats = 4, "64x64", 2, "0,1", 1
        args.gpu_ms = min(args.gpu_ms, 5.0) if args.gpu_ms else 0.0
    w, h = (int(v) for v in args.size.lower().split("x"))
    workers = [int(v) for v in args.workers.split(",") if v.strip()]
    workers = [0] + sorted({n for n in workers if n > 0})
    if len(workers) < 2:
        ap.error("--workers: name at least one value > 0 to compare with the serial path")
    if not 1 <= args.images <= 18:
        ap.error("--images: 1 to 18 (scikit-image's photos)")

    import torch

    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # restore_shards' INFO/WARNING lines would interleave with the tables

    modes = [("real generator", None)]
    if args.gpu_ms > 0:
        modes.append((f"{args.gpu_ms:g} ms stand-in", args.gpu_ms))
    rows, tables, all_same = [], [], True
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        root = prepare_input(work, args.images, w, h, args.shard_size)
        arch = save_tiny_generator(work / "generator.pt", args.width, args.blocks)
        setup_s = time.perf_counter() - t
        warm_up(work / "generator.pt", args.device, w, h)
        for i, (label, ms) in enumerate(modes):
            with gpu_stand_in(ms) if ms else contextlib.nullcontext():
                times, shas = time_mode(root, work / "generator.pt", workers, args.repeats, args.device, f"m{i}")
            reference = shas[0][0]
            same = all(s == reference for runs in shas.values() for s in runs)
            all_same &= same
            serial = statistics.median(times[0])
            lines = []
            for n in workers:
                m = statistics.median(times[n])
                speed_up = serial / m
                lines.append(f"| {n}{' (serial)' if n == 0 else ''} | {m:.2f} | "
                             f"{', '.join(f'{x:.2f}' for x in times[n])} | {args.images / m:.1f} | "
                             f"{speed_up:.2f}x |")
                rows.append(common.row(f"restore s, {label}, workers={n}", m, "s"))
                if n:
                    rows.append(common.row(f"overlap speed-up, {label}, workers={n} (serial / overlapped)", speed_up))
            rows.append(common.row(f"overlapped shards byte-identical to serial, {label} (1 = yes)",
                                   1.0 if same else 0.0, "bool"))
            tables.append((label, lines, same, len(reference)))

    load = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"restore-shards, {args.images} photos at {w}x{h} in shards of {args.shard_size}, {VARIANT} source, "
          f"generator finenet width {args.width} blocks {args.blocks} on {args.device}, torch threads "
          f"{torch.get_num_threads()}, {cpus} CPUs, load {load}; medians of {args.repeats} runs "
          f"(input set up in {setup_s:.1f} s)")
    for label, lines, same, n_shards in tables:
        print(f"\n### {label}\n")
        print("| workers | median s | runs s | img/s | serial / this |")
        print("| --- | ---: | --- | ---: | ---: |")
        print("\n".join(lines))
        print(f"\n{n_shards} shards per run, sha256 {'identical in every run' if same else 'DIFFER between runs'}")
    common.write_json(args.json, "restore", rows, images=args.images, size=[w, h], shard_size=args.shard_size,
                      workers=workers, arch=arch, device=args.device, threads=args.threads, gpu_ms=args.gpu_ms,
                      repeats=args.repeats, cpus=cpus, identical=all_same)
    if not all_same:
        print("the overlapped runs wrote shards that differ from the serial run's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
