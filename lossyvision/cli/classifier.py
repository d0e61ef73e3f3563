"""Classifier training and evaluation: train-classifier, train-expert, eval-classifier, eval-matrix.

Thin on purpose: parse, build a config (options left unset are dropped so the library
defaults in TrainConfig / EvalConfig apply), call one library function, print the result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import click

from .. import storage
from . import options as o
from .errors import model_errors
from .options import POSITIVE_FLOAT, positive

F = Callable[..., Any]


def resolve_resume(resume: str | None, out: str | None, last: str) -> tuple[bool | None, str | None]:
    """``--resume`` (None, "last" or a PATH) and ``--out`` -> (resume, run folder). A PATH is the run
    folder or its ``last`` checkpoint (``last.pt`` or ``checkpoints/last.pt``); it names --out when
    --out is not given."""
    if resume is None:
        return None, out
    if resume == "last":
        return True, out
    p = Path(resume)
    if p.is_dir():
        run = p
    elif Path(*p.parts[-len(Path(last).parts):]) == Path(last):
        run = Path(*p.parts[:-len(Path(last).parts)]) if len(p.parts) > len(Path(last).parts) else Path(".")
    else:
        raise click.UsageError(f"--resume {resume}: give the run folder or its {last} (bare --resume: --out's); "
                               "to start from other weights, use --weights")
    if out is not None and os.path.realpath(out) != os.path.realpath(run):
        raise click.UsageError(f"--resume {resume} is not the run in --out {out}; give one of them")
    return True, str(run)


def _list_presets(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from lossyvision.train.classifier import PRESETS
    for name in sorted(PRESETS):
        p = PRESETS[name]
        click.echo(f"{name}\t{p['recipe']}\t{p.get('variant', '-')}\tlr {p['lr']:g}\talpha {p.get('alpha', 0):g}\tglobal batch {p['batch_size']}")
    ctx.exit()


_TRAIN_OPTIONS = [
    o.shards(),
    o.variant("Compressed variant to train on, e.g. j2k-r200. Repeat it to train one universal model on their "
              "mixture (each sample draws one).", shown="the preset's; orig for stability", multiple=True),
    o.out("Run folder (config.json, log.jsonl, last.pt, best.pt).", shown="required, or --resume PATH"),
    o.option("--preset", default=None, show_default="none",
             help="Paper settings, e.g. marie2022-resnet50-expert-bpg-qp51 (a Table I cell, variant included) or "
                  "marie2022-mnasnet-expert; --list-presets shows them. Explicit options override it. Its batch is "
                  "global (the paper's, over all GPUs) unless -b gives one per process."),
    o.option("--model", default=None, show_default="mnasnet1_0",
             help="torchvision:NAME[:WEIGHTS], a registered name, or a checkpoint."),
    o.option("--weights", default=None, show_default="the model's pretrained weights",
             help="State dict PATH (or a weights enum name) for --model."),
    o.option("--num-classes", type=positive(), default=None, show_default="the manifest's class count",
             help="Classes of the model's head."),
    o.option("--epochs", type=positive(), default=None, show_default="45", help="Epochs at most (the stop rule may end earlier)."),
    o.batch_size(o.PER_PROCESS_HELP),
    o.global_batch("the preset's batch, the paper's (MnasNet 320, ResNet50 384); without a preset 320"),
    o.option("--lr", type=POSITIVE_FLOAT, default=None, show_default="1e-5", help="Adam learning rate."),
    o.option("--alpha", type=click.FloatRange(min=0), default=None, show_default="3.2",
             help="Weight of the KL term (3.2 with batchmean = the paper's 1e-2 with reduction 'sum' at batch 320, "
                  "at any batch size)."),
    o.option("--kl-reduction", type=click.Choice(["batchmean", "sum"]), default=None, show_default="batchmean",
             help="sum = the paper code's form (alpha_sum = alpha_batchmean / batch)."),
    o.option("--temperature", type=POSITIVE_FLOAT, default=None, show_default="1", help="KL temperature."),
    o.option("--sigma", type=click.FloatRange(min=0), default=None, show_default="0.04",
             help="Stability: noise std (x 256 levels with uint8 noise)."),
    o.option("--stability-noise", type=click.Choice(["uint8", "gaussian"]), default=None, show_default="uint8",
             help="uint8: the authors' clipped, truncated pixel noise; gaussian: unclipped, in normalised space."),
    o.option("--patience", "plateau_patience", type=positive(0), default=None, show_default="2",
             help="Epochs without a better val loss before lr/5, minus one."),
    o.option("--max-lr-cuts", type=positive(), default=None, show_default="3", help="Stop rule's number of lr cuts."),
    o.option("--stop-rule", type=click.Choice(["authors", "cuts"]), default=None, show_default="authors",
             help="authors: stop once lr <= lr0/5^cuts in the authors' float arithmetic (4 cuts at lr0 1e-5 and "
                  "5e-6, 3 at 1e-6); cuts: after exactly --max-lr-cuts cuts."),
    o.option("--teacher-cache", default=None, show_default="auto",
             help="'auto' (<out>/teacher-<split>.h5), 'off', or a path."),
    o.train_split(),
    o.val_split(),
    o.workers(shown="4"),
    o.seed(),
    o.deterministic(),
    o.amp("on with CUDA", "autocast (bf16 where the GPU runs it natively, else fp16 with loss scaling); --no-amp: "
          "fp32 with TF32 off, as the paper."),
    o.option("--channels-last/--no-channels-last", default=None, show_default="on with CUDA",
             help="NHWC memory format for the model and batches."),
    o.device(),
    o.resume("Continue the run: bare, from --out's last.pt; or from PATH, a run folder or its last.pt."),
    o.overwrite(),
    o.option("--max-steps-per-epoch", type=positive(), default=None, show_default="all",
             help="Cap batches per epoch (quick looks)."),
    o.option("--log-every", type=positive(), default=None, show_default="100",
             help="Log a line every N training steps (loss, lr, rate, ETA), besides each epoch's."),
    o.max_pixels(o.SHARD_MAX_PIXELS),
    o.option("--list-presets", is_flag=True, expose_value=False, is_eager=True, callback=_list_presets,
             help="List the presets (name, recipe, variant, lr, alpha, global batch) and exit."),
]


def _train_options(fn: F) -> F:
    for opt in reversed(_TRAIN_OPTIONS):
        fn = opt(fn)
    return fn


def training_config(recipe: str | None, quiet: bool, **options: Any) -> Any:
    """The TrainConfig of train-classifier / train-expert from their parsed options."""
    from lossyvision.train.classifier import PRESETS, TrainConfig, preset_config

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
    options["resume"], options["out"] = resolve_resume(options.get("resume"), options.get("out"), "last.pt")
    if options["out"] is None:
        raise click.UsageError("Missing option '--out' (the run folder)")
    if options.get("resume") and options.get("overwrite"):
        raise click.UsageError("--resume continues a run and --overwrite replaces it; give one of them")
    if preset in PRESETS:
        default_batch, default_is = PRESETS[preset]["batch_size"], f"preset {preset}'s"
    else:  # an unknown preset: preset_config names the known ones
        default_batch, default_is = fields_default(TrainConfig, "batch_size"), "the default"
    options.update(o.batches(options.pop("batch_size"), options.pop("global_batch"), default_batch, default_is))
    try:
        return preset_config(preset, quiet=quiet or None, **options)
    except ValueError as e:  # the config's checks of option values
        raise click.UsageError(str(e)) from None


def fields_default(cls: type, name: str) -> Any:
    """A dataclass field's default (the library's, so the CLI does not repeat it)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _run_training(recipe: str | None, quiet: bool, **options: Any) -> None:
    from lossyvision.train.classifier import train

    summary = train(training_config(recipe, quiet, **options))
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "history"}))


@o.command("train-classifier", log_level=logging.INFO)
@o.option("--recipe", type=click.Choice(["finetune", "expert", "stability"]), default=None, show_default="expert",
          help="finetune: cross-entropy on the variant; expert: + KL to the frozen initial model; stability: "
               "+ KL under noise.")
@_train_options
@model_errors
def train_classifier(recipe: str | None, quiet: bool, **options: Any) -> None:
    """Fine-tune / expert-train / stability-train a classifier on shards (Marie et al. 2022)."""
    _run_training(recipe, quiet, **options)


@o.command("train-expert", log_level=logging.INFO)
@_train_options
@model_errors
def train_expert(quiet: bool, **options: Any) -> None:
    """Expert training: CE(f(x~), y) + alpha KL(g(x) || f(x~)), g the frozen initial model."""
    _run_training("expert", quiet, **options)


def split_folder(shards: str, split: str) -> str:
    """ROOT/<dataset> + split -> the folder of the variants. The older form, --shards naming that
    folder itself (ROOT/<dataset>/<split>), is still taken for one release, with a warning."""
    from lossyvision.pipelines.stream import available_variants

    folder = storage.join(shards, split)
    if storage.isdir(folder):
        return folder
    try:
        held = available_variants(shards)
    except (OSError, ValueError):  # a missing root: the error below names the path
        held = []
    if held:
        parent, name = os.path.split(shards.rstrip("/"))
        click.echo(f"warning: --shards ROOT/<dataset>/<split> is deprecated; use --shards ROOT/<dataset> --split "
                   f"(here --shards {parent} --split {name})", err=True)
        return shards
    return folder


def _eval_options(amp_shown: str) -> Callable[[F], F]:
    return lambda f: _eval_common(f, amp_shown)


def _eval_common(f: F, amp_shown: str) -> F:
    for opt in reversed([
        o.shards("ROOT/<dataset> holding <split>/<variant>/ folders (a path or an fsspec URL such as s3://bucket/root)."),
        o.split("val", "Split to evaluate."),
        o.batch_size("Images per batch.", shown="128"),
        o.workers(shown="4"),
        o.device(),
        o.amp(amp_shown, "bf16 autocast on CUDA; --no-amp: fp32."),
        o.option("--mean", callback=o.floats3, default=None, show_default="ImageNet's",
                 help="Normalisation mean, 'r,g,b'."),
        o.option("--std", callback=o.floats3, default=None, show_default="ImageNet's",
                 help="Normalisation std, 'r,g,b'."),
        o.limit("Evaluate the first N samples of each variant.", old=("--max-samples",)),
        o.max_pixels(o.SHARD_MAX_PIXELS),
    ]):
        f = opt(f)
    return f


def _old_file_option(name: str, file: str) -> Callable[[F], F]:
    def cb(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            click.echo(f"warning: --{name} FILE is deprecated; use --out DIR (writes {file})", err=True)
        return value

    return o.option(f"--{name}", f"{name}_path", type=click.Path(dir_okay=False), default=None, hidden=True,
                    callback=cb, show_default="none", help=f"Deprecated: write {file} to this path; use --out DIR.")


@o.command("eval-classifier", log_level=logging.INFO)
@o.option("--model", required=True, show_default="required",
          help="torchvision:NAME[:WEIGHTS], a checkpoint, or a TorchScript file.")
@o.option("--weights", default=None, show_default="the model's own", help="State dict PATH for a torchvision/registered --model.")
@o.variant("Variant(s) to evaluate, repeatable.", shown="orig", multiple=True)
@_eval_options("on with CUDA")
@o.out("Folder for results.json (with the config), results.csv and results.md.")
@o.json_switch("Print the result rows as JSON on stdout instead of the Markdown table.",
               was_value="--json is a switch now (JSON on stdout); write the files with --out DIR "
                         "(results.json, results.csv, results.md)")
@_old_file_option("csv", "results.csv")
@_old_file_option("md", "results.md")
@model_errors
def eval_classifier(out: str | None, json_out: bool, csv_path: str | None, md_path: str | None, quiet: bool,
                    variant: tuple[str, ...], shards: str, split: str | None, limit: int | None, **options: Any) -> None:
    """Top-1/top-5 (percent) of one model on one or more shard variants."""
    from lossyvision.eval.classification import EvalConfig, evaluate, markdown_table, write_results

    kw = {k: v for k, v in options.items() if v is not None}
    if variant:
        kw["variants"] = list(variant)
    try:
        cfg = EvalConfig(shards=split_folder(shards, split or "val"), max_samples=limit, quiet=quiet, **kw)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    rows = evaluate(cfg)
    files = {"json_path": None, "csv_path": csv_path, "md_path": md_path}
    if out:
        files = {"json_path": os.path.join(out, "results.json"), "csv_path": csv_path or os.path.join(out, "results.csv"),
                 "md_path": md_path or os.path.join(out, "results.md")}
    write_results(rows, config=cfg.to_dict(), **files)
    if json_out:
        click.echo(json.dumps(rows, indent=1))
    else:
        click.echo(markdown_table(rows), nl=False)


@o.command("eval-matrix", log_level=logging.INFO)
@o.option("--model", "models", multiple=True, required=True, show_default="required",
          help="LABEL=REF (repeatable): a model trained on variant LABEL, e.g. jpeg-q10=runs/jpeg-q10/best.pt.")
@o.variant("Test variant(s), repeatable.", shown="required", multiple=True, required=True)
@_eval_options("off")
@o.out("Folder for matrix.json, matrix.md and the matrix figure.", required=True)
@o.formats()
@model_errors
def eval_matrix(models: tuple[str, ...], variant: tuple[str, ...], out: str, quiet: bool, shards: str,
                split: str | None, limit: int | None, formats: tuple[str, ...], **options: Any) -> None:
    """Train-on-A / test-on-B top-1 (percent) matrix with a heatmap (paper 1, Fig. 5)."""
    from lossyvision.eval.classification import eval_matrix as run_matrix, matrix_markdown, plot_matrix

    labelled: dict[str, str] = {}
    for m in models:
        label, sep, ref = m.partition("=")
        if not sep:
            label, ref = Path(m).parent.name or m, m
        if label in labelled:
            raise click.UsageError(f"model label {label!r} given twice; use LABEL=REF to name them")
        labelled[label] = ref
    kw = {k: v for k, v in options.items() if v is not None}
    result = run_matrix(labelled, split_folder(shards, split or "val"), list(variant), progress=not quiet,
                        max_samples=limit, **kw)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "matrix.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    (outdir / "matrix.md").write_text(matrix_markdown(result))
    plot_matrix(result, outdir / "matrix.png", formats=formats)
    click.echo(matrix_markdown(result), nl=False)


train_classifier_main = train_classifier
train_expert_main = train_expert
eval_classifier_main = eval_classifier
eval_matrix_main = eval_matrix
