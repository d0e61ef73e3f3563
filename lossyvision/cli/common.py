"""What every command shares: -v/-vv, and errors on one line.

click prints a usage error as four lines (usage, a hint, a blank line, the error); the command
classes here print it as the one line ``Error: <what to change>`` (exit code 2 still), for the
option parser's own errors and for those a command raises. ``--help`` still shows the usage.
:func:`user_errors` turns every other exception into one line too: exit 2 for a bad option or input,
1 for a failure while running; ``-vv`` logs the traceback first.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from typing import Any, Callable

import click

from ..storage import StorageError

# torch warns when --workers exceeds the CPUs it may use (4 DataLoader workers on a 2-CPU laptop); a
# command's stderr is kept for its one error line, and more workers than CPUs is only slower.
warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes", category=UserWarning)

log = logging.getLogger("lossyvision")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def verbose_option(f: Callable) -> Callable:
    """-v / -vv on every command (standalone scripts have no group to carry it)."""

    def cb(ctx: click.Context, param: click.Parameter, value: int) -> int:
        if value:
            setup_logging(value)
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
                return fn(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
                raise
            except KeyboardInterrupt:
                click.echo(interrupted, err=True)
                if "ray" in sys.modules and _running_as_command():
                    # After an interrupt, Ray's driver segfaulted at interpreter exit (exit -11) in 2 of
                    # 10 SIGINT trials even with ray.shutdown() done (tools/faults/kill_trials.py
                    # --signals INT --executor ray); everything is written and Ray is down by now, so
                    # skip the interpreter's teardown. Not when called in-process (a notebook, a test).
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
                if isinstance(e, failure()) or isinstance(e, (OSError, ValueError)):
                    raise click.ClickException(msg) from None
                if isinstance(e, MemoryError):
                    raise click.ClickException(f"out of memory; {memory_hint}") from None
                raise click.ClickException(f"{type(e).__name__}: {msg} (rerun with -vv for the traceback)") from None

        return wrapper

    return deco


class _OneLine:
    """Usage errors without click's usage preamble (see the module docstring)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)  # type: ignore[misc]
        except click.UsageError as e:
            e.ctx = None  # UsageError.show prints the usage and the --help hint only when it has a context
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except click.UsageError as e:  # a command's own, and (for a group) its subcommands' parse errors
            e.ctx = None
            raise


class OneLineCommand(_OneLine, click.Command):
    pass


class OneLineGroup(_OneLine, click.Group):
    command_class = OneLineCommand
