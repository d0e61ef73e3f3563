"""CPU-scale test of Katakol et al. 2021's claims (paper 2): RO > CO, and CC loses more than CO on small objects.

No labelled street scenes can be installed here, so the task is `seg_synth.py`'s: real Fashion-MNIST
garments composited onto real texture photos, exact label maps, one class per garment type, two
types always small (8-16 px) and two big (32-64 px), in the generic `segfolder` layout. The protocol
is the paper's, step by step through lossyvision's own commands (run in this process, so torch is
imported once instead of ~30 times):

1. `prepare-shards --dataset segfolder` writes orig + BPG at each --qp for train, train_extra, val;
2. the restoration GAN trains on train_extra (disjoint from train: other Fashion-MNIST garments), one
   per rate, then `restore-shards` writes `<variant>+restored` for train and val;
3. `train-segmentation` (DeepLabv3+, output stride 16, ASPP (6, 12, 18)) trains on orig, each codec
   variant and each restored variant, per seed; `eval-segmentation` evaluates each model on val:
   OO, OC, OR from the orig model, CO, CC from the codec model, RO from the restored one;
4. per seed, the paired differences RO - CO and CO - CC (all / small / big objects), and
   (CO - CC) small minus (CO - CC) big; mean and a 95 % t-interval over seeds.

Two stand-ins, both because nothing can be downloaded here:
- the encoder starts from `seg_pretrain.py`'s weights (garment classification on clean images of a
  disjoint pool: the paper's ImageNet-pretrained backbone, scaled down), through the real
  `--encoder-weights PATH`; `--encoder-weights none` trains from random init instead;
- the GAN drops L_VGG (no ImageNet VGG19 offline; a random VGG19 quadruples the step time and is not
  the paper's loss either): `L_GAN + 10 (2 L1 + L_MS-SSIM + L_DIST)`. train-restoration's CLI has no
  switch for that, so this one step calls `train_restoration` with `vgg_weight=0`; with
  `--vgg-weights PATH` (a torchvision vgg19 state dict) it runs the CLI command with the full loss.

Results: <out>/results.json (every seed's mIoU in percent) and <out>/results.md. A rerun reuses every
finished stage. Progress: a bar over the stages and one line per finished stage on stderr.

    PYTHONPATH=. python tools/repro/restoration.py --out /tmp/p2repro      # the README's table
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import seg_synth  # noqa: E402
from repro_stats import ci, say  # noqa: E402

CONFIGS = ("OO", "CO", "OC", "CC", "RO", "OR")
METRICS = ("miou_pct", "miou_small_pct", "miou_big_pct")
DATASET = "segfolder"  # prepare-shards writes OUT/<source name>/<split>/<variant>


@dataclass
class ExperimentConfig:
    out: str = "/tmp/p2repro"
    seeds: tuple[int, ...] = (0, 1, 2)
    qps: tuple[int, ...] = (41, 51)            # BPG QPs: ~0.2 and ~0.085 bpp on these 128x128 images
    size: int = 128                            # image side (the GAN's 1/4-scale discriminator needs >= 128)
    train: int = 600
    train_extra: int = 300
    val: int = 200
    data_seed: int = 0
    # segmentation (DeepLabv3+); the paper: resnet101, 768 crops, batch 8, 90k steps, lr 0.01
    encoder: str = "resnet18"
    encoder_weights: str = "pretrained"        # "pretrained" (seg_pretrain.py, cached), "none", or a path
    pretrain_steps: int = 600
    seg_steps: int = 150
    seg_batch: int = 8
    crop: int = 64
    scale: tuple[float, float] = (0.75, 1.5)   # the paper's 0.5 end would shrink 8 px garments to 4 px
    seg_lr: float = 0.01
    # restoration GAN (Appendix B: width 64, 9 blocks, 256 patches, batch 1, 135k steps, lr 2e-4)
    gan_steps: int = 200
    gan_width: int = 16
    gan_blocks: int = 3
    gan_patch: int = 128
    gan_batch: int = 1
    gan_lr: float = 2e-4
    vgg_weights: str | None = None             # None: L_VGG off (see the module docstring)
    threads: int = 1                           # 2 ran a GAN step 4x slower on this shared 2-core box (measured)
    quiet: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)


# -- statistics ------------------------------------------------------------------------------------


def fmt(values: list[float], signed: bool = False) -> str:
    m, h = ci(values)
    s = f"{m:+.2f}" if signed else f"{m:.2f}"
    return f"{s} ± {h:.2f}" if len(values) > 1 else s


def rate_of(record: dict) -> str | None:
    """The codec variant a record's configuration is at ('bpg-qp41'), None for OO."""
    for v in (record["train_variant"], record["test_variant"]):
        if v != "orig":
            return v.removesuffix("+restored")
    return None


def collect(records_by_seed: dict[int, list[dict]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{config: {rate ('-' for OO): {metric: [value per seed, in seed order]}}} from eval-segmentation records.

    Every seed must have every (config, rate) the first seed has, so differences pair by position."""
    runs: dict[str, dict[str, dict[str, list[float]]]] = {}
    expected = None
    for seed in sorted(records_by_seed):
        got = set()
        for r in records_by_seed[seed]:
            key = (r["configuration"], rate_of(r) or "-")
            if key in got:
                raise ValueError(f"seed {seed}: two records for {key}")
            got.add(key)
            cell = runs.setdefault(key[0], {}).setdefault(key[1], {m: [] for m in METRICS})
            for m in METRICS:
                cell[m].append(float(r[m]))
        if expected is None:
            expected = got
        elif got != expected:
            raise ValueError(f"seed {seed} has configurations {sorted(got ^ expected)} the others do not")
    return runs


def paired(runs: dict, rates: list[str]) -> dict[str, dict[str, dict]]:
    """Per rate: RO - CO and CO - CC per metric, and (CO - CC) small - (CO - CC) big; each with every
    seed's value, the mean and the 95 % half-width."""
    def stat(values: list[float]) -> dict:
        m, h = ci(values)
        return {"values": values, "mean": m, "ci95": h}

    def diff(a: str, b: str, metric: str, rate: str) -> list[float]:
        return [x - y for x, y in zip(runs[a][rate][metric], runs[b][rate][metric])]

    out = {}
    for rate in rates:
        cell = {}
        for a, b in (("RO", "CO"), ("CO", "CC")):
            if a in runs and b in runs and rate in runs[a] and rate in runs[b]:
                cell[f"{a}-{b}"] = {m: stat(diff(a, b, m, rate)) for m in METRICS}
        if "CO-CC" in cell:
            small, big = cell["CO-CC"]["miou_small_pct"]["values"], cell["CO-CC"]["miou_big_pct"]["values"]
            cell["CO-CC small-big"] = stat([s - b for s, b in zip(small, big)])
        out[rate] = cell
    return out


def summarise(runs: dict) -> dict:
    return {c: {rate: {m: dict(zip(("mean", "ci95"), ci(v))) for m, v in cell.items()} for rate, cell in by.items()}
            for c, by in runs.items()}


def markdown(cfg: ExperimentConfig, runs: dict, pairs: dict, rates: dict[str, dict]) -> str:
    n = len(cfg.seeds)
    lines = [f"Paper 2's configurations on fmnist-seg ({cfg.size}x{cfg.size}: {cfg.train} train, {cfg.train_extra} "
             f"train_extra for the GAN, {cfg.val} val images); mIoU % on val, mean ± 95 % t-interval over {n} seeds "
             f"{list(cfg.seeds)}. Small objects: {', '.join(seg_synth.DEFAULT_SMALL)} (8-16 px); big: "
             f"{', '.join(g for g in seg_synth.DEFAULT_GARMENTS if g not in seg_synth.DEFAULT_SMALL)} (32-64 px) "
             "and background.", "",
             "| setting | value |", "| --- | --- |",
             f"| images | {cfg.size}x{cfg.size}; train {cfg.train}, train_extra {cfg.train_extra} (GAN only), "
             f"val {cfg.val} |",
             f"| segmentation | DeepLabv3+ OS16, ASPP (6, 12, 18), {cfg.encoder} encoder ({cfg.encoder_weights}); "
             f"{cfg.seg_steps} steps, batch {cfg.seg_batch}, crop {cfg.crop}, scale {cfg.scale[0]:g}-{cfg.scale[1]:g}, "
             f"SGD lr {cfg.seg_lr:g} poly |",
             f"| restoration GAN | width {cfg.gan_width}, {cfg.gan_blocks} blocks, {cfg.gan_patch} patches, batch "
             f"{cfg.gan_batch}, {cfg.gan_steps} steps, Adam lr {cfg.gan_lr:g}, "
             f"{'full loss' if cfg.vgg_weights else 'no L_VGG'}; one per rate, on train_extra |",
             f"| seeds | {', '.join(map(str, cfg.seeds))} |", "",
             "| rate | train bpp | val bpp | PSNR dB | restored PSNR dB |", "| --- | ---: | ---: | ---: | ---: |"]
    for v, r in rates.items():
        lines.append(f"| {v} | {r['train_bpp']:.3f} | {r['val_bpp']:.3f} | {r['val_psnr']:.2f} | "
                     f"{r['val_restored_psnr']:.2f} |")
    lines += ["", "| config | rate | mIoU | small | big |", "| --- | --- | ---: | ---: | ---: |"]
    for c in CONFIGS:
        for rate, cell in sorted(runs.get(c, {}).items()):
            lines.append(f"| {c} | {rate} | {fmt(cell['miou_pct'])} | {fmt(cell['miou_small_pct'])} | "
                         f"{fmt(cell['miou_big_pct'])} |")
    lines += ["", "Paired differences per seed (same seed, same data order), points of mIoU:", "",
              "| rate | difference | all | small | big |", "| --- | --- | ---: | ---: | ---: |"]
    for rate, cell in pairs.items():
        for name in ("RO-CO", "CO-CC"):
            if name in cell:
                d = cell[name]
                lines.append(f"| {rate} | {name.replace('-', ' - ')} | {fmt(d['miou_pct']['values'], True)} | "
                             f"{fmt(d['miou_small_pct']['values'], True)} | {fmt(d['miou_big_pct']['values'], True)} |")
        if "CO-CC small-big" in cell:
            lines.append(f"| {rate} | (CO - CC) small - (CO - CC) big | {fmt(cell['CO-CC small-big']['values'], True)}"
                         " | | |")
    return "\n".join(lines) + "\n"


# -- running the commands -------------------------------------------------------------------------

class StageError(RuntimeError):
    pass


def cli(log_path: Path, *args: str) -> None:
    """`lossyvision <args>` in this process (the real click command: option parsing, checks, one-line
    errors); its stdout/stderr go to `log_path`."""
    import click

    from lossyvision.cli import main

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"$ lossyvision {' '.join(args)}", flush=True)
        try:
            main.main(args=list(args), prog_name="lossyvision", standalone_mode=False)
        except click.ClickException as e:
            print(f"error: {e.format_message()}", flush=True)
            raise StageError(f"lossyvision {args[0]} failed: {e.format_message()} (log: {log_path})") from None
        except SystemExit as e:
            if e.code:
                raise StageError(f"lossyvision {args[0]} exited {e.code} (log: {log_path})") from None


def manifest(path: Path) -> dict:
    return json.loads((path / "_manifest.json").read_text())


class Experiment:
    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.data = self.out / "data"
        self.root = self.out / "shards" / DATASET
        self.logs = self.out / "logs"
        self.variants = [f"bpg-qp{q}" for q in cfg.qps]

    def timed(self, name: str, fn, *args) -> None:
        t = time.time()
        fn(*args)
        self.cfg.timings_s[name] = round(self.cfg.timings_s.get(name, 0.0) + time.time() - t, 1)

    # stages
    def dataset(self) -> None:
        c = self.cfg
        want = seg_synth.SynthConfig(out=str(self.data), size=c.size, seed=c.data_seed,
                                     counts={"train": c.train, "train_extra": c.train_extra, "val": c.val})
        done = self.data / "synth.json"
        if done.exists():  # the same dataset (wherever it was built): keep it, so its shards stay valid
            have = {k: v for k, v in json.loads(done.read_text())["config"].items() if k != "out"}
            if have == {k: v for k, v in json.loads(json.dumps(asdict(want))).items() if k != "out"}:
                return
        seg_synth.build(want, quiet=True)

    def shards(self) -> None:
        for split in ("train", "train_extra", "val"):
            cli(self.logs / f"prepare-{split}.log", "prepare-shards", "--dataset", "segfolder", "--src", str(self.data),
                "--split", split, "--codec", "bpg", "--quality", ",".join(map(str, self.cfg.qps)),
                "--out", str(self.out / "shards"), "--executor", "local", "-j", "1", "--no-ms-ssim", "-q")

    def encoder(self) -> str:
        c = self.cfg
        if c.encoder_weights == "none":
            return "none"
        if c.encoder_weights != "pretrained":
            return c.encoder_weights
        path = self.out / f"encoder-{c.encoder}.pth"
        if not path.exists():
            import seg_pretrain

            s = seg_pretrain.pretrain_encoder(seg_pretrain.PretrainConfig(out=str(path), encoder=c.encoder,
                                                                          steps=c.pretrain_steps), quiet=True)
            say(f"encoder pretrained: {s['val_top1_pct']:.1f} % top-1 on held-out garments, {s['seconds']:.0f} s")
        return str(path)

    def gan(self, variant: str) -> Path:
        c = self.cfg
        run = self.out / "runs" / f"gan-{variant}"
        gen = run / "generator.pt"
        if gen.exists():
            return gen
        if c.vgg_weights:
            cli(self.logs / f"gan-{variant}.log", "train-restoration", "--shards", str(self.root), "--variant", variant,
                "--split", "train_extra", "--out", str(run), "--steps", str(c.gan_steps), "-b", str(c.gan_batch),
                "--patch-size", str(c.gan_patch), "--lr", str(c.gan_lr), "--width", str(c.gan_width),
                "--n-blocks", str(c.gan_blocks), "--vgg-weights", c.vgg_weights, "-j", "0", "--device", "cpu",
                "--log-every", "50", "--sample-every", str(c.gan_steps), "--ckpt-every", str(c.gan_steps), "--overwrite", "-q")
            return gen
        from lossyvision.train.restoration import RestorationConfig, train_restoration

        log = self.logs / f"gan-{variant}.log"
        with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            train_restoration(RestorationConfig(
                shards=str(self.root), variant=variant, out_dir=str(run), split="train_extra", steps=c.gan_steps,
                batch_size=c.gan_batch, patch_size=c.gan_patch, lr=c.gan_lr, width=c.gan_width, n_blocks=c.gan_blocks,
                disc_width=c.gan_width, vgg_weight=0.0, num_workers=0, device="cpu", log_every=50,
                sample_every=c.gan_steps, ckpt_every=c.gan_steps, sample_size=c.size, overwrite=True, quiet=True))
        return gen

    def restore(self, variant: str, gen: Path) -> None:
        for split in ("train", "val"):
            if (self.root / split / f"{variant}+restored" / "_manifest.json").exists():
                continue
            cli(self.logs / f"restore-{variant}-{split}.log", "restore-shards", "--shards", str(self.root),
                "--split", split, "--variant", variant, "--generator", str(gen), "--device", "cpu", "-q")

    def segment(self, train_variant: str, seed: int, weights: str) -> Path:
        c = self.cfg
        run = self.out / "runs" / f"seg-{train_variant}-s{seed}"
        if (run / "model.pt").exists():
            return run / "model.pt"
        cli(self.logs / f"seg-{train_variant}-s{seed}.log", "train-segmentation", "--shards", str(self.root),
            "--variant", train_variant, "--out", str(run), "--encoder", c.encoder, "--encoder-weights", weights,
            "--crop-size", str(c.crop), "--scale-min", str(c.scale[0]),
            "--scale-max", str(c.scale[1]), "-b", str(c.seg_batch), "--steps", str(c.seg_steps), "--lr", str(c.seg_lr),
            "-j", "0", "--seed", str(seed), "--log-every", "25", "--ckpt-every", str(c.seg_steps), "--no-eval",
            "--device", "cpu", "--overwrite", "-q")
        return run / "model.pt"

    def evaluate(self, model: Path, test_variants: list[str], seed: int) -> None:
        out = self.out / "eval" / f"s{seed}"
        train_variant = model.parent.name.removeprefix("seg-").rsplit("-s", 1)[0]
        todo = [v for v in test_variants if not (out / "results" / f"{train_variant}__{v}.json").exists()]
        if not todo:
            return
        args = ["eval-segmentation", "--checkpoint", str(model), "--shards", str(self.root), "--split", "val",
                "--out", str(out), "--device", "cpu", "-q"]
        for v in todo:
            args += ["--variant", v]
        cli(self.logs / f"eval-{model.parent.name}.log", *args)

    # the whole protocol
    def run(self) -> dict:
        from lossyvision.progress import progress

        import torch

        torch.set_num_threads(self.cfg.threads)
        c, t0 = self.cfg, time.time()
        restored = [v + "+restored" for v in self.variants]
        seg_jobs = [(s, tv) for s in c.seeds for tv in ["orig", *self.variants, *restored]]
        total = 3 + 2 * len(self.variants) + 2 * len(seg_jobs)
        with progress(total=total, desc="paper-2 protocol", unit="stage", quiet=c.quiet) as bar:
            def step(name: str, fn, *args) -> None:
                self.timed(name, fn, *args)
                bar.update(1)
                say(f"{name} done ({time.time() - t0:.0f} s so far)")

            step("dataset", self.dataset)
            step("prepare-shards", self.shards)
            weights = self.encoder()
            bar.update(1)
            gens = {}
            for v in self.variants:
                step(f"train-restoration {v}", lambda v=v: gens.__setitem__(v, self.gan(v)))
            for v in self.variants:
                step(f"restore-shards {v}", self.restore, v, gens[v])
            models = {}
            for seed, tv in seg_jobs:
                step(f"train-segmentation {tv} seed {seed}",
                     lambda s=seed, t=tv: models.__setitem__((s, t), self.segment(t, s, weights)))
            for seed, tv in seg_jobs:
                tests = ["orig", *[x for v in self.variants for x in (v, v + "+restored")]] if tv == "orig" else \
                    ["orig", tv] if tv in self.variants else ["orig"]
                step(f"eval-segmentation {tv} seed {seed}", self.evaluate, models[(seed, tv)], tests, seed)
        return self.report(time.time() - t0)

    def rates(self) -> dict[str, dict]:
        out = {}
        for v in self.variants:
            tr, va = manifest(self.root / "train" / v), manifest(self.root / "val" / v)
            rv = manifest(self.root / "val" / f"{v}+restored")
            out[v] = {"qp": int(v.rsplit("qp", 1)[1]), "train_bpp": tr["means"]["bpp"], "val_bpp": va["means"]["bpp"],
                      "val_psnr": va["means"]["psnr"], "val_restored_psnr": rv["means"]["psnr"]}
        return out

    def report(self, seconds: float) -> dict:
        from lossyvision.eval.segmentation import load_results

        records = {s: load_results(self.out / "eval" / f"s{s}") for s in self.cfg.seeds}
        runs = collect(records)
        pairs = paired(runs, self.variants)
        rates = self.rates()
        results = {"config": asdict(self.cfg), "rates": rates, "runs_pct": runs, "summary_pct": summarise(runs),
                   "paired_pct": pairs, "wall_s": round(seconds, 1)}
        enc = self.out / f"encoder-{self.cfg.encoder}.json"
        if enc.exists():
            results["encoder_pretraining"] = json.loads(enc.read_text())
        (self.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        md = markdown(self.cfg, runs, pairs, rates)
        (self.out / "results.md").write_text(md)
        return results


def parse_args(argv: list[str] | None = None) -> ExperimentConfig:
    d = ExperimentConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=d.out, help=f"work folder (data, shards, runs, results) ({d.out})")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds), help="segmentation seeds (0 1 2)")
    ap.add_argument("--qp", nargs="+", type=int, default=list(d.qps), help="BPG QPs, one rate each (41 51)")
    ap.add_argument("--size", type=int, default=d.size, help=f"image side (>= 128 for the GAN) ({d.size})")
    ap.add_argument("--train", type=int, default=d.train, help=f"segmentation training images ({d.train})")
    ap.add_argument("--train-extra", type=int, default=d.train_extra, help=f"GAN training images ({d.train_extra})")
    ap.add_argument("--val", type=int, default=d.val, help=f"validation images ({d.val})")
    ap.add_argument("--encoder", default=d.encoder, help=f"smp encoder ({d.encoder})")
    ap.add_argument("--encoder-weights", default=d.encoder_weights,
                    help="pretrained (seg_pretrain.py, cached in --out), none (random init) or a state-dict path")
    ap.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps,
                    help=f"encoder pretraining steps ({d.pretrain_steps})")
    ap.add_argument("--steps", type=int, default=d.seg_steps, help=f"segmentation steps per run ({d.seg_steps})")
    ap.add_argument("--batch-size", type=int, default=d.seg_batch, help=f"segmentation batch ({d.seg_batch})")
    ap.add_argument("--crop", type=int, default=d.crop, help=f"segmentation training crop ({d.crop})")
    ap.add_argument("--lr", type=float, default=d.seg_lr, help=f"segmentation SGD lr ({d.seg_lr})")
    ap.add_argument("--gan-steps", type=int, default=d.gan_steps, help=f"GAN steps per rate ({d.gan_steps})")
    ap.add_argument("--gan-lr", type=float, default=d.gan_lr, help=f"GAN Adam lr ({d.gan_lr:g}, the paper's)")
    ap.add_argument("--gan-width", type=int, default=d.gan_width, help=f"GAN base channels ({d.gan_width})")
    ap.add_argument("--gan-blocks", type=int, default=d.gan_blocks, help=f"generator residual blocks ({d.gan_blocks})")
    ap.add_argument("--vgg-weights", default=None,
                    help="a local vgg19 state dict: train the GAN with L_VGG through the CLI (default: L_VGG off)")
    ap.add_argument("--threads", type=int, default=d.threads, help=f"torch threads ({d.threads})")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar (the per-stage lines stay)")
    a = ap.parse_args(argv)
    if a.size < 128:
        ap.error("--size must be >= 128 (the GAN's patches are 128 and its 1/4-scale discriminator needs them)")
    return ExperimentConfig(out=a.out, seeds=tuple(a.seeds), qps=tuple(a.qp), size=a.size, train=a.train,
                            train_extra=a.train_extra, val=a.val, encoder=a.encoder, encoder_weights=a.encoder_weights,
                            pretrain_steps=a.pretrain_steps, seg_steps=a.steps, seg_batch=a.batch_size, crop=a.crop,
                            seg_lr=a.lr, gan_steps=a.gan_steps, gan_lr=a.gan_lr, gan_width=a.gan_width,
                            gan_blocks=a.gan_blocks,
                            vgg_weights=a.vgg_weights, threads=a.threads, quiet=a.quiet)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    results = Experiment(cfg).run()
    print((Path(cfg.out) / "results.md").read_text())
    say(f"total {results['wall_s']:.0f} s; stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in cfg.timings_s.items()))


if __name__ == "__main__":
    main()
