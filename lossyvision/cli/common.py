"""What every command shares: -v/-vv/-q logging, old option spellings, and errors on one line.

click prints a usage error as four lines (usage, a hint, a blank line, the error); the command
classes here print it as the one line ``Error: <what to change>`` (exit code 2 still), for the
option parser's own errors and for those a command raises. ``--help`` still shows the usage.
:func:`user_errors` turns every other exception into one line too: exit 2 for a bad option or input,
1 for a failure while running; ``-vv`` logs the traceback first.

An option's other spellings (its ``old`` and ``aliases`` attributes, see options.py) are rewritten
to its own before parsing; each deprecated one used prints one line on stderr,
``warning: --old is deprecated; use --new``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from typing import Any, Callable

import click

from ..extras import MissingExtra
from ..storage import StorageError

# torch warns when --workers exceeds the CPUs it may use (4 DataLoader workers on a 2-CPU laptop); a
# command's stderr is kept for its one error line, and more workers than CPUs is only slower.
warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes", category=UserWarning)

log = logging.getLogger("lossyvision")


VERBOSE_KEY = "lossyvision.verbose"
QUIET_KEY = "lossyvision.quiet"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Stderr(logging.StreamHandler):
    """Writes to the sys.stderr of the moment (a test runner or a notebook may swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(verbose: int, quiet: bool = False, default: int = logging.WARNING) -> None:
    """One logging set-up for ``lossyvision CMD`` and the standalone ``CMD``: -vv debug, -v info,
    -q warnings only, else ``default``; lines go to stderr."""
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING if quiet else default
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(h)
    h = _Stderr()
    h.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(h)
    root.setLevel(level)


def verbose_option(f: Callable) -> Callable:
    """-v / -vv (kept for code outside the CLI package; its commands use options.verbose_option)."""

    def cb(ctx: click.Context, param: click.Parameter, value: int) -> int:
        ctx.meta[VERBOSE_KEY] = max(value or 0, ctx.meta.get(VERBOSE_KEY, 0))
        return value

    return click.option("-v", "--verbose", count=True, expose_value=False, callback=cb,
                        help="Log more (-v info, -vv debug and the traceback of an error).")(f)


def debugging() -> bool:
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line; for an error a DataLoader worker raised, its original message
    (torch replaces it with "Caught X in DataLoader worker process N." and the worker's traceback)."""
    if isinstance(e, KeyError) and e.args:
        msg = str(e.args[0])
    elif isinstance(e, OSError) and e.strerror and not isinstance(e, StorageError):  # StorageError's own text names the path
        msg = f"{e.filename}: {e.strerror}" if getattr(e, "filename", None) else e.strerror
    else:
        msg = str(e)
        if "DataLoader worker process" in msg:  # only then: the stream module imports torch
            from ..pipelines.stream import worker_error_message

            msg = worker_error_message(e)
    lines = msg.strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _shutdown_ray() -> None:
    from ..pipelines.raypool import ray_started, shutdown_ray

    if ray_started():
        shutdown_ray(as_interrupt=True)


def _running_as_command() -> bool:
    """True in a console script or ``python -m lossyvision[.cli]``, not when a notebook calls the command."""
    prog = os.path.basename(sys.argv[0]) if sys.argv else ""
    return prog == "__main__.py" and "lossyvision" in sys.argv[0] or prog in _COMMANDS


_COMMANDS = {"lossyvision", "prepare-shards", "rate-report", "train-classifier", "train-expert", "eval-classifier", "eval-matrix",
             "train-restoration", "restore-shards", "train-segmentation", "eval-segmentation"}


def user_errors(usage: Callable[[], tuple[type, ...]], failure: Callable[[], tuple[type, ...]],
                interrupted: str, memory_hint: str) -> Callable[[Callable], Callable]:
    """A decorator: exceptions of the ``usage()`` types exit 2, of the ``failure()`` types (and
    OSError, MemoryError, ValueError) exit 1, anything else exits 1 naming its type, each as one line;
    Ctrl-C prints ``interrupted`` and exits 130. The type lists are callables so that a command's
    imports stay lazy (prepare-shards never imports torch)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                out = fn(*args, **kwargs)
                if "ray" in sys.modules and _running_as_command():
                    # Shut the job's Ray down here, where a Ctrl-C or SIGTERM meanwhile is held until Ray
                    # is down and then ends the command as below ("interrupted", exit 130). Left to Ray's atexit hook, a
                    # signal that came as the job ended cut ray.shutdown short and the interpreter's
                    # teardown then segfaulted (exit -11; tools/faults/kill_trials.py --signals INT
                    # --executor ray). Not when called in-process: the caller's Ray stays up.
                    _shutdown_ray()
                return out
            except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
                raise
            except KeyboardInterrupt:
                click.echo(interrupted, err=True)
                if "ray" in sys.modules and _running_as_command():
                    # After an interrupt, Ray's driver segfaulted at interpreter exit (exit -11) in 2 of
                    # 10 SIGINT trials even with ray.shutdown() done (tools/faults/kill_trials.py
                    # --signals INT --executor ray); everything is written by now, so shut Ray down
                    # (it is still up when the signal came in ray.init or after the tasks were done:
                    # without it the raylet's workers and agents outlive the job) and skip the
                    # interpreter's teardown. Not when called in-process (a notebook, a test).
                    try:
                        _shutdown_ray()
                    except BaseException:  # a second signal meanwhile: the first one ends it all the same
                        pass
                    sys.stdout.flush()
                    sys.stderr.flush()
                    logging.shutdown()
                    os._exit(130)
                sys.exit(130)
            except Exception as e:
                if debugging():
                    log.debug("traceback of the error below", exc_info=True)
                msg = one_line(e)
                # free the frames now: a DataLoader iterator they hold shuts its workers down here, not at a later fork
                e.__traceback__ = None
                if isinstance(e, usage()):
                    raise click.UsageError(msg) from None
                if isinstance(e, failure()) or isinstance(e, (OSError, ValueError, MissingExtra)):
                    raise click.ClickException(msg) from None
                if isinstance(e, MemoryError):
                    raise click.ClickException(f"out of memory; {memory_hint}") from None
                raise click.ClickException(f"{type(e).__name__}: {msg} (rerun with -vv for the traceback)") from None

        return wrapper

    return deco


def spelling_map(params: list[click.Parameter]) -> dict[str, tuple[str, str | None]]:
    """other spelling -> (the option's first long spelling, the deprecation warning or None)."""
    out: dict[str, tuple[str, str | None]] = {}
    for p in params:
        longs = [x for x in p.opts if x.startswith("--")]
        for o in getattr(p, "old", ()):
            out[o] = (longs[0], f"warning: {o} is deprecated; use {'/'.join(p.opts)}")
        for o in getattr(p, "aliases", ()):
            out[o] = (longs[0], None)
    return out


def refuse_old_values(params: list[click.Parameter], args: list[str]) -> None:
    """A switch that used to take a value (``--json FILE``): its own one-line error, not click's
    "unexpected extra argument". Only for commands without arguments, where a bare word after the
    switch can only be such a value."""
    if any(isinstance(p, click.Argument) for p in params):
        return
    hints = {o: p.was_value for p in params if getattr(p, "was_value", None) for o in p.opts}
    for i, a in enumerate(args):
        if a == "--":
            return
        name, eq, _ = a.partition("=")
        if name in hints and (eq or (i + 1 < len(args) and not args[i + 1].startswith("-"))):
            raise click.UsageError(hints[name])


def rewrite_spellings(params: list[click.Parameter], args: list[str]) -> list[str]:
    """Other spellings (``--old V``, ``--old=V``) become the option's own; one warning line per
    deprecated spelling used."""
    table = spelling_map(params)
    out: list[str] = []
    warned: set[str] = set()
    for i, a in enumerate(args):
        if a == "--":
            out.extend(args[i:])
            break
        name, eq, value = a.partition("=")
        if name in table:
            new, warning = table[name]
            if warning and name not in warned:
                click.echo(warning, err=True)
                warned.add(name)
            a = new + eq + value
        out.append(a)
    refuse_old_values(params, out)
    return out


class _OneLine:
    """Usage errors without click's usage preamble (see the module docstring), old spellings
    rewritten, and logging set up (the group's -v/-q count for its command) before the command runs."""

    log_level = logging.WARNING

    def __init__(self, *args: Any, log_level: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        if log_level is not None:
            self.log_level = log_level

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, rewrite_spellings(self.params, list(args)))  # type: ignore[misc]

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)  # type: ignore[misc]
        except click.UsageError as e:
            e.ctx = None  # UsageError.show prints the usage and the --help hint only when it has a context
            raise

    def invoke(self, ctx: click.Context) -> Any:
        setup_logging(ctx.meta.get(VERBOSE_KEY, 0), ctx.meta.get(QUIET_KEY, False), self.log_level)
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except click.UsageError as e:  # a command's own, and (for a group) its subcommands' parse errors
            e.ctx = None
            raise


class OneLineCommand(_OneLine, click.Command):
    pass


class OneLineGroup(_OneLine, click.Group):
    command_class = OneLineCommand
