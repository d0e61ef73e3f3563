"""What every command shares: errors on one line.

click prints a usage error as four lines (usage, a hint, a blank line, the error); these classes
print it as the one line ``Error: <what to change>`` (exit code 2 still), for the option parser's
own errors and for those a command raises. ``--help`` still shows the usage.
"""

from __future__ import annotations

import warnings
from typing import Any

import click

# torch warns when --workers exceeds the CPUs it may use (4 DataLoader workers on a 2-CPU laptop); a
# command's stderr is kept for its one error line, and more workers than CPUs is only slower.
warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes", category=UserWarning)


def _one_line(e: click.UsageError) -> click.UsageError:
    e.ctx = None  # UsageError.show prints the usage and the --help hint only when it has a context
    return e


class OneLineCommand(click.Command):
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line(e) from None


class OneLineGroup(click.Group):
    command_class = OneLineCommand

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a subcommand's parse errors surface here
            raise _one_line(e) from None
