"""Click commands for classifier training and evaluation (registered by lossyvision.cli).

Thin on purpose: parse, build a config (options left unset are dropped so the library
defaults in TrainConfig / EvalConfig apply), call one library function, print the result.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import click

from lossyvision.cli.common import OneLineCommand, verbose_option  # noqa: F401 - cli.segmentation imports them from here
from lossyvision.cli.common import user_errors as _common_user_errors


def _usage_errors() -> tuple[type, ...]:
    from lossyvision.names import NameError_
    from lossyvision.pipelines.stream import OptionError

    return (OptionError, NameError_)


def _failures() -> tuple[type, ...]:
    from lossyvision.pipelines.imageio import SourceError
    from lossyvision.pipelines.stream import ShardError
    from lossyvision.train.models import WeightsUnavailable

    return (ShardError, WeightsUnavailable, SourceError, FileNotFoundError, KeyError, FloatingPointError, ImportError)


# exit 2 for a bad option value, 1 for a failure while running (a bad shard, a missing variant)
user_errors = _common_user_errors(_usage_errors, _failures,
                                  interrupted="interrupted; rerun the command (a training one with --resume) to continue",
                                  memory_hint="lower --batch-size, --workers or --max-pixels")
_user_errors = user_errors


def out_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An output folder: not empty (an empty --out would write into the working directory)."""
    if value is not None and not value.strip():
        raise click.BadParameter("is empty; give the folder to write to")
    return value


def device_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """cpu, cuda, cuda:N, mps or auto, and available here; None/auto: the library's default."""
    if value is None or value == "auto":
        return None
    from lossyvision.pipelines.stream import OptionError, resolve_device
    try:
        resolve_device(value)
    except OptionError as e:
        raise click.BadParameter(str(e)) from None
    return value


def name_value(ctx: click.Context, param: click.Parameter, value):
    """A dataset/split/variant name that becomes a path component (one or a tuple of them)."""
    from lossyvision.names import NameError_, check_name
    if value is None:
        return None
    what = param.opts[0] if param.opts else param.name
    try:
        if isinstance(value, tuple):
            return tuple(check_name(what, v) for v in value)
        return check_name(what, value)
    except NameError_ as e:
        raise click.BadParameter(str(e)) from None


def positive(lo: int = 1) -> click.IntRange:
    return click.IntRange(min=lo)


POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)


def max_pixels_option(f: Callable) -> Callable:
    """prepare-shards' --max-pixels (same name and default), for the images inside shards."""
    from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS
    return click.option("--max-pixels", type=positive(), default=DEFAULT_MAX_PIXELS, show_default=True,
                        help="A shard's image whose header holds more pixels (width x height) is an error naming "
                             "the shard and the sample, before any decode.")(f)


def _refuse_resume_and_overwrite(resume, overwrite) -> None:
    if resume and overwrite:
        raise click.UsageError("--resume continues a run and --overwrite replaces it; give one of them")


def _floats3(ctx, param, value):
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three comma-separated numbers, got {value!r}") from None
    if len(parts) != 3:
        raise click.BadParameter(f"expected three comma-separated numbers, got {value!r}")
    if param.name == "std" and any(p <= 0 for p in parts):
        raise click.BadParameter(f"std values must be positive, got {value!r}")
    return parts


def _logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


_TRAIN_OPTIONS = [
    click.option("--shards", required=True, type=str, help="ROOT/<dataset> holding <split>/<variant>/ folders (a path or an fsspec URL such as s3://bucket/root)."),
    click.option("--variant", "variant", multiple=True, callback=name_value, help="Compressed variant to train on, e.g. j2k-r200 (not needed for "
                 "stability). Repeat it to train one universal model on their mixture (each sample draws one)."),
    click.option("--out", required=True, type=click.Path(file_okay=False), callback=out_value, help="Run folder (config.json, log.jsonl, last.pt, best.pt)."),
    click.option("--preset", default=None, help="Paper settings, e.g. marie2022-resnet50-expert-bpg-qp51 (a Table I cell, "
                 "variant included) or marie2022-mnasnet-expert; --list-presets shows them. Explicit options override it."),
    click.option("--model", default=None, help="torchvision:NAME[:WEIGHTS], a registered name, or a checkpoint [mnasnet1_0]."),
    click.option("--weights", default=None, help="State dict PATH (or a weights enum name) for --model."),
    click.option("--num-classes", type=positive(), default=None, help="Default: the manifest's class count."),
    click.option("--epochs", type=positive(), default=None, help="[45]"),
    click.option("--batch-size", type=positive(), default=None, help="Per process [320, the paper's MnasNet batch; ResNet50: 384]."),
    click.option("--lr", type=POSITIVE_FLOAT, default=None, help="[1e-5]"),
    click.option("--alpha", type=click.FloatRange(min=0), default=None, help="Weight of the KL term [3.2 with batchmean = the paper's 1e-2 "
                 "with reduction 'sum' at batch 320, at any batch size]."),
    click.option("--kl-reduction", type=click.Choice(["batchmean", "sum"]), default=None,
                 help="[batchmean]; sum = the paper code's form (alpha_sum = alpha_batchmean / batch)."),
    click.option("--temperature", type=POSITIVE_FLOAT, default=None, help="KL temperature [1]."),
    click.option("--sigma", type=click.FloatRange(min=0), default=None, help="Stability: noise std [0.04; x 256 levels with uint8 noise]."),
    click.option("--stability-noise", type=click.Choice(["uint8", "gaussian"]), default=None,
                 help="[uint8]: the authors' clipped, truncated pixel noise; gaussian: unclipped, in normalised space."),
    click.option("--patience", "plateau_patience", type=positive(0), default=None, help="Epochs without a better val loss before lr/5, minus one [2]."),
    click.option("--max-lr-cuts", type=positive(), default=None, help="Stop rule's number of lr cuts [3]."),
    click.option("--stop-rule", type=click.Choice(["authors", "cuts"]), default=None,
                 help="[authors]: stop once lr <= lr0/5^cuts in the authors' float arithmetic (4 cuts at lr0 1e-5 and "
                      "5e-6, 3 at 1e-6); cuts: after exactly --max-lr-cuts cuts."),
    click.option("--teacher-cache", default=None, help="'auto' (<out>/teacher-<split>.h5), 'off', or a path [auto]."),
    click.option("--train-split", default=None, callback=name_value, help="[train]"),
    click.option("--val-split", default=None, callback=name_value, help="[val]"),
    click.option("--workers", type=positive(0), default=None, help="DataLoader workers per process [4]."),
    click.option("--seed", type=int, default=None, help="[0]"),
    click.option("--amp/--no-amp", default=None, help="bf16 autocast [on with CUDA]; --no-amp: fp32 with TF32 off, as the paper."),
    click.option("--channels-last/--no-channels-last", default=None, help="[on with CUDA]"),
    click.option("--device", default=None, callback=device_value, help="cpu, cuda, cuda:N, mps or auto [auto: cuda if available]."),
    click.option("--resume", is_flag=True, default=None, help="Continue from <out>/last.pt."),
    click.option("--overwrite", is_flag=True, default=None, help="Replace the run in --out (its checkpoints and log)."),
    click.option("--max-steps-per-epoch", type=positive(), default=None, help="Cap batches per epoch (quick looks)."),
    click.option("--quiet", is_flag=True, default=False, help="No progress bars, warnings only."),
]


def _list_presets(ctx, param, value):
    if not value or ctx.resilient_parsing:
        return
    from lossyvision.train.classifier import PRESETS
    for name in sorted(PRESETS):
        p = PRESETS[name]
        click.echo(f"{name}\t{p['recipe']}\t{p.get('variant', '-')}\tlr {p['lr']:g}\talpha {p.get('alpha', 0):g}\tbatch {p['batch_size']}")
    ctx.exit()


def _train_options(fn):
    for opt in reversed(_TRAIN_OPTIONS):
        fn = opt(fn)
    fn = max_pixels_option(verbose_option(fn))
    return click.option("--list-presets", is_flag=True, expose_value=False, is_eager=True, callback=_list_presets,
                        help="List the presets (name, recipe, variant, lr, alpha, batch) and exit.")(fn)


def _run_training(recipe: str | None, quiet: bool, **options) -> None:
    from lossyvision.train.classifier import PRESETS, preset_config, train
    _logging(quiet)
    preset = options.pop("preset")
    if recipe is not None:
        if preset is not None and PRESETS.get(preset, {}).get("recipe", recipe) != recipe:
            raise click.UsageError(f"preset {preset!r} is not an {recipe} preset")
        options["recipe"] = recipe
    variants = list(options.pop("variant") or ())
    if variants:
        options["variant"] = variants[0] if len(variants) == 1 else variants
    elif "variant" not in PRESETS.get(preset or "", {}):
        if (options.get("recipe") or PRESETS.get(preset or "", {}).get("recipe")) != "stability":
            raise click.UsageError("--variant is required (the compressed variant to train on, e.g. jpeg-q10), "
                                   "or a preset of a Table I cell (--list-presets)")
        options["variant"] = "orig"
    _refuse_resume_and_overwrite(options.get("resume"), options.get("overwrite"))
    try:
        cfg = preset_config(preset, progress=not quiet, **options)
    except ValueError as e:  # the config's checks of option values
        raise click.UsageError(str(e)) from None
    summary = train(cfg)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "history"}))


@click.command("train-classifier", cls=OneLineCommand)
@click.version_option(package_name="lossyvision")
@click.option("--recipe", type=click.Choice(["finetune", "expert", "stability"]), default=None, help="[expert]")
@_train_options
@user_errors
def train_classifier(recipe, quiet, **options):
    """Fine-tune / expert-train / stability-train a classifier on shards (Marie et al. 2022)."""
    _run_training(recipe, quiet, **options)


@click.command("train-expert", cls=OneLineCommand)
@click.version_option(package_name="lossyvision")
@_train_options
@user_errors
def train_expert(quiet, **options):
    """Expert training: CE(f(x~), y) + alpha KL(g(x) || f(x~)), g the frozen initial model."""
    _run_training("expert", quiet, **options)


@click.command("eval-classifier", cls=OneLineCommand)
@click.version_option(package_name="lossyvision")
@click.option("--model", required=True, help="torchvision:NAME[:WEIGHTS], a checkpoint, or a TorchScript file.")
@click.option("--weights", default=None, help="State dict PATH for a torchvision/registered --model.")
@click.option("--shards", required=True, type=str, help="ROOT/<dataset>/<split> holding variant folders (a path or an fsspec URL such as s3://bucket/root).")
@click.option("--variant", "variants", multiple=True, callback=name_value, help="Variant(s) to evaluate, repeatable [orig].")
@click.option("--batch-size", type=positive(), default=None)
@click.option("--workers", type=positive(0), default=None)
@click.option("--device", default=None, callback=device_value, help="cpu, cuda, cuda:N, mps or auto [auto].")
@click.option("--mean", callback=_floats3, default=None, help="Normalisation mean, 'r,g,b' [ImageNet].")
@click.option("--std", callback=_floats3, default=None, help="Normalisation std, 'r,g,b' [ImageNet].")
@click.option("--max-samples", type=positive(), default=None, help="Evaluate the first N samples of each variant.")
@max_pixels_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None)
@click.option("--md", "md_path", type=click.Path(dir_okay=False), default=None)
@click.option("--quiet", is_flag=True, default=False)
@verbose_option
@user_errors
def eval_classifier(json_path, csv_path, md_path, quiet, variants, **options):
    """Top-1/top-5 of one model on one or more shard variants."""
    from lossyvision.eval.classification import EvalConfig, evaluate, markdown_table, write_results
    _logging(quiet)
    kw = {k: v for k, v in options.items() if v is not None}
    if variants:
        kw["variants"] = list(variants)
    try:
        cfg = EvalConfig(progress=not quiet, **kw)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    rows = evaluate(cfg)
    write_results(rows, json_path, csv_path, md_path, config=cfg.to_dict())
    click.echo(markdown_table(rows), nl=False)


@click.command("eval-matrix", cls=OneLineCommand)
@click.version_option(package_name="lossyvision")
@click.option("--model", "models", multiple=True, required=True,
              help="LABEL=REF (repeatable): a model trained on variant LABEL, e.g. jpeg-q10=runs/jpeg-q10/best.pt.")
@click.option("--shards", required=True, type=str, help="ROOT/<dataset>/<split> holding variant folders (a path or an fsspec URL such as s3://bucket/root).")
@click.option("--variant", "variants", multiple=True, required=True, callback=name_value, help="Test variant(s), repeatable.")
@click.option("--out", required=True, type=click.Path(file_okay=False), callback=out_value, help="Folder for matrix.json, matrix.md, matrix.png.")
@click.option("--batch-size", type=positive(), default=None)
@click.option("--workers", type=positive(0), default=None)
@click.option("--device", default=None, callback=device_value, help="cpu, cuda, cuda:N, mps or auto [auto].")
@click.option("--mean", callback=_floats3, default=None)
@click.option("--std", callback=_floats3, default=None)
@click.option("--max-samples", type=positive(), default=None, help="Evaluate the first N samples of each variant.")
@max_pixels_option
@click.option("--quiet", is_flag=True, default=False)
@verbose_option
@user_errors
def eval_matrix(models, variants, out, quiet, **options):
    """Train-on-A / test-on-B accuracy matrix with a heatmap (paper 1, Fig. 5)."""
    from lossyvision.eval.classification import eval_matrix as run_matrix, matrix_markdown, plot_matrix
    _logging(quiet)
    labelled: dict[str, str] = {}
    for m in models:
        label, sep, ref = m.partition("=")
        if not sep:
            label, ref = Path(m).parent.name or m, m
        if label in labelled:
            raise click.UsageError(f"model label {label!r} given twice; use LABEL=REF to name them")
        labelled[label] = ref
    kw = {k: v for k, v in options.items() if v is not None}
    result = run_matrix(labelled, options_shards(kw), list(variants), progress=not quiet, **kw)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "matrix.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    (outdir / "matrix.md").write_text(matrix_markdown(result))
    plot_matrix(result, outdir / "matrix.png")
    click.echo(matrix_markdown(result), nl=False)


def options_shards(kw: dict) -> str:
    return kw.pop("shards")


# console-script entry points (setup.cfg: train-classifier = lossyvision.cli.classifier:train_classifier_main, ...)
train_classifier_main = train_classifier
train_expert_main = train_expert
eval_classifier_main = eval_classifier
eval_matrix_main = eval_matrix
