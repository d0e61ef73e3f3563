"""CPU-scale reproduction of Marie et al. 2022, Table I, on Fashion-MNIST (real images, 10 classes).

1. prepare shards (orig + harsh codec variants) at 32x32 with `prepare_shards`;
2. pre-train `small_cnn` on the clean images (the paper's "pretrained" model);
3. per variant and seed: fine-tune / expert / stability from that model, then evaluate
   pretrained and the three recipes on the variant's test shards; print a Markdown table.

    python tools/repro/fashion_mnist.py --out /tmp/fmnist --train-limit 6000 --test-limit 2000 --seeds 0 1 2

Why 32x32: Fashion-MNIST is 28x28; 32 is a multiple of JPEG's 16x16 MCU (4:2:0) and of HEVC's
8x8 minimum CU, so no codec pads the picture, and every block the codec spends bits on is seen by
the model (the paper's point: crop first, then compress). Larger sizes only cost CPU time.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from lossyvision.eval.classification import accuracy
from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards
from lossyvision.pipelines.stream import variant_dir
from lossyvision.train.classifier import TrainConfig, train
from lossyvision.train.models import load_for_eval

VARIANTS = {"jpeg-q5": CodecSetting("jpeg", 5), "j2k-r100": CodecSetting("j2k", 100),
            "bpg-qp51": CodecSetting("bpg", 51)}
# Fashion-MNIST statistics (grey replicated to RGB), so inputs are centred as ImageNet's are for MnasNet
MEAN, STD = (0.286, 0.286, 0.286), (0.353, 0.353, 0.353)


def prepare(out: Path, train_limit: int, test_limit: int, variants: list[str]) -> Path:
    for split, limit in (("train", train_limit), ("test", test_limit)):
        prepare_shards(PrepareConfig(dataset="fashion-mnist", out=str(out), split=split, crop="scale:32x32",
                                     codecs=[VARIANTS[v] for v in variants], shard_size=1000, executor="local",
                                     workers=2, limit=limit, ms_ssim=False, progress=False))
    return out / "fashion-mnist"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/lossyvision-fmnist")
    ap.add_argument("--train-limit", type=int, default=6000)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--recipes", nargs="+", default=["finetune", "expert", "stability"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4, help="paper: 1e-5 for a 45-epoch ImageNet run")
    ap.add_argument("--alpha", type=float, default=None,
                    help="batchmean alpha for expert; default 1e-2 * batch size = the paper's alpha 1e-2 with 'sum'")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    t0 = time.time()
    shards = prepare(out / "shards", args.train_limit, args.test_limit, args.variants)
    # the test split doubles as validation for the plateau schedule (no separate val split at this scale)
    common = dict(shards=str(shards), val_split="test", model="small_cnn", batch_size=args.batch_size, workers=1,
                  progress=False, device="cpu", mean=MEAN, std=STD, kl_reduction="batchmean")
    pre = out / "runs" / "pretrained"
    if not (pre / "best.pt").exists():
        train(TrainConfig(out=str(pre), variant="orig", recipe="finetune", lr=1e-3, epochs=args.pretrain_epochs,
                          max_lr_cuts=99, **common))
    # the paper's alphas (1e-2 expert, 5e-3 stability) were used with reduction 'sum': x batch for batchmean
    alpha = {"expert": args.alpha or 1e-2 * args.batch_size, "stability": 5e-3 * args.batch_size, "finetune": 0.0}
    results: dict = {"pretrained": {}, **{r: {} for r in args.recipes}}
    test = shards / "test"
    pre_model = load_for_eval(str(pre / "best.pt"))
    for v in ["orig", *args.variants]:
        results["pretrained"][v] = [accuracy(pre_model, variant_dir(test, v), mean=MEAN, std=STD)["top1"]]
    stats = {v: json.loads((test / v / "manifest.json").read_text()).get("means", {}) for v in args.variants}
    for v in args.variants:
        for recipe in args.recipes:
            accs = []
            for seed in args.seeds:
                run = out / "runs" / f"{v}-{recipe}-s{seed}"
                if not (run / "best.pt").exists():
                    train(TrainConfig(out=str(run), variant=v if recipe != "stability" else "orig", recipe=recipe,
                                      weights=str(pre / "best.pt"), lr=args.lr, alpha=alpha[recipe],
                                      sigma=4e-2, epochs=args.epochs, seed=seed, **common))
                model = load_for_eval(str(run / "best.pt"))
                accs.append(accuracy(model, variant_dir(test, v), mean=MEAN, std=STD)["top1"])
            results[recipe][v] = accs
    lines = ["| variant | PSNR (dB) | SSIM | bytes/img | pretrained | " + " | ".join(args.recipes) + " |",
             "| --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(args.recipes)]

    def fmt(a):
        return f"{100 * statistics.mean(a):.2f}" + (f" ± {100 * statistics.stdev(a):.2f}" if len(a) > 1 else "")

    lines.append(f"| orig | inf | 1.000 | - | {fmt(results['pretrained']['orig'])} |" + " - |" * len(args.recipes))
    for v in args.variants:
        s = stats[v]
        lines.append(f"| {v} | {s.get('psnr', float('nan')):.2f} | {s.get('ssim', float('nan')):.3f} | "
                     f"{s.get('bytes', float('nan')):.0f} | {fmt(results['pretrained'][v])} | "
                     + " | ".join(fmt(results[r][v]) for r in args.recipes) + " |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results, "stats": stats}, indent=2))
    print(table)
    print(f"total {time.time() - t0:.0f} s; seeds {args.seeds}; top-1 % on {args.test_limit} test images (mean ± sd)")


if __name__ == "__main__":
    main()
