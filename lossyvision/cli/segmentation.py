"""Click commands for paper 2: train-restoration, restore-shards, train-segmentation, eval-segmentation.

Thin on purpose: options left unset are dropped, so the defaults of RestorationConfig,
RestoreConfig, SegmentationConfig and EvalConfig apply; each command calls one library
function and prints its summary as JSON. User errors end in one line, without a traceback.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import click

from lossyvision.cli.classifier import (POSITIVE_FLOAT, OneLineCommand, device_value as _device_cb, max_pixels_option,
                                        name_value, out_value, positive, user_errors as _user_errors, verbose_option)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _setup(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _drop_none(**kwargs: Any) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


def _config(cls: type, **kwargs: Any):
    """The library's config; its checks of option values (ValueError) are usage errors (exit 2)."""
    try:
        return cls(**_drop_none(**kwargs))
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _echo(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=1, default=str))


def _quiet(f: Callable) -> Callable:
    return verbose_option(click.option("-q", "--quiet", is_flag=True, help="Log warnings only.")(max_pixels_option(f)))


_overwrite = click.option("--overwrite", is_flag=True, help="Replace the run in --out (its checkpoints and log).")
_amp = click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA (default on).")
_device = click.option("--device", default=None, callback=_device_cb,
                       help="cpu, cuda, cuda:N, mps or auto (default auto: cuda if available, else cpu).")


@click.command("train-restoration", cls=OneLineCommand, context_settings=CONTEXT)
@click.version_option(package_name="lossyvision")
@click.option("--shards", required=True, type=str, help="ROOT/cityscapes holding <split>/<variant>/ (a path or an fsspec URL such as s3://bucket/root).")
@click.option("--variant", required=True, callback=name_value, help="Compressed variant to learn to restore, e.g. bpg-qp41.")
@click.option("--out", "out_dir", default=None, callback=out_value, help="Run folder (config, log, samples, checkpoints, generator.pt).")
@click.option("--split", default=None, callback=name_value, help="Split of the training pairs (default train).")
@click.option("--orig-variant", default=None, callback=name_value, help="Reference variant (default orig).")
@click.option("--recipe", type=click.Choice(["gan", "l1-msssim"]), default=None,
              help="gan: the paper's adversarial restoration; l1-msssim: non-adversarial baseline.")
@click.option("--steps", type=positive(), default=None, help="Iterations (default 135000).")
@click.option("--batch-size", type=positive(), default=None, help="Patches per step (default 1, as in the paper).")
@click.option("--patch-size", type=positive(), default=None, help="Random patch side (default 256).")
@click.option("--lr", type=POSITIVE_FLOAT, default=None, help="Adam learning rate (default 2e-4).")
@click.option("--lr-decay-step", type=positive(0), default=None, help="Iteration from which lr is divided by 10 (default 80000).")
@click.option("--width", type=positive(), default=None, help="Generator/discriminator base channels (default 64).")
@click.option("--n-blocks", type=positive(), default=None, help="Generator residual blocks (default 9).")
@click.option("--vgg-weights", default=None, help="'imagenet' (torchvision, default) or a local vgg19 state dict.")
@click.option("--max-images", type=positive(), default=None, help="Train on the first N pairs only.")
@click.option("--num-workers", type=positive(0), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--sample-every", type=positive(), default=None, help="Save a compressed|restored|original PNG every N steps.")
@click.option("--ckpt-every", type=positive(), default=None)
@click.option("--log-every", type=positive(), default=None)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints/last.pt.")
@_overwrite
@_amp
@_device
@_quiet
@_user_errors
def train_restoration(quiet: bool, resume: bool, overwrite: bool, **opts: Any) -> None:
    """Train the restoration GAN of paper 2 on (compressed, original) pairs."""
    from lossyvision.train.restoration import RestorationConfig, train_restoration as run

    _setup(quiet)
    _echo(run(_config(RestorationConfig, resume=resume or None, overwrite=overwrite or None, **opts)))


@click.command("restore-shards", cls=OneLineCommand, context_settings=CONTEXT)
@click.version_option(package_name="lossyvision")
@click.option("--shards", required=True, type=str,
              help="ROOT/cityscapes (a path or an fsspec URL such as s3://bucket/root); the restored variant is written there too.")
@click.option("--variant", required=True, callback=name_value, help="Compressed variant to restore, e.g. bpg-qp41.")
@click.option("--generator", required=True, type=click.Path(dir_okay=False), help="generator.pt from train-restoration.")
@click.option("--split", default=None, callback=name_value, help="Split to restore (default train).")
@click.option("--out-variant", default=None, callback=name_value, help="Output variant name (default '<variant>+restored').")
@click.option("--orig-variant", default=None, callback=name_value, help="Reference for PSNR/SSIM (default orig).")
@click.option("--tile", type=positive(0), default=None, help="Tile side for tiled inference, multiple of 8 (default 0: whole image).")
@click.option("--overlap", type=positive(0), default=None, help="Context around each tile, cropped away (default 64).")
@click.option("--overwrite", is_flag=True, help="Replace a variant written by another generator.")
@_amp
@_device
@_quiet
@_user_errors
def restore_shards(quiet: bool, overwrite: bool, **opts: Any) -> None:
    """Write an aligned '<variant>+restored' variant with the generator's restored images."""
    from lossyvision.pipelines.restore import RestoreConfig, restore_shards as run

    _setup(quiet)
    m = run(_config(RestoreConfig, overwrite=overwrite or None, **opts), progress=not quiet)
    _echo({"variant": m["variant"], "num_samples": m["num_samples"], "means": m["means"]})


@click.command("train-segmentation", cls=OneLineCommand, context_settings=CONTEXT)
@click.version_option(package_name="lossyvision")
@click.option("--shards", required=True, type=str, help="ROOT/cityscapes (a path or an fsspec URL such as s3://bucket/root).")
@click.option("--train-variant", default=None, callback=name_value, help="Training images: orig, a codec variant, or '<v>+restored'.")
@click.option("--test-variant", default=None, callback=name_value, help="Test images evaluated at the end (default orig).")
@click.option("--train-split", default=None, callback=name_value, help="Default train.")
@click.option("--test-split", default=None, callback=name_value, help="Default val.")
@click.option("--out", "out_dir", default=None, callback=out_value, help="Run folder (config, log, checkpoints, model.pt, results).")
@click.option("--encoder", default=None, help="segmentation-models-pytorch encoder (default resnet101).")
@click.option("--encoder-weights", default=None, help="'imagenet' (needs network or cache) or a local state dict.")
@click.option("--output-stride", type=click.Choice(["8", "16"]), default=None, help="Default 16 (paper 2).")
@click.option("--crop-size", type=positive(), default=None, help="Random crop side (default 768).")
@click.option("--scale-min", type=POSITIVE_FLOAT, default=None, help="Random scale range (default 0.5-2.0).")
@click.option("--scale-max", type=POSITIVE_FLOAT, default=None)
@click.option("--batch-size", type=positive(), default=None, help="Per process (default 8).")
@click.option("--steps", type=positive(), default=None, help="Iterations (default 90000).")
@click.option("--lr", type=POSITIVE_FLOAT, default=None, help="SGD base lr, poly schedule (default 0.01).")
@click.option("--num-workers", type=positive(0), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--ckpt-every", type=positive(), default=None)
@click.option("--log-every", type=positive(), default=None)
@click.option("--max-eval-images", type=positive(), default=None, help="Evaluate the first N test images.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints/last.pt.")
@_overwrite
@click.option("--no-eval", is_flag=True, help="Skip the evaluation on --test-variant at the end.")
@_amp
@_device
@_quiet
@_user_errors
def train_segmentation(quiet: bool, resume: bool, overwrite: bool, no_eval: bool, output_stride: str | None,
                       **opts: Any) -> None:
    """Train DeepLabv3+ on one variant and evaluate on another (configurations OO, CO, OC, CC, RO, OR)."""
    from lossyvision.train.segmentation import SegmentationConfig, train_segmentation as run

    _setup(quiet)
    cfg = _config(SegmentationConfig, resume=resume or None, overwrite=overwrite or None,
                  evaluate=False if no_eval else None,
                  output_stride=int(output_stride) if output_stride else None, **opts)
    _echo(run(cfg))


@click.command("eval-segmentation", cls=OneLineCommand, context_settings=CONTEXT)
@click.version_option(package_name="lossyvision")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), callback=out_value,
              help="Results folder: OUT/results/*.json are collected into results.{csv,json,md} and miou_vs_bpp.png.")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="model.pt from train-segmentation; without it, only the report is rebuilt.")
@click.option("--shards", default=None, type=str, help="ROOT/cityscapes (a path or an fsspec URL such as s3://bucket/root).")
@click.option("--test-variant", "test_variants", multiple=True, callback=name_value, help="Variant(s) to evaluate on (repeatable).")
@click.option("--split", default=None, callback=name_value, help="Default val.")
@click.option("--train-variant", default=None, callback=name_value, help="Override the training variant recorded in the checkpoint.")
@click.option("--max-images", type=positive(), default=None, help="Evaluate the first N images of each variant.")
@_amp
@_device
@_quiet
@_user_errors
def eval_segmentation(quiet: bool, out_dir: str, checkpoint: str | None, shards: str | None,
                      test_variants: tuple[str, ...], **opts: Any) -> None:
    """mIoU, per-class IoU and the small/big-object split; tables and the mIoU-vs-bpp plot."""
    from lossyvision.eval.segmentation import EvalConfig, evaluate_checkpoint, load_results, write_report

    _setup(quiet)
    if checkpoint is None:
        records = load_results(out_dir)
        if not records:
            raise click.UsageError(f"no results in {out_dir}/results; pass --checkpoint and --shards to evaluate")
        paths = write_report(records, out_dir)
        _echo({k: str(v) for k, v in paths.items()})
        return
    if not shards:
        raise click.UsageError("--checkpoint needs --shards ROOT/cityscapes")
    cfg = _config(EvalConfig, checkpoint=checkpoint, shards=shards, out_dir=out_dir,
                  test_variants=list(test_variants) or None, **opts)
    records = evaluate_checkpoint(cfg)
    _echo([{k: r[k] for k in ("configuration", "train_variant", "test_variant", "bpp", "miou", "small", "big",
                              "images")} for r in records])


train_restoration_main = train_restoration
restore_shards_main = restore_shards
train_segmentation_main = train_segmentation
eval_segmentation_main = eval_segmentation
