"""What the earlier teacher cache's precision did: bf16-autocast logits stored as float16, against fp32.

    python tools/repro/teacher_precision.py --model RUN/best.pt --orig SHARDS/test/orig --variant SHARDS/test/jpeg-q3 \
        [--mean 0.286,0.286,0.286 --std 0.353,0.353,0.353]

Runs the teacher g over the clean images in fp32 and under bf16 autocast (stored as float16, as format 1
of the cache did), and reports: the largest and mean absolute logit difference, top-1 agreement, the
mean KL(softmax(fp32) || softmax(bf16)) per image, and how much the expert term KL(g(x) || f(x~)) moves,
with f = g itself on the compressed variant (the start of expert training). Runs on the CPU (bf16
autocast exists there too); on a GPU the bf16 kernels differ, so treat it as an order of magnitude.
"""

from __future__ import annotations

import argparse

import torch

from lossyvision.pipelines.stream import IMAGENET_MEAN, IMAGENET_STD, ShardStream, make_loader, to_device
from lossyvision.progress import progress
from lossyvision.train.models import load_for_eval
from lossyvision.train.recipes import kl_term


def floats3(text: str) -> tuple[float, float, float]:
    parts = tuple(float(v) for v in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected r,g,b, got {text!r}")
    return parts  # type: ignore[return-value]


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--orig", required=True, help="the clean variant folder (…/orig)")
    ap.add_argument("--variant", required=True, help="a compressed variant folder of the same split")
    ap.add_argument("--mean", type=floats3, default=IMAGENET_MEAN)
    ap.add_argument("--std", type=floats3, default=IMAGENET_STD)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar (it is off anyway when stderr is not a "
                    "terminal)")
    args = ap.parse_args()
    g = load_for_eval(args.model)
    ds = ShardStream(args.variant, args.orig, shuffle=False, rank=0, world_size=1)
    n = agree = 0
    max_abs = sum_abs = kl_prec = 0.0
    term32 = term16 = 0.0
    loader = make_loader(ds, args.batch_size, 0)
    with progress(loader, total=len(loader), desc="teacher fp32 vs bf16", quiet=args.quiet) as bar:
        for x, xt, _, _ in bar:
            x, xt = to_device(x, "cpu", args.mean, args.std), to_device(xt, "cpu", args.mean, args.std)
            l32 = g(x).float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                l16 = g(x).float().half().float()
            student = g(xt).float()
            d = (l32 - l16).abs()
            max_abs = max(max_abs, d.max().item())
            sum_abs += d.mean(dim=1).sum().item()
            agree += (l32.argmax(1) == l16.argmax(1)).sum().item()
            kl_prec += kl_term(l16, l32, "sum").item()
            term32 += kl_term(student, l32, "sum").item()
            term16 += kl_term(student, l16, "sum").item()
            n += x.shape[0]
    print(f"{n} images: max |logit diff| {max_abs:.4f}, mean {sum_abs / n:.5f}; top-1 agreement {100 * agree / n:.2f} %; "
          f"KL(fp32 || bf16->fp16) {kl_prec / n:.2e} per image; expert term KL(g(x) || g(x~)) {term32 / n:.4f} (fp32) vs "
          f"{term16 / n:.4f} (bf16->fp16): {100 * abs(term16 - term32) / max(term32, 1e-12):.3f} % apart")


if __name__ == "__main__":
    main()
