"""Training-input benchmark: paired shard loader vs ImageFolder, fine-tune vs expert step time.

    python tools/bench/train.py [--images 256] [--batch-size 32] [--workers 2] [--model mnasnet0_5] [--json PATH]

Builds a folder of distinct real-photo JPEGs of ImageNet-like size (500x375: scikit-image's photos,
cropped, rotated and flipped), writes shards with prepare_shards (`orig` + one codec setting, resize
256 / centre 224) and an ImageFolder tree of the same `orig` crops saved as JPEG quality 90 (one class
folder per source photo). Then measures in one run, all through torch DataLoader with the same batch
size, worker count and prefetch factor:
- loaders, samples/s: the paired shard loader (ShardStream: orig + variant in lockstep, decoded in the
  workers, shipped as uint8, normalised in the main process with `to_device` on the CPU "device", as
  training does); the single-variant loader (the variant only, what cached expert training reads);
  torchvision ImageFolder (PIL loader, ToTensor + Normalize in the workers). Each figure is the best of
  --repeats measurements of --epochs epochs, the loaders taking turns, both over whole epochs (worker
  start included: workers restart every epoch) and in steady state (after each epoch's first batch);
- training steps: fine-tune, expert with the online teacher and expert with the HDF5 teacher cache,
  set up by the library's Trainer (model, frozen teacher copy, Adam, recipe losses, teacher cache) on a
  torchvision model with random weights. Per step: loop wall time (data wait included) and compute
  (batch to device, teacher, loss, backward, Adam step); medians over --repeats blocks of --steps steps,
  the recipes taking turns, after one untimed step per block.
The `folder` dataset has no labels, so training labels come from the key (the source photo, the same
class as the ImageFolder tree). Prints ratios against the targets the tables judge: distinct classes
per batch from shuffled shards >= 0.9x the i.i.d. expectation; pairs/s >= 1.5x ImageFolder's images/s
(each orig format); variant only >= 2.5x ImageFolder (both judged in steady state, uint8 out); cached
expert step <= 1.05x fine-tune step (wall); with --efficiency, shard-fed steps >= 0.9x synthetic ones.
Defaults take about 2 minutes on a 2-core machine. --json writes every printed ratio as a row
(tools/bench/common.py), with those targets and no others.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (tools/bench/common.py, next to this script)

# views of a photo: (zoom, rotation, mirror); ~16 per photo keeps 256 images distinct with 18 photos
_ROT = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
_KEY = re.compile(r"(?:^|/)p(\d+)_\d+$")


def make_folder(root: str, n: int) -> int:
    """Write n distinct 500x375 JPEGs `p<photo>_<i>.JPEG`; returns the number of source photos."""
    from lossyvision.pipelines.sources import create_source

    src = create_source("samples", None, "all")
    photos = [Image.fromarray(src.load(it)[0]).convert("RGB") for it in src.items()]
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        p, j = i % len(photos), i // len(photos)
        im = photos[p]
        rot = _ROT[j % 4]
        zoom = (1.0, 0.8, 0.65, 0.5)[(j // 4) % 4]
        mirror = (j // 16) % 2 == 1
        # crop a region of the aspect the rotation needs (3:4 for 90/270, else 4:3), zoomed, offset by j
        aspect = 3 / 4 if rot in (_ROT[1], _ROT[3]) else 4 / 3
        w, h = im.size
        cw, ch = (w, w / aspect) if w / h <= aspect else (h * aspect, h)
        cw, ch = cw * zoom, ch * zoom
        fx, fy = (j * 0.37 + p * 0.11) % 1.0, (j * 0.61 + p * 0.23) % 1.0
        x0, y0 = fx * (w - cw), fy * (h - ch)
        view = im.crop((round(x0), round(y0), round(x0 + cw), round(y0 + ch)))
        view = view.resize((375, 500) if aspect < 1 else (500, 375), Image.BICUBIC)
        if rot is not None:
            view = view.transpose(rot)
        if mirror:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        view.save(os.path.join(root, f"p{p:02d}_{i:05d}.JPEG"), quality=90)
    return len(photos)


def label_of(key: str) -> int:
    m = _KEY.search(key)
    if m is None:
        raise ValueError(f"unexpected key {key!r}")
    return int(m.group(1))


def make_shards(src: str, out: str, codec: str, q, options: dict, size: int, shard_size: int,
                orig_format: str = "png") -> tuple[Path, float]:
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    crop = "imagenet" if size == 224 else f"resize{round(size * 256 / 224)}-center{size}"
    t = time.perf_counter()
    prepare_shards(PrepareConfig(dataset="folder", src=src, split="all", out=out,
                                 codecs=[CodecSetting(codec, q, options=options)], crop=crop,
                                 shard_size=shard_size, executor="local", progress=False, orig_format=orig_format))
    return Path(out) / "folder" / "all", time.perf_counter() - t


def make_imagefolder(orig_dir: Path, out: str, quality: int) -> int:
    """The orig crops as JPEG files in one folder per class; returns the total bytes."""
    from lossyvision.pipelines.stream import decode_lossless, iter_tar_samples, read_variant

    total = 0
    v = read_variant(orig_dir)
    for s in v.shards:
        for sample in iter_tar_samples(v.shard_path(s.name)):
            key = sample["__key__"]
            d = os.path.join(out, f"p{label_of(key):02d}")
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, key.replace("/", "_") + ".jpg")
            Image.fromarray(decode_lossless(sample[v.ext], v.ext)).save(path, quality=quality)
            total += os.path.getsize(path)
    return total


# -- loaders ------------------------------------------------------------------------------------

def timed_epoch(batches, prepare) -> tuple[int, int, float, float]:
    """Run one epoch: (samples, samples after the first batch, s to the first batch, s in all)."""
    t0 = time.perf_counter()
    n = n_first = 0
    t_first = 0.0
    for items in batches:
        n += prepare(items)
        if not n_first:
            n_first, t_first = n, time.perf_counter() - t0
    return n, n - n_first, t_first, time.perf_counter() - t0


def uint8_shard_batch(items) -> int:
    """What the loader hands a GPU trainer: uint8 batches (normalised there, on the device, at no CPU cost)."""
    return len(items[-1])


def normalise_shard_batch(items) -> int:
    from lossyvision.pipelines.stream import to_device

    for x in items[:-2]:  # (x, x_tilde, y, keys) or (x_tilde, y, keys): normalise the images on the device
        to_device(x, "cpu")
    return len(items[-1])


def folder_batch(items) -> int:
    x, y = items
    x.to("cpu")  # already normalised in the workers
    return len(y)


def imagefolder_loader(root: str, batch_size: int, workers: int):
    import torch
    from torchvision import datasets, transforms

    from lossyvision.pipelines.stream import IMAGENET_MEAN, IMAGENET_STD

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ds = datasets.ImageFolder(root, transform=tf)  # default loader: PIL
    # same prefetch factor as lossyvision's make_loader, so only the dataset differs
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       prefetch_factor=4 if workers > 0 else None)


def bench_loaders(shard_dirs: dict[str, Path], spec: str, folder_root: str, args) -> dict[str, tuple[float, float]]:
    """Per loader, the median (epoch samples/s, steady samples/s) over args.repeats turns of args.epochs
    epochs, the loaders taking turns so that the machine's drift hits them alike.

    epoch: every sample over the whole wall time, DataLoader worker start included (workers restart
    every epoch: ShardStream needs non-persistent workers for set_epoch); steady: the samples after
    each epoch's first batch over the time after it, what an ImageNet-size epoch sees.
    """
    from lossyvision.pipelines.stream import ShardStream, make_loader

    kw = dict(shuffle=True, seed=0, buffer_size=args.shuffle_buffer, rank=0, world_size=1)
    folder = imagefolder_loader(folder_root, args.batch_size, args.workers)

    def shards(ds, handle):
        def epoch(e: int):
            ds.set_epoch(e)
            return timed_epoch(make_loader(ds, args.batch_size, args.workers), handle)
        return epoch

    runs = {"folder": lambda e: timed_epoch(folder, folder_batch)}
    streams = {f"pair-{fmt}": ShardStream(d / spec, d / "orig", **kw) for fmt, d in shard_dirs.items()}
    streams["single"] = ShardStream(next(iter(shard_dirs.values())) / spec, **kw)
    for name, ds in streams.items():
        runs[name] = shards(ds, uint8_shard_batch)
        runs[f"{name}+norm"] = shards(ds, normalise_shard_batch)
    for run in runs.values():  # warm-up: page cache, lazy imports
        run(0)
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for r in range(args.repeats):
        for name, run in runs.items():
            res = [run(1 + r * args.epochs + e) for e in range(args.epochs)]
            n, n_steady, t_first, t_all = (sum(x) for x in zip(*res))
            got[name].append((n / t_all, n_steady / (t_all - t_first) if n_steady else 0.0))
    return {k: (statistics.median(e for e, _ in v), statistics.median(s for _, s in v)) for k, v in got.items()}


# -- class mix of training batches ----------------------------------------------------------------

def expected_distinct(class_counts: list[int], batch: int) -> float:
    """Expected distinct classes in a batch drawn uniformly without replacement (i.i.d.-like sampling)."""
    from math import comb

    n = sum(class_counts)
    return sum(1 - comb(n - c, batch) / comb(n, batch) for c in class_counts)


def make_imagenet_train(root: str, classes: int, per_class: int) -> None:
    """ILSVRC2012's train layout (train/<wnid>/<wnid>_<i>.JPEG) of small real-photo tiles."""
    import numpy as np

    from lossyvision.pipelines.sources import create_source

    src = create_source("samples", None, "all")
    photos = [src.load(it)[0] for it in src.items()]
    rng = np.random.default_rng(0)
    for c in range(classes):
        wnid = f"n{1440764 + 1000 * c:08d}"
        d = os.path.join(root, "train", wnid)
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            a = photos[(c + i) % len(photos)]
            y, x = int(rng.integers(0, a.shape[0] - 48)), int(rng.integers(0, a.shape[1] - 48))
            Image.fromarray(np.ascontiguousarray(a[y:y + 48, x:x + 48])).convert("RGB").save(
                os.path.join(d, f"{wnid}_{i}.JPEG"), quality=90)


def bench_class_mix(work: Path, args) -> dict[str, float]:
    """Distinct classes per training batch through the real training loader (TrainConfig's workers and
    shuffle buffer, `make_loader` as the Trainer calls it), for shards written shuffled (the default
    for training splits) and sorted (as before), against the i.i.d. expectation."""
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards
    from lossyvision.pipelines.stream import ShardStream, make_loader, read_variant
    from lossyvision.train.classifier import TrainConfig

    make_imagenet_train(str(work / "ILSVRC2012"), args.mix_classes, args.mix_per_class)
    cfg = TrainConfig(shards="-", variant="jpeg-q10", out="-")  # the defaults: workers, shuffle buffer
    out = {}
    for order in ("shuffled", "sorted"):
        prepare_shards(PrepareConfig(dataset="imagenet", src=str(work / "ILSVRC2012"), split="train", out=str(work / order),
                                     codecs=[CodecSetting("jpeg", 10)], crop="scale:32x32", shard_size=args.mix_shard_size,
                                     executor="local", progress=False, order=order, ms_ssim=False))
        vdir = work / order / "imagenet" / "train" / "jpeg-q10"
        distinct = []
        for epoch in range(3):
            ds = ShardStream(vdir, shuffle=True, seed=cfg.seed, buffer_size=cfg.shuffle_buffer, rank=0, world_size=1)
            ds.set_epoch(epoch)
            for _, y, _ in make_loader(ds, args.mix_batch, cfg.workers, drop_last=True):
                distinct.append(len(set(y.tolist())))
        out[order] = statistics.mean(distinct)
    counts = [args.mix_per_class] * args.mix_classes
    out["iid"] = expected_distinct(counts, args.mix_batch)
    out["workers"], out["buffer"] = cfg.workers, cfg.shuffle_buffer
    assert read_variant(work / "shuffled" / "imagenet" / "train" / "orig").manifest["order"]["policy"] == "shuffled"
    return out


# -- training steps -----------------------------------------------------------------------------

def make_trainer(shards: Path, spec: str, out: Path, recipe: str, cache: str, num_classes: int, args):
    from lossyvision.train.classifier import Trainer, TrainConfig

    cfg = TrainConfig(shards=str(shards), variant=spec, out=str(out), recipe=recipe, model=f"torchvision:{args.model}",
                      num_classes=num_classes, train_split="all", val_split="all", batch_size=args.batch_size,
                      workers=args.workers, shuffle_buffer=args.shuffle_buffer, device="cpu", teacher_cache=cache,
                      progress=False, seed=0)
    return Trainer(cfg)


def train_step(tr, items, split: str) -> None:
    """One step of the Trainer's own batch and loss code; labels from the key (folder shards have none)."""
    import torch

    keys = items[-1]
    y = torch.tensor([label_of(k) for k in keys])
    batch = tr._batch((*items[:-2], y, keys), split)
    with torch.set_grad_enabled(True), tr._autocast():
        loss, _ = tr.recipe.loss(tr.ddp_model, batch)
    tr.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    tr.optimizer.step()
    loss.item()  # a sync per step, as a logged step has


def run_block(tr, steps: int, epoch: int) -> tuple[list[float], list[float]]:
    """One untimed step, then `steps` timed steps of the Trainer's own batch and loss code."""
    from lossyvision.pipelines.stream import make_loader

    split = tr.cfg.train_split
    ds = tr._stream(split, train=True)
    ds.set_epoch(epoch)
    it = iter(make_loader(ds, tr.cfg.batch_size, tr.cfg.workers))
    tr.ddp_model.train(True)
    walls, computes = [], []
    t_prev = time.perf_counter()
    for step in range(steps + 1):
        items = next(it)
        t_got = time.perf_counter()
        train_step(tr, items, split)
        t_done = time.perf_counter()
        if step > 0:
            walls.append(t_done - t_prev)
            computes.append(t_done - t_got)
        t_prev = t_done
    del it  # shuts the workers down
    return walls, computes


def bench_efficiency(shards: Path, spec: str, work: Path, num_classes: int, args) -> dict:
    """Loader efficiency: cached expert training of --eff-model at --eff-batch on --device, steps fed by the
    shard loader against the same loop fed one in-memory batch over and over (synthetic: no loader)."""
    import torch

    from lossyvision.pipelines.stream import make_loader
    from lossyvision.train.classifier import Trainer, TrainConfig

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = TrainConfig(shards=str(shards), variant=spec, out=str(work / "eff"), recipe="expert",
                      model=f"torchvision:{args.eff_model}", num_classes=num_classes, train_split="all", val_split="all",
                      batch_size=args.eff_batch, workers=args.workers, device=device, progress=False, seed=0,
                      teacher_cache=str(work / "eff-teacher.h5"))
    tr = Trainer(cfg)
    tr._prepare_caches()
    ds = tr._stream("all", train=True)
    if ds.num_batches(args.eff_batch, drop_last=True) < 2:
        raise SystemExit(f"--images {args.images} gives fewer than 2 batches of --eff-batch {args.eff_batch}")

    def step(items) -> None:
        train_step(tr, items, "all")

    tr.ddp_model.train(True)
    real, synth = [], []
    for r in range(args.repeats):
        ds.set_epoch(r)
        loader = make_loader(ds, args.eff_batch, args.workers, drop_last=True, pin_memory=device == "cuda")
        it = iter(loader)
        step(next(it))  # worker start, warm-up
        t, n = time.perf_counter(), 0
        for items in it:
            step(items)
            n += len(items[-1])
        if n:
            real.append(n / (time.perf_counter() - t))
        first = next(iter(make_loader(ds, args.eff_batch, 0, drop_last=True)))
        step(first)
        t = time.perf_counter()
        for _ in range(max(1, len(loader) - 1)):
            step(first)
        synth.append(max(1, len(loader) - 1) * args.eff_batch / (time.perf_counter() - t))
    rs, ss = statistics.median(real), statistics.median(synth)
    return {"device": device, "real": rs, "synthetic": ss, "ratio": rs / ss}


def bench_steps(shards: Path, spec: str, work: Path, num_classes: int, args) -> tuple[dict, float]:
    trainers = {
        "finetune": make_trainer(shards, spec, work / "ft", "finetune", "off", num_classes, args),
        "expert-online": make_trainer(shards, spec, work / "ex-online", "expert", "off", num_classes, args),
        "expert-cached": make_trainer(shards, spec, work / "ex-cached", "expert", str(work / "teacher.h5"),
                                      num_classes, args),
    }
    t = time.perf_counter()
    trainers["expert-cached"]._prepare_caches()  # builds <work>/teacher-all.h5 (train and val split: both "all")
    cache_s = time.perf_counter() - t
    ds = trainers["finetune"]._stream("all", train=True)
    per_epoch = ds.num_batches(args.batch_size)
    steps = min(args.steps, per_epoch - 1)
    if steps < 1:
        raise SystemExit(f"--images {args.images} gives {per_epoch} batch(es) per epoch at --batch-size "
                         f"{args.batch_size}; need at least 2")
    res = {k: ([], []) for k in trainers}
    for r in range(args.repeats):
        for name, tr in trainers.items():
            w, c = run_block(tr, steps, r)
            res[name][0].extend(w)
            res[name][1].extend(c)
    return {k: (statistics.median(w), statistics.median(c), len(w)) for k, (w, c) in res.items()}, cache_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="distinct source images (default 256)")
    ap.add_argument("--codec", default="jpeg-q10", help="codec variant, as a spec (default jpeg-q10)")
    ap.add_argument("--orig-formats", default="png,qoi,npy", help="orig formats to measure side by side (png,qoi,npy)")
    ap.add_argument("--size", type=int, default=224, help="crop size: 224 = resize 256 + centre 224 (default)")
    ap.add_argument("--shard-size", type=int, default=32, help="samples per shard (default 32)")
    ap.add_argument("--folder-quality", type=int, default=90, help="JPEG quality of the ImageFolder files (90)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch size of every loader and step (32)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of every loader (2)")
    ap.add_argument("--shuffle-buffer", type=int, default=0,
                    help="ShardStream sample shuffle buffer (default 0: shards shuffled per epoch, samples in shard "
                         "order; a buffer changes the order and delays an epoch's first batch, not the decode work)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per loader measurement (2)")
    ap.add_argument("--repeats", type=int, default=3, help="loader measurements / step blocks per case; medians (3)")
    ap.add_argument("--model", default="mnasnet0_5", help="torchvision model, random weights (mnasnet0_5)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per block (4; at most an epoch's batches - 1)")
    ap.add_argument("--skip-steps", action="store_true", help="measure the loaders only")
    ap.add_argument("--efficiency", action="store_true",
                    help="also measure loader efficiency: expert steps from shards vs synthetic in-memory batches")
    ap.add_argument("--eff-model", default="mnasnet1_0", help="efficiency: torchvision model (mnasnet1_0)")
    ap.add_argument("--eff-batch", type=int, default=320, help="efficiency: batch size (320, the paper's)")
    ap.add_argument("--device", default=None, help="efficiency: cuda or cpu (default: cuda if available)")
    ap.add_argument("--mix-classes", type=int, default=20, help="class-mix check: ImageNet-layout classes (20)")
    ap.add_argument("--mix-per-class", type=int, default=60, help="class-mix check: images per class (60)")
    ap.add_argument("--mix-shard-size", type=int, default=100, help="class-mix check: shard size (100)")
    ap.add_argument("--mix-batch", type=int, default=32, help="class-mix check: batch size (32)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the ratio rows of tools/bench/common.py here")
    args = ap.parse_args()
    if args.images < 1 or args.batch_size < 1 or args.workers < 0 or args.repeats < 1 or args.epochs < 1:
        ap.error("--images, --batch-size, --repeats and --epochs must be >= 1, --workers >= 0")
    formats = [f for f in args.orig_formats.split(",") if f]
    if not formats or set(formats) - {"png", "qoi", "npy"}:
        ap.error("--orig-formats: a comma-separated list of png, qoi, npy")

    from lossyvision.codecs import parse_spec
    from lossyvision.pipelines.stream import read_variant

    name, q, bpp, options = parse_spec(args.codec)
    if bpp is not None or q is None:
        ap.error(f"--codec {args.codec}: give a fixed-quality spec such as jpeg-q10")
    tmp = Path(tempfile.mkdtemp(prefix="lv-bench-train-"))
    try:
        t0 = time.perf_counter()
        mix = bench_class_mix(tmp / "mix", args)
        num_classes = make_folder(str(tmp / "src"), args.images)
        shard_dirs, prep_s = {}, 0.0
        for fmt in formats:
            shard_dirs[fmt], s = make_shards(str(tmp / "src"), str(tmp / f"shards-{fmt}"), name, q, options,
                                             args.size, args.shard_size, fmt)
            prep_s += s
        first = shard_dirs[formats[0]]
        spec = next(p.name for p in sorted(first.iterdir()) if p.name != "orig" and (p / "_manifest.json").exists())
        folder_bytes = make_imagefolder(first / "orig", str(tmp / "imagefolder"), args.folder_quality)
        orig_bytes = {f: read_variant(d / "orig").manifest["means"]["bytes"] for f, d in shard_dirs.items()}
        spec_bytes = read_variant(first / spec).manifest["means"]["bytes"]
        setup_s = time.perf_counter() - t0

        rates = bench_loaders(shard_dirs, spec, str(tmp / "imagefolder"), args)
        steps = cache_s = eff = None
        if not args.skip_steps:
            steps, cache_s = bench_steps(first.parent, spec, tmp / "runs", num_classes, args)
        if args.efficiency:
            eff = bench_efficiency(first.parent, spec, tmp / "runs", num_classes, args)

        import torch

        n = args.images
        print(f"training-input benchmark: {n} real-photo JPEGs 500x375 -> {args.size}x{args.size} crops, "
              f"variant {spec} ({spec_bytes:.0f} B/img; orig " + ", ".join(f"{f.upper()} {b:.0f}" for f, b in orig_bytes.items())
              + f" B/img; ImageFolder JPEG q{args.folder_quality} {folder_bytes / n:.0f} B/img); batch {args.batch_size}, "
              f"{args.workers} DataLoader workers, {os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads; "
              f"set-up {setup_s:.1f} s (prepare_shards {prep_s:.1f} s)\n")
        print(f"Class mix of training batches: ImageNet layout, {args.mix_classes} classes x {args.mix_per_class} images, "
              f"shards of {args.mix_shard_size}, batch {args.mix_batch}, the training loader's defaults ({mix['workers']} "
              f"workers, shuffle buffer {mix['buffer']}), 3 epochs. i.i.d. expectation {mix['iid']:.2f} distinct classes.\n")
        json_rows = []  # the --json rows: every ratio printed below, with the tables' targets
        print("| shard order | distinct classes per batch | ratio to i.i.d. | target | met |")
        print("| --- | ---: | ---: | --- | --- |")
        for order in ("shuffled", "sorted"):
            r = mix[order] / mix["iid"]
            print(f"| {order}{' (default for train*)' if order == 'shuffled' else ' (before)'} | {mix[order]:.2f} | "
                  f"{r:.2f} x | >= 0.90 x | {'yes' if r >= 0.9 else 'NO'} |")
            mix_name = f"class mix, {order} shards: distinct classes per batch / i.i.d."
            json_rows.append(common.target_row(mix_name, r, ">=", 0.9) if order == "shuffled" else common.row(mix_name, r))
        fe, fs = rates["folder"]
        print(f"\nLoaders: median of {args.repeats} turns x {args.epochs} epochs of {n} samples. epoch = all samples over "
              "the whole time, DataLoader worker start included (workers restart every epoch); steady = after "
              "each epoch's first batch, what an ImageNet-size epoch sees. Targets are judged on steady.\n")
        print("uint8 out: the batches as the loader hands them to a GPU trainer (normalised there, on the GPU); "
              "+ CPU normalisation: also normalised in the main process on this CPU, what CPU-only training pays.\n")
        print("| loader | epoch samples/s | steady samples/s, uint8 out | steady ratio | steady ratio + CPU normalisation "
              "| epoch ratio | target (uint8 out) | met |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print(f"| ImageFolder: JPEG q{args.folder_quality} files, PIL, ToTensor + Normalize in the workers | "
              f"{fe:.0f} images/s | {fs:.0f} images/s | 1.00 | 1.00 | 1.00 | - | - |")
        json_rows.append(common.row("ImageFolder loader, steady", fs, "images/s"))
        # the target is for the training splits' default orig format (npy); PNG and QOI are shown beside it
        rows = [(f"pair-{f}", f"pair shard loader: orig {f.upper()} + {spec}", "pairs", 1.5 if f == "npy" else None) for f in formats]
        rows.append(("single", f"single-variant shard loader: {spec} only (cached expert training)", "images", 2.5))
        for key, label, unit, target in rows:
            e, s = rates[key]
            sn = rates[f"{key}+norm"][1]
            print(f"| {label} | {e:.0f} {unit}/s | {s:.0f} {unit}/s | {s / fs:.2f} x | {sn / fs:.2f} x | {e / fe:.2f} x | "
                  + (f">= {target:.1f} x | {'yes' if s / fs >= target else 'NO'} |" if target else "- | - |"))
            what = "pair loader, orig " + key[5:].upper() if key.startswith("pair-") else "single-variant loader"
            name = f"{what} / ImageFolder, steady, uint8 out"
            json_rows.append(common.target_row(name, s / fs, ">=", target) if target else common.row(name, s / fs))
            json_rows.append(common.row(f"{what} / ImageFolder, steady, + CPU normalisation", sn / fs))
            json_rows.append(common.row(f"{what} / ImageFolder, epoch", e / fe))
        if steps is not None:
            ft_w, ft_c, k = steps["finetune"]
            print(f"\nSteps: {args.model} (random weights), {args.size} px, batch {args.batch_size}, CPU, "
                  f"median of {k} steps each; wall = loop time per step (data wait included), compute = "
                  f"batch to device + teacher + loss + backward + Adam. Teacher cache build (once): {cache_s:.1f} s.\n")
            print("| recipe | wall ms/step | compute ms/step | wall ratio | target | met |")
            print("| --- | --- | --- | --- | --- | --- |")
            labels = {"finetune": "fine-tune (variant)", "expert-online": "expert, online teacher (orig + variant)",
                      "expert-cached": "expert, teacher cache (variant + HDF5 logits)"}
            for key, label in labels.items():
                w, c, _ = steps[key]
                ratio = w / ft_w
                target, met = "-", "-"
                if key == "expert-cached":
                    target, met = "<= 1.05 x", "yes" if ratio <= 1.05 else "NO"
                    json_rows.append(common.target_row("expert step, teacher cache / fine-tune step, wall", ratio, "<=", 1.05))
                elif key != "finetune":
                    json_rows.append(common.row("expert step, online teacher / fine-tune step, wall", ratio))
                print(f"| {label} | {w * 1e3:.0f} | {c * 1e3:.0f} | {ratio:.2f} x fine-tune | {target} | {met} |")
        if eff is not None:
            print(f"\nLoader efficiency: cached expert training, {args.eff_model} (random weights), batch {args.eff_batch}, "
                  f"{eff['device']}, {args.workers} workers, median of {args.repeats} epochs.\n")
            print("| fed by | img/s | ratio | target | met |")
            print("| --- | ---: | ---: | --- | --- |")
            print(f"| synthetic in-memory batch (no loader) | {eff['synthetic']:.0f} | 1.00 | - | - |")
            print(f"| shard loader ({spec}) | {eff['real']:.0f} | {eff['ratio']:.2f} | >= 0.90 | "
                  f"{'yes' if eff['ratio'] >= 0.9 else 'NO'} |")
            json_rows.append(common.target_row(f"loader efficiency ({args.eff_model}, batch {args.eff_batch}, {eff['device']}): "
                                         "shard loader / synthetic batch", eff["ratio"], ">=", 0.9))
        common.write_json(args.json, "train", json_rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
