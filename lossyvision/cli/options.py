"""One definition per option concept, so every command spells it the same way.

| concept | spelling |
| --- | --- |
| parallel workers | ``-j, --workers N`` |
| batch size | ``-b, --batch-size N`` (per process), ``--global-batch N`` (over all processes) |
| shard root | ``--shards ROOT/<dataset>`` with ``--split`` (or ``--train-split``/``--val-split``) |
| variant | ``--variant`` |
| subset size | ``--limit N`` (``--val-limit N`` for the evaluation inside training) |
| codec parameter / option | ``--quality`` / ``--codec-opt [CODEC.]KEY=VALUE`` |
| output folder | ``--out DIR`` (also ``--output-dir``) |
| JSON on stdout | ``--json`` |
| resume | ``--resume [PATH]`` |
| mixed precision, device, seed | ``--amp/--no-amp``, ``--device``, ``--seed`` |
| logging | ``-q/--quiet``, ``-v/--verbose`` (count), ``--version`` |

Each option is a :class:`VocabOption`: it shows its default in ``--help``, it may carry the old
spellings it replaces (``old=``; the command class rewrites them, with one deprecation warning), and
it reads ``LOSSYVISION_<COMMAND>_<OPTION>`` from the environment, named after its long spelling.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Sequence

import click

from .common import QUIET_KEY, VERBOSE_KEY, OneLineCommand

F = Callable[..., Any]
CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
ENV_PREFIX = "LOSSYVISION"


class VocabOption(click.Option):
    """A click option with its deprecated spellings and an environment variable named after it."""

    def __init__(self, param_decls: Sequence[str] | None = None, old: Sequence[str] = (), aliases: Sequence[str] = (),
                 was_value: str | None = None, **attrs: Any) -> None:
        plain_flag = attrs.get("is_flag") and "/" not in "".join(param_decls or ())
        if "show_default" not in attrs and attrs.get("default") is not None and not plain_flag and not attrs.get("count"):
            attrs["show_default"] = True
        super().__init__(param_decls, **attrs)
        self.old = tuple(old)  # deprecated spellings: rewritten with a warning
        self.aliases = tuple(aliases)  # other spellings (torchvision's), rewritten silently, named in the help
        self.was_value = was_value  # a switch that used to take a value: the error for `--opt VALUE`

    @property
    def env_suffix(self) -> str:
        """OPTION of LOSSYVISION_<COMMAND>_<OPTION>: the long spelling, not the Python name."""
        longs = [o for o in self.opts if o.startswith("--")]
        return (longs[0] if longs else self.opts[0]).lstrip("-").upper().replace("-", "_")

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str):  # click would wrap a described default in parentheses
            extra["default"] = self.show_default
        if self.required:
            extra.pop("default", None)
        return extra

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        if self.envvar is None and self.allow_from_autoenv and ctx.auto_envvar_prefix:
            return os.environ.get(f"{ctx.auto_envvar_prefix}_{self.env_suffix}") or None
        return super().resolve_envvar_value(ctx)


option = functools.partial(click.option, cls=VocabOption)


def env_prefix(command_name: str) -> str:
    """LOSSYVISION_PREPARE_SHARDS for prepare-shards: the same under ``lossyvision`` and standalone."""
    return f"{ENV_PREFIX}_{command_name.upper().replace('-', '_')}"


# -- every command: --version, -v, -q --------------------------------------------------------


def _verbose_cb(ctx: click.Context, param: click.Parameter, value: int) -> int:
    ctx.meta[VERBOSE_KEY] = max(value or 0, ctx.meta.get(VERBOSE_KEY, 0))
    return value


def _quiet_cb(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta[QUIET_KEY] = bool(value) or ctx.meta.get(QUIET_KEY, False)  # the group's -q counts for its command
    return ctx.meta[QUIET_KEY]


def verbose_option(f: F, shown: str = "0: warnings") -> F:
    return option("-v", "--verbose", count=True, expose_value=False, callback=_verbose_cb, show_default=shown,
                  help="Log more: -v info, -vv debug and the traceback of an error.")(f)


def quiet_option(expose: bool = True) -> Callable[[F], F]:
    return option("-q", "--quiet", is_flag=True, expose_value=expose, callback=_quiet_cb,
                  help="No progress bars; log warnings only.")


def version_option(f: F) -> F:
    return click.version_option(package_name="lossyvision", help="Print the version and exit.")(f)


def _common_options(f: F, expose_quiet: bool, log_level: int) -> F:
    """--version, -q, -v, placed after the command's own options in --help."""
    own = list(getattr(f, "__click_params__", []))
    f.__click_params__ = []  # type: ignore[attr-defined]
    shown = "0: info" if log_level <= logging.INFO else "0: warnings"
    f = verbose_option(quiet_option(expose=expose_quiet)(version_option(f)), shown)
    f.__click_params__ = f.__click_params__ + own  # type: ignore[attr-defined]
    return f


def command(name: str, *, quiet: bool = True, log_level: int = logging.WARNING, **attrs: Any) -> Callable[[F], click.Command]:
    """A command with the shared settings: -h, --version, -v/-vv, -q (passed to the function as
    ``quiet`` unless ``quiet=False``), one-line errors, and options from LOSSYVISION_<COMMAND>_*.
    ``log_level``: what it logs without -v/-q (training logs its progress lines at INFO)."""

    def deco(f: F) -> click.Command:
        f = _common_options(f, quiet, log_level)
        settings = {**CONTEXT, "auto_envvar_prefix": env_prefix(name)}
        return click.command(name, cls=OneLineCommand, context_settings=settings, log_level=log_level, **attrs)(f)

    return deco


# -- value checks ----------------------------------------------------------------------------


def positive(lo: int = 1) -> click.IntRange:
    return click.IntRange(min=lo)


POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)


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


def name_value(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
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


def floats3(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float, float] | None:
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
    return parts  # type: ignore[return-value]


_BARE = {"", "1", "true", "yes", "on", "last"}


def resume_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """None (no resume), "last" (bare --resume: the run's last checkpoint) or a PATH."""
    if value is None:
        return None
    if value.strip().lower() in _BARE:
        return "last"
    if value.strip().lower() in {"0", "false", "no", "off"}:
        return None
    return value


# -- the vocabulary --------------------------------------------------------------------------


def workers(help: str = "DataLoader worker processes per process.", default: int | None = None,
            shown: str | bool = True, lo: int = 0, old: Sequence[str] = ()) -> Callable[[F], F]:
    return option("-j", "--workers", "workers", type=positive(lo), default=default, show_default=shown, metavar="N",
                  help=help, old=old)


def batch_size(help: str, shown: str = "none: the global batch (--global-batch)") -> Callable[[F], F]:
    return option("-b", "--batch-size", "batch_size", type=positive(), default=None, show_default=shown, metavar="N",
                  help=help)


PER_PROCESS_HELP = ("Images per step in each process: under torchrun every one of its WORLD_SIZE processes takes N "
                    "(N x WORLD_SIZE in all). Not with --global-batch.")


def global_batch(shown: str) -> Callable[[F], F]:
    """``--global-batch N``: images per optimiser step over all processes (see :func:`batches`)."""
    return option("--global-batch", "global_batch", type=positive(), default=None, show_default=shown, metavar="N",
                  help="Images per optimiser step over all processes: each of torchrun's WORLD_SIZE processes takes "
                       "N / WORLD_SIZE (N must be a multiple of it; 1 process: N). The lr is not rescaled: it is "
                       "the paper's for the paper's batch; scale it yourself for another N. Not with -b.")


def batches(batch_size: int | None, global_batch: int | None, default: int, default_is: str) -> dict[str, int]:
    """The config's batch fields from -b and --global-batch: -b N is per process; without it the batch
    is global: --global-batch N, else ``default`` (the preset's or the config's batch, the paper's),
    so ``torchrun --nproc-per-node 8`` keeps the paper's batch instead of multiplying it by 8.
    ``default_is`` names where ``default`` comes from, for the error when it does not divide."""
    if batch_size is not None and global_batch is not None:
        raise click.UsageError(f"{_given('-b/--batch-size', 'batch_size')} sets the batch per process and "
                               f"{_given('--global-batch', 'global_batch')} over all processes; give one of them")
    if batch_size is not None:
        return {"batch_size": batch_size}
    world = os.environ.get("WORLD_SIZE", "1").strip()
    world_size = int(world) if world.isdigit() and int(world) > 0 else 1  # a bad WORLD_SIZE is the trainer's to refuse
    if global_batch is None:
        global_batch = default
        if global_batch % world_size:
            raise click.UsageError(f"{default_is} batch {global_batch} is the global batch and does not divide over "
                                   f"{world_size} processes; give --global-batch N (a multiple of {world_size}) or "
                                   "-b N (per process)")
    from lossyvision.train.distributed import per_process_batch

    per_process_batch(global_batch, world_size)  # the trainer checks it too; here it fails before any set-up
    return {"global_batch": global_batch}


def _given(spelling: str, name: str) -> str:
    """An option's spelling, naming the environment variable when the value came from there."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.get_parameter_source(name) is click.core.ParameterSource.ENVIRONMENT:
        opt = next((p for p in ctx.command.params if p.name == name), None)
        if isinstance(opt, VocabOption):
            return f"{spelling} (from {ctx.auto_envvar_prefix}_{opt.env_suffix})"
    return spelling


def shards(help: str = "ROOT/<dataset> holding <split>/<variant>/ folders (a path or an fsspec URL such as "
                       "s3://bucket/root).", required: bool = True) -> Callable[[F], F]:
    return option("--shards", "shards", type=str, required=required, default=None, metavar="ROOT/DATASET",
                  show_default="required" if required else "none", help=help)


def split(shown: str, help: str = "Split folder under --shards.", old: Sequence[str] = (),
          checked_by_library: bool = False) -> Callable[[F], F]:
    return option("--split", "split", default=None, callback=None if checked_by_library else name_value,
                  show_default=shown, help=help, old=old)


def train_split(shown: str = "train") -> Callable[[F], F]:
    return option("--train-split", "train_split", default=None, callback=name_value, show_default=shown,
                  help="Split of the training samples.")


def val_split(shown: str = "val", old: Sequence[str] = ()) -> Callable[[F], F]:
    return option("--val-split", "val_split", default=None, callback=name_value, show_default=shown,
                  help="Split of the validation / final-evaluation samples.", old=old)


def variant(help: str, shown: str, multiple: bool = False, required: bool = False,
            old: Sequence[str] = ()) -> Callable[[F], F]:
    return option("--variant", "variant", multiple=multiple, required=required, default=None, callback=name_value,
                  show_default=shown, help=help, old=old)


def limit(help: str, old: Sequence[str] = (), name: str = "--limit", checked_by_library: bool = False) -> Callable[[F], F]:
    return option(name, name.lstrip("-").replace("-", "_"), type=int if checked_by_library else positive(), default=None, metavar="N",
                  show_default="all", help=help, old=old)


def quality(help: str, multiple: bool = False) -> Callable[[F], F]:
    return option("--quality", "quality", multiple=multiple, default=None, old=("--q",),
                  show_default="none" if multiple else "the codec's default", help=help)


def codec_opt(help: str, old: Sequence[str] = ()) -> Callable[[F], F]:
    return option("--codec-opt", "codec_opt", multiple=True, metavar="[CODEC.]KEY=VALUE", show_default="none",
                  help=help, old=old)


def out(help: str, required: bool = False, shown: str | None = None) -> Callable[[F], F]:
    return option("--out", "out", required=required, default=None, type=str, callback=out_value, metavar="DIR",
                  aliases=("--output-dir",), show_default=shown or ("required" if required else "none"),
                  help=f"{help} Also spelled --output-dir.")


def json_switch(help: str = "Print JSON on stdout instead of a table.", was_value: str | None = None) -> Callable[[F], F]:
    return option("--json", "json_out", is_flag=True, help=help, was_value=was_value)


def resume(help: str) -> Callable[[F], F]:
    return option("--resume", "resume", is_flag=False, flag_value="last", default=None, callback=resume_value,
                  metavar="[PATH]", show_default="off", help=help)


def amp(shown: str, help: str = "Mixed precision (autocast) on CUDA; --no-amp: full fp32.") -> Callable[[F], F]:
    return option("--amp/--no-amp", "amp", default=None, show_default=shown, help=help)


def device(shown: str = "auto: cuda if available, else cpu") -> Callable[[F], F]:
    return option("--device", "device", default=None, callback=device_value, show_default=shown,
                  help="cpu, cuda, cuda:N, mps or auto.")


def seed(shown: str = "0") -> Callable[[F], F]:
    return option("--seed", "seed", type=int, default=None, show_default=shown,
                  help="Seed of the shuffling, augmentations and initialisation.")


def deterministic() -> Callable[[F], F]:
    return option("--deterministic", "deterministic", is_flag=True, default=None,
                  help="Deterministic kernels: cudnn.benchmark off, CUBLAS_WORKSPACE_CONFIG set (slower on CUDA); "
                       "otherwise cudnn.benchmark is on for the fixed training shapes.")


def overwrite(help: str = "Replace the run in --out (its checkpoints and log).") -> Callable[[F], F]:
    return option("--overwrite", "overwrite", is_flag=True, default=None, help=help)


def max_pixels(help: str) -> Callable[[F], F]:
    from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS

    return option("--max-pixels", "max_pixels", type=positive(), default=DEFAULT_MAX_PIXELS, show_default=True,
                  metavar="N", help=help)


def _formats_value(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from lossyvision.eval.figures import FormatError, parse_formats

    try:
        return parse_formats(value)
    except FormatError as e:
        raise click.UsageError(str(e)) from None


def formats() -> Callable[[F], F]:
    return option("--format", "formats", default="png", metavar="FORMATS", callback=_formats_value,
                  help="Figure formats, comma-separated: png, pdf, svg (e.g. --format png,pdf).")


SHARD_MAX_PIXELS = ("A shard's image whose header holds more pixels (width x height) is an error naming the shard and "
                    "the sample, before any decode.")
