"""Paper 2's Table IV at bench size: per-image inference time of each configuration's pipeline.

    python tools/bench/segmentation.py [--size 1024x512] [--images 6] [--codec bpg --quality 41]
        [--encoder resnet101] [--gen-width 64 --gen-blocks 9] [--device auto] [--json PATH]

Writes scikit-image's photos, resized to full frames of --size, as a `folder` dataset, prepares
`orig` + one codec variant with prepare_shards, saves an untrained DeepLabv3+ checkpoint (output
stride 16, random init: its speed is that of a trained one) and an untrained restoration generator
(FineNet, the paper's size by default), then runs `seg-timing`'s library
(lossyvision.eval.timing.time_pipelines): encode and decode on the CPU, restoration and
segmentation on --device, one warm-up image, medians over the rest. Prints the Markdown table and,
with --json, rows (tools/bench/common.py) of every stage's and pipeline's median ms and the ratio
the paper states (compression before inference, CC, over testing on originals, RO), none with a
target: Table IV's numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (tools/bench/common.py, next to this script)


def write_frames(folder: Path, n: int, w: int, h: int) -> None:
    """n distinct WxH PNG frames from scikit-image's photos (resized, mirrored every other round)."""
    from PIL import Image

    from lossyvision.pipelines.sources import create_source

    src = create_source("samples", None, "all")
    photos = [Image.fromarray(src.load(it)[0]).convert("RGB") for it in src.items()]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = photos[i % len(photos)].resize((w, h), Image.Resampling.BICUBIC)
        if (i // len(photos)) % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im.save(folder / f"frame{i:03d}.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1024x512", help="frame WxH (Cityscapes: 2048x1024)")
    ap.add_argument("--images", type=int, default=6, help="frames, the first one a warm-up")
    ap.add_argument("--codec", default="bpg")
    ap.add_argument("--quality", default="41")
    ap.add_argument("--encoder", default="resnet101", help="DeepLabv3+ encoder (random init)")
    ap.add_argument("--gen-width", type=int, default=64, help="generator base channels (paper: 64)")
    ap.add_argument("--gen-blocks", type=int, default=9, help="generator residual blocks (paper: 9)")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the rows here (tools/bench/common.py)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))

    import torch

    from lossyvision.eval.timing import TimingConfig, time_pipelines, timing_markdown
    from lossyvision.nets.restoration import build_restoration_net
    from lossyvision.nets.segmentation import build_deeplabv3plus
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-seg-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        write_frames(work / "frames", args.images, w, h)
        prepare_shards(PrepareConfig(dataset="folder", src=str(work / "frames"), split="val", out=str(work / "shards"),
                                     codecs=[CodecSetting(args.codec, args.quality)], crop="full", shard_size=8,
                                     executor="local", progress=False, ms_ssim=False))
        variant = next(p.name for p in (work / "shards" / "folder" / "val").iterdir()
                       if p.is_dir() and p.name != "orig" and (p / "_manifest.json").is_file())
        arch = {"encoder": args.encoder, "num_classes": 19, "output_stride": 16, "atrous_rates": [6, 12, 18]}
        model = build_deeplabv3plus(args.encoder, 19, 16, encoder_weights=None)
        torch.save({"arch": arch, "model": model.state_dict(), "config": {"train_variant": "orig"}}, work / "model.pt")
        garch = {"net": "finenet", "width": args.gen_width, "n_blocks": args.gen_blocks}
        torch.save({"arch": garch, "generator": build_restoration_net(garch).state_dict()}, work / "generator.pt")
        setup_s = time.perf_counter() - t0
        s = time_pipelines(TimingConfig(checkpoint=str(work / "model.pt"), shards=str(work / "shards" / "folder"),
                                        variant=variant, generator=str(work / "generator.pt"), split="val",
                                        out_dir=str(work / "out"), max_images=max(1, args.images - 1), warmup=1,
                                        device=args.device), progress_quiet=True)
    print(timing_markdown(s))
    print(f"(set-up {setup_s:.1f} s; encoder {args.encoder}, generator width {args.gen_width} x {args.gen_blocks} "
          "blocks, untrained)")
    pipes = {p["test_side"]: p for p in s["pipelines"]}
    rows = [common.row(f"{name} ms per {args.size} frame ({variant})", st["median_ms"], "ms")
            for name, st in s["stages"].items()]
    rows += [common.row(f"pipeline {'+'.join(p['stages'])} ({p['configurations']}) ms per {args.size} frame",
                        p["median_ms"], "ms") for p in s["pipelines"]]
    rows.append(common.row("compress before inference (CC) / originals (RO), per frame",
                           pipes["C"]["median_ms"] / pipes["O"]["median_ms"]))
    common.write_json(args.json, "segmentation", rows, device=s["segment_device"], codec_device=s["codec_device"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
