"""Segmentation input per DataLoader worker: resize the whole frame, then crop (before) vs crop, then resize (after).

    python tools/bench/seg_input.py [--size 2048x1024] [--crop 768] [--samples 8] [--repeats 3] [--quick]
        [--json PATH]

Times the whole-frame version of ``random_scale_crop_flip`` (``resize_frame_then_crop`` below, a copy of
the function lossyvision.train.segmentation had before issue 15) against lossyvision.train.seg_augment's
(only the crop window is resized) on one thread, as a DataLoader
worker runs it (``torch.set_num_threads(1)``), on a synthetic uint8 frame and label map of --size: at
the fixed scales 0.5, 1.25 and 2.0 and at the training recipe's random scale in [0.5, 2.0]. Each run
draws --samples crops with the same seeds through both functions, one after the other (the order
alternating between runs); the figures are
the medians of --repeats runs, in samples/s, and their ratio. It also checks that both functions
returned the same crops (they must where seg_augment.matches_interpolate; see its docstring). PNG decoding, the other
half of a worker's work, is not included. --quick: a 256x128 frame, crop 96 (a smoke test).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (tools/bench/common.py, next to this script)

SCALES = [("0.5", (0.5, 0.5)), ("1.25", (1.25, 1.25)), ("2.0", (2.0, 2.0)), ("random 0.5-2.0", (0.5, 2.0))]


def resize_frame_then_crop(image, label, crop, scale, flip, rng, ignore_index=255):
    """The "before": resize the whole frame, pad, crop, flip (kept here so the bench outlives the swap)."""
    import torch
    import torch.nn.functional as F

    h, w = label.shape
    s = rng.uniform(*scale)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
        image = image.round().clamp(0, 255).to(torch.uint8)
        label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0].to(torch.uint8)
    ph, pw = max(crop - nh, 0), max(crop - nw, 0)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0)
        label = F.pad(label, (0, pw, 0, ph), value=ignore_index)
    top, left = rng.randrange(label.shape[0] - crop + 1), rng.randrange(label.shape[1] - crop + 1)
    image, label = image[:, top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]
    if flip and rng.random() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.contiguous()


def samples_per_s(fn, image, label, crop: int, scale: tuple[float, float], samples: int, seed: int):
    """(samples/s, the crops) of ``samples`` calls of ``fn`` with flip, from random.Random(seed)."""
    rng = random.Random(seed)
    t = time.perf_counter()
    out = [fn(image, label, crop, scale, True, rng) for _ in range(samples)]
    return samples / (time.perf_counter() - t), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2048x1024", help="frame WxH (Cityscapes: 2048x1024)")
    ap.add_argument("--crop", type=int, default=768, help="crop side (the recipe's 768)")
    ap.add_argument("--samples", type=int, default=8, help="crops per run and function")
    ap.add_argument("--repeats", type=int, default=3, help="runs per scale; medians are reported")
    ap.add_argument("--quick", action="store_true", help="a 256x128 frame, crop 96, 2 samples (smoke test)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the rows here (tools/bench/common.py)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.crop, args.samples = "256x128", 96, 2
    w, h = (int(v) for v in args.size.lower().split("x"))

    import torch

    from lossyvision.train.seg_augment import matches_interpolate
    from lossyvision.train.seg_augment import random_scale_crop_flip as after

    before = resize_frame_then_crop

    torch.set_num_threads(1)  # one DataLoader worker
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    label = torch.randint(0, 19, (h, w), dtype=torch.uint8, generator=gen)
    after(image, label, args.crop, (1.5, 1.5), True, random.Random(0))  # its one-time rounding probe

    rows, lines, all_same = [], [], True
    for name, scale in SCALES:
        runs = {"before": [], "after": []}
        same = True
        for r in range(max(1, args.repeats)):
            got = {}
            for fn in (before, after) if r % 2 == 0 else (after, before):  # alternated: drift hits both alike
                got[fn] = samples_per_s(fn, image, label, args.crop, scale, args.samples, r)
            (rate_b, out_b), (rate_a, out_a) = got[before], got[after]
            runs["before"].append(rate_b)
            runs["after"].append(rate_a)
            same &= all(torch.equal(x, y) for pb, pa in zip(out_b, out_a) for x, y in zip(pb, pa))
        b, a = statistics.median(runs["before"]), statistics.median(runs["after"])
        all_same &= same
        lines.append(f"| {name} | {b:.2f} | {a:.2f} | {a / b:.2f}x | {'yes' if same else 'NO'} |")
        rows += [common.row(f"samples/s per worker, scale {name}, before (resize frame, crop)", b, "samples/s"),
                 common.row(f"samples/s per worker, scale {name}, after (crop, resize)", a, "samples/s"),
                 common.row(f"after / before, scale {name}", a / b)]

    print(f"Segmentation input, one thread, {w}x{h} frame, crop {args.crop}, {args.samples} samples x "
          f"{args.repeats} runs (medians)\n")
    print("| scale | before samples/s | after samples/s | after / before | identical crops |")
    print("| --- | ---: | ---: | ---: | --- |")
    print("\n".join(lines))
    exact = matches_interpolate("four-term")
    if not exact:
        print("\n(this machine's F.interpolate rounding is not reproduced exactly: about one value in 10^5 may "
              "differ by one level; the labels are identical)")
    common.write_json(args.json, "seg_input", rows, size=[w, h], crop=args.crop, identical=all_same, exact=exact)
    if exact and not all_same:
        print("the two functions returned different crops", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
