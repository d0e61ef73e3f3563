"""Progress bars and progress log lines for the long-running stages (bottom layer: imports nothing
of the package, so pipelines, train and eval all use it).

Every long loop shows one tqdm bar on stderr with its rate and ETA. It is off when the caller is
quiet, and off when stderr is not a terminal (tqdm's `disable=None`), so log files and CI output
never fill with carriage returns; the periodic log lines (`rate_eta`) carry the same rate and ETA
for those. While a bar is drawn, log records bound for the console go through `tqdm.write`, so a
log line never cuts a bar in half.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["progress", "rate_eta"]


@contextlib.contextmanager
def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
             quiet: bool = False, unit: str = "it", initial: int = 0, leave: bool = False) -> Iterator[Any]:
    """A tqdm bar on stderr, closed on exit: iterate it (wrapping `iterable`) or call `bar.update(n)`.

    `quiet=True` turns it off; so does a stderr that is not a TTY. It shows `n/total`, the rate
    (`it/s`, or `s/it` when slower than one per second), the elapsed time and the ETA. `initial`
    is where a resumed run starts counting (the rate counts only what this process did). A
    disabled bar still iterates `iterable` and accepts `update`/`set_postfix` (they do nothing)."""
    from tqdm import tqdm

    bar = tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=sys.stderr,
               disable=True if quiet else None, dynamic_ncols=True, mininterval=0.5)
    with bar:
        if bar.disable:
            yield bar
        else:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():
                yield bar


def rate_eta(done: int, seconds: float, left: int | None = None, unit: str = "it") -> str:
    """`"2.41 it/s, 1:02:03 left"` for a log line: `done` units took `seconds` in this process (not
    counting what a resumed run did before), `left` are still to do (None: no ETA)."""
    from tqdm import tqdm

    if done <= 0 or seconds <= 0:
        return f"- {unit}/s"
    rate = done / seconds
    speed = f"{rate:.3g} {unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{unit}"
    if left is None:
        return speed
    return f"{speed}, {tqdm.format_interval(max(left, 0) / rate)} left"
