"""Paper 2's commands: train-restoration, restore-shards, train-segmentation, eval-segmentation.

Thin on purpose: options left unset are dropped, so the defaults of RestorationConfig,
RestoreConfig, SegmentationConfig and EvalConfig apply; each command calls one library
function and prints its summary as JSON. User errors end in one line, without a traceback.
The configs keep their own field names (num_workers, max_images, test_variant, out_dir, ...);
the mapping from the CLI's vocabulary happens here.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from . import options as o
from .classifier import fields_default, resolve_resume
from .errors import config, model_errors


def _echo(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=1, default=str))


def _steps_value(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """'80000,150000' -> (80000, 150000): iterations, each >= 0."""
    if value is None:
        return None
    try:
        steps = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of iterations") from None
    if not steps or min(steps) < 0:
        raise click.BadParameter(f"{value!r}: give one or more iterations >= 0")
    return steps


# train-restoration's recipes (lossyvision.train.restoration.RECIPES; listed here so --help imports no torch)
RESTORATION_RECIPES = ["gan", "l1-msssim", "rdn-psnr", "rdn-msssim"]


@o.command("train-restoration", log_level=logging.INFO)
@o.shards("ROOT/cityscapes holding <split>/<variant>/ (a path or an fsspec URL such as s3://bucket/root).")
@o.variant("Compressed variant to learn to restore, e.g. bpg-qp41.", shown="required", required=True)
@o.out("Run folder (config, log, samples, checkpoints, generator.pt, train_keys.json).", shown="runs/restoration")
@o.split("train_extra", "Split of the training pairs; keep it disjoint from the images restore-shards will restore "
         "(the paper: Cityscapes' train_extra).")
@o.option("--orig-variant", default=None, callback=o.name_value, show_default="orig", help="Reference variant.")
@o.option("--recipe", type=click.Choice(RESTORATION_RECIPES), default=None, show_default="gan",
          help="gan: the paper's adversarial restoration; l1-msssim: the same generator, no discriminators; "
               "rdn-psnr / rdn-msssim: Table III's RDN baseline maximising PSNR (MSE loss) or MS-SSIM.")
@o.option("--steps", type=o.positive(), default=None, show_default="135000; rdn-*: 200000", help="Iterations.")
@o.batch_size("Patches per step.", shown="1, as in the paper")
@o.option("--patch-size", type=o.positive(), default=None, show_default="256", help="Random patch side.")
@o.option("--lr", type=o.POSITIVE_FLOAT, default=None, show_default="2e-4; rdn-*: 1e-3", help="Adam learning rate.")
@o.option("--lr-decay-steps", default=None, callback=_steps_value, metavar="N[,N...]", old=("--lr-decay-step",),
          show_default="80000; rdn-*: 80000,150000", help="Iterations at which lr is divided by 10.")
@o.option("--width", type=o.positive(), default=None, show_default="64", help="GAN generator/discriminator base channels.")
@o.option("--n-blocks", type=o.positive(), default=None, show_default="9", help="GAN generator residual blocks.")
@o.option("--rdn-blocks", type=o.positive(), default=None, show_default="16", help="RDN residual dense blocks (global layers).")
@o.option("--rdn-layers", type=o.positive(), default=None, show_default="6", help="RDN convolutions per block (local layers).")
@o.option("--rdn-growth", type=o.positive(), default=None, show_default="32", help="RDN growth rate.")
@o.option("--vgg-weights", default=None, show_default="imagenet",
          help="'imagenet' (torchvision's) or a local vgg19 state dict.")
@o.limit("Train on a random subset of N images of the split, picked by --seed (the same N and seed give the same "
         "images; a smaller subset is part of a larger one).", old=("--max-images",))
@o.workers(shown="4", old=("--num-workers",))
@o.seed()
@o.deterministic()
@o.option("--sample-every", type=o.positive(), default=None, show_default="1000",
          help="Save a compressed|restored|original PNG every N steps.")
@o.option("--ckpt-every", type=o.positive(), default=None, show_default="5000", help="Write checkpoints/last.pt every N steps.")
@o.option("--log-every", type=o.positive(), default=None, show_default="100", help="Log a line every N steps.")
@o.resume("Continue the run: bare, from OUT/checkpoints/last.pt; or from PATH, a run folder or its "
          "checkpoints/last.pt.")
@o.overwrite()
@o.amp("on")
@o.device()
@o.max_pixels(o.SHARD_MAX_PIXELS)
@model_errors
def train_restoration(quiet: bool, resume: str | None, overwrite: bool | None, out: str | None, limit: int | None,
                      workers: int | None, **opts: Any) -> None:
    """Train paper 2's restoration GAN (or its RDN baseline) on (compressed, original) pairs."""
    from lossyvision.train.restoration import RestorationConfig, train_restoration as run

    resumed, out = resolve_resume(resume, out, "checkpoints/last.pt")
    _echo(run(config(RestorationConfig, resume=resumed, overwrite=overwrite, out_dir=out, max_images=limit,
                     num_workers=workers, quiet=quiet or None, **opts)))


@o.command("restore-shards", log_level=logging.INFO)
@o.shards("ROOT/cityscapes (a path or an fsspec URL such as s3://bucket/root); the restored variant is written there too.")
@o.variant("Compressed variant to restore, e.g. bpg-qp41.", shown="required", required=True)
@o.option("--generator", required=True, type=click.Path(dir_okay=False), show_default="required",
          help="generator.pt from train-restoration.")
@o.split("train", "Split to restore.")
@o.option("--out-variant", default=None, callback=o.name_value, show_default="<variant>+restored",
          help="Output variant name.")
@o.option("--orig-variant", default=None, callback=o.name_value, show_default="orig", help="Reference for PSNR/SSIM.")
@o.option("--tile", type=o.positive(0), default=None, show_default="0: whole image",
          help="Tile side for tiled inference, multiple of 8.")
@o.option("--overlap", type=o.positive(0), default=None, show_default="64", help="Context around each tile, cropped away.")
@o.workers("Threads that decode ahead of the generator's input and measure + PNG-encode behind it; 0: all in "
           "one thread, one image at a time.", shown="CPUs - 1, 1 to 4")
@o.option("--in-flight", type=o.positive(), default=None, show_default="2 x --workers",
          help="Most restored images held between the generator and the shard writer (bounds memory).")
@o.overwrite("Replace a variant written by another generator.")
@o.option("--allow-overlap", is_flag=True, default=None,
          help="Restore even images the generator was trained on (refused otherwise: it makes RO optimistic).")
@o.amp("on")
@o.device()
@o.max_pixels(o.SHARD_MAX_PIXELS)
@model_errors
def restore_shards(quiet: bool, overwrite: bool | None, **opts: Any) -> None:
    """Write an aligned '<variant>+restored' variant with the generator's restored images."""
    from lossyvision.pipelines.restore import RestoreConfig, restore_shards as run

    m = run(config(RestoreConfig, overwrite=overwrite, quiet=quiet or None, **opts), progress=not quiet)
    _echo({"variant": m["variant"], "num_samples": m["num_samples"], "means": m["means"]})


@o.command("train-segmentation", log_level=logging.INFO)
@o.shards("ROOT/cityscapes (a path or an fsspec URL such as s3://bucket/root).")
@o.variant("Training images: orig, a codec variant, or '<v>+restored'.", shown="orig", old=("--train-variant",))
@o.option("--val-variant", default=None, callback=o.name_value, show_default="orig", old=("--test-variant",),
          help="Images evaluated at the end.")
@o.train_split()
@o.val_split(old=("--test-split",))
@o.out("Run folder (config, log, checkpoints, model.pt, results).", shown="runs/segmentation")
@o.option("--encoder", default=None, show_default="resnet101", help="segmentation-models-pytorch encoder.")
@o.option("--encoder-weights", default=None, show_default="imagenet",
          help="'imagenet' (downloaded from the Hugging Face hub, or from its cache; offline without a cache: one "
               "line naming the file to fetch), a local encoder state dict (.pth or .safetensors), or 'none' "
               "for random init.")
@o.option("--output-stride", type=click.Choice(["8", "16"]), default=None, show_default="16 (paper 2)",
          help="DeepLabv3+ output stride.")
@o.option("--crop-size", type=o.positive(), default=None, show_default="768", help="Random crop side.")
@o.option("--scale-min", type=o.POSITIVE_FLOAT, default=None, show_default="0.5", help="Random scale range, low end.")
@o.option("--scale-max", type=o.POSITIVE_FLOAT, default=None, show_default="2.0", help="Random scale range, high end.")
@o.batch_size(o.PER_PROCESS_HELP)
@o.global_batch("8, the paper's")
@o.option("--steps", type=o.positive(), default=None, show_default="90000", help="Iterations.")
@o.option("--lr", type=o.POSITIVE_FLOAT, default=None, show_default="0.01", help="SGD base lr, poly schedule.")
@o.workers(shown="4", old=("--num-workers",))
@o.seed()
@o.deterministic()
@o.option("--ckpt-every", type=o.positive(), default=None, show_default="2000", help="Write checkpoints/last.pt every N steps.")
@o.option("--log-every", type=o.positive(), default=None, show_default="50", help="Log a line every N steps.")
@o.limit("Evaluate the first N images of --val-variant.", old=("--max-eval-images",), name="--val-limit")
@o.resume("Continue the run: bare, from OUT/checkpoints/last.pt; or from PATH, a run folder or its "
          "checkpoints/last.pt.")
@o.overwrite()
@o.option("--no-eval", is_flag=True, help="Skip the evaluation on --val-variant at the end.")
@o.amp("on")
@o.device()
@o.max_pixels(o.SHARD_MAX_PIXELS)
@model_errors
def train_segmentation(**options: Any) -> None:
    """Train DeepLabv3+ on one variant and evaluate on another (configurations OO, CO, OC, CC, RO, OR)."""
    from lossyvision.train.segmentation import train_segmentation as run

    _echo(run(segmentation_config(**options)))


def segmentation_config(quiet: bool, resume: str | None, overwrite: bool | None, no_eval: bool,
                        output_stride: str | None, out: str | None, variant: str | None, val_variant: str | None,
                        val_split: str | None, val_limit: int | None, workers: int | None, batch_size: int | None,
                        global_batch: int | None, **opts: Any) -> Any:
    """The SegmentationConfig of train-segmentation from its parsed options."""
    from lossyvision.train.segmentation import SegmentationConfig

    resumed, out = resolve_resume(resume, out, "checkpoints/last.pt")
    opts.update(o.batches(batch_size, global_batch, fields_default(SegmentationConfig, "batch_size"), "the default"))
    return config(SegmentationConfig, resume=resumed, overwrite=overwrite, evaluate=False if no_eval else None,
                  output_stride=int(output_stride) if output_stride else None, out_dir=out, train_variant=variant,
                  test_variant=val_variant, test_split=val_split, max_eval_images=val_limit, num_workers=workers,
                  quiet=quiet or None, **opts)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@o.command("eval-segmentation", log_level=logging.INFO)
@o.out("Results folder: OUT/results/*.json are collected into results.{csv,json,md} and miou_vs_bpp.png.",
       required=True)
@o.option("--checkpoint", default=None, type=click.Path(dir_okay=False), show_default="none: rebuild the report only",
          help="model.pt from train-segmentation.")
@o.shards("ROOT/cityscapes (a path or an fsspec URL such as s3://bucket/root); needed with --checkpoint.",
          required=False)
@o.variant("Variant(s) to evaluate on, repeatable.", shown="orig", multiple=True, old=("--test-variant",))
@o.split("val", "Split to evaluate.")
@o.option("--train-variant", default=None, callback=o.name_value, show_default="the checkpoint's",
          help="Override the training variant recorded in the checkpoint.")
@o.limit("Evaluate the first N images of each variant.", old=("--max-images",))
@o.formats()
@o.amp("on")
@o.device()
@o.max_pixels(o.SHARD_MAX_PIXELS)
@model_errors
def eval_segmentation(quiet: bool, out: str, checkpoint: str | None, shards: str | None,
                      variant: tuple[str, ...], limit: int | None, formats: tuple[str, ...], **opts: Any) -> None:
    """mIoU, per-class IoU and the small/big-object split (percent); tables and the mIoU-vs-bpp plot."""
    from lossyvision.eval.segmentation import EvalConfig, evaluate_checkpoint, load_results, write_report

    if checkpoint is None:
        records = load_results(out)
        if not records:
            raise click.UsageError(f"no results in {out}/results; pass --checkpoint and --shards to evaluate")
        paths = write_report(records, out, formats=formats)
        _echo({k: str(v) for k, v in paths.items()})
        return
    if not shards:
        raise click.UsageError("--checkpoint needs --shards ROOT/cityscapes")
    from lossyvision.train import distributed

    # under torchrun each process evaluates its share of the images; the confusion matrices are summed
    info = distributed.init_distributed("cuda" if _cuda_available() else "cpu")
    if info.distributed and opts.get("device") is None and _cuda_available():
        opts["device"] = f"cuda:{info.local_rank}"
    try:
        cfg = config(EvalConfig, checkpoint=checkpoint, shards=shards, out_dir=out,
                     test_variants=list(variant) or None, max_images=limit, formats=formats, quiet=quiet or None,
                     **opts)
        records = evaluate_checkpoint(cfg, dist=info if info.distributed else None)
    finally:
        distributed.destroy(info)
    if not info.main:
        return
    _echo([{k: r[k] for k in ("configuration", "train_variant", "test_variant", "bpp", "miou_pct", "miou_small_pct",
                              "miou_big_pct", "images")} for r in records])



@o.command("seg-features", log_level=logging.INFO)
@o.option("--checkpoint", required=True, type=click.Path(dir_okay=False), show_default="required",
          help="The OO model: model.pt from train-segmentation on orig.")
@o.shards("ROOT/<dataset> (a path or an fsspec URL such as s3://bucket/root).")
@o.variant("Compressed or restored variant to compare with the originals, repeatable (e.g. --variant bpg-qp41 "
           "--variant bpg-qp41+restored).", shown="required", multiple=True, required=True)
@o.option("--orig-variant", default=None, callback=o.name_value, show_default="orig", help="The reference variant.")
@o.split("val", "Split whose images are run through the model.")
@o.option("--layer", default=None, show_default="encoder.layer1 (the first residual stage)",
          help="Module of the model whose per-channel mean activations are compared (a name from named_modules).")
@o.limit("Use the first N images of the split.")
@o.out("Folder for features.json, features.csv and feature_alignment.<format>.", shown="runs/seg-features")
@o.formats()
@o.amp("off: the means are compared in fp32")
@o.device()
@o.max_pixels(o.SHARD_MAX_PIXELS)
@model_errors
def seg_features(quiet: bool, variant: tuple[str, ...], out: str | None, limit: int | None,
                 formats: tuple[str, ...], **opts: Any) -> None:
    """Fig. 10: per-channel mean activations of a shallow layer of the OO model, compressed and restored vs original."""
    from lossyvision.eval.features import FeatureConfig, seg_features as run

    _echo(run(config(FeatureConfig, variants=list(variant), out_dir=out, max_images=limit, formats=formats,
                     quiet=quiet or None, **opts)))


@o.command("seg-timing", log_level=logging.INFO)
@o.option("--checkpoint", required=True, type=click.Path(dir_okay=False), show_default="required",
          help="A segmentation model.pt from train-segmentation (its weights do not change its speed).")
@o.shards("ROOT/<dataset> (a path or an fsspec URL such as s3://bucket/root).")
@o.variant("Codec variant whose codec and setting are timed, e.g. bpg-qp41.", shown="required", required=True)
@o.option("--generator", default=None, type=click.Path(dir_okay=False), show_default="none: no R pipeline",
          help="generator.pt from train-restoration, timed for restoring before inference (OR, RR).")
@o.option("--orig-variant", default=None, callback=o.name_value, show_default="orig",
          help="The originals: what the codec encodes and the segmentation runs on.")
@o.split("val", "Split whose images are timed.")
@o.option("--limit", "limit", type=o.positive(), default=None, metavar="N", show_default="20",
          help="Timed images, after the warm-up ones.")
@o.option("--warmup", type=o.positive(0), default=None, show_default="2", help="Images run untimed first.")
@o.option("--tile", type=o.positive(0), default=None, show_default="0: whole image",
          help="Restoration tile side, as restore-shards (multiple of 8).")
@o.option("--overlap", type=o.positive(0), default=None, show_default="64", help="Context around each restoration tile.")
@o.out("Folder for timing.json, timing.csv and timing.md.", shown="runs/seg-timing")
@o.json_switch("Print the JSON summary on stdout instead of the Markdown table.")
@o.amp("on")
@o.device()
@o.max_pixels(o.SHARD_MAX_PIXELS)
@model_errors
def seg_timing(quiet: bool, out: str | None, limit: int | None, json_out: bool, **opts: Any) -> None:
    """Table IV: per-image inference time of each configuration's pipeline (encode, decode, restore, segment)."""
    from lossyvision.eval.timing import TimingConfig, time_pipelines, timing_markdown

    summary = time_pipelines(config(TimingConfig, out_dir=out, max_images=limit, **opts), progress_quiet=quiet)
    if json_out:
        _echo(summary)
    else:
        click.echo(timing_markdown(summary), nl=False)


@o.command("perceptual-index", log_level=logging.INFO)
@o.shards("ROOT/<dataset> (a path or an fsspec URL such as s3://bucket/root).")
@o.variant("Variant to score, repeatable (e.g. --variant orig --variant bpg-qp41 --variant bpg-qp41+restored).",
           shown="orig", multiple=True)
@o.split("val", "Split whose images are scored.")
@o.limit("Score the first N images of each variant.")
@o.out("Folder for perceptual.{json,csv,md} and perceptual_index.<format>.", shown="runs/perceptual-index")
@o.formats()
@o.max_pixels(o.SHARD_MAX_PIXELS)
@model_errors
def perceptual_index(quiet: bool, variant: tuple[str, ...], out: str | None, limit: int | None,
                     formats: tuple[str, ...], **opts: Any) -> None:
    """Fig. 9: the BRISQUE no-reference perceptual index (lower: more natural) per variant, mean and distribution."""
    from lossyvision.eval.perceptual import PerceptualConfig, perceptual_index as run

    _echo(run(config(PerceptualConfig, variants=list(variant) or None, out_dir=out, max_images=limit,
                     formats=formats, quiet=quiet or None, **opts)))


train_restoration_main = train_restoration
restore_shards_main = restore_shards
train_segmentation_main = train_segmentation
eval_segmentation_main = eval_segmentation
