"""Saving matplotlib figures in the formats a user asks for (PNG for screens, PDF/SVG for papers).

Shared by the evaluation plots (accuracy matrix, mIoU vs rate) and the rate report, so it sits
below both; it imports matplotlib only when a figure is made.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

FORMATS = ("png", "pdf", "svg")
DEFAULT_FORMATS = ("png",)


class FormatError(ValueError):
    """A --format value that is not one of FORMATS."""


def parse_formats(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """'png,pdf' (or a list of such strings) -> ('png', 'pdf'), in order, without repeats."""
    if text is None:
        return DEFAULT_FORMATS
    parts = [text] if isinstance(text, str) else list(text)
    out: list[str] = []
    for p in parts:
        for f in p.split(","):
            f = f.strip().lower().lstrip(".")
            if not f:
                continue
            if f not in FORMATS:
                raise FormatError(f"--format {f!r} is not one of {', '.join(FORMATS)}")
            if f not in out:
                out.append(f)
    if not out:
        raise FormatError(f"--format is empty; give one or more of {', '.join(FORMATS)}, e.g. png,pdf")
    return tuple(out)


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, stem: str | os.PathLike, formats: Iterable[str] = DEFAULT_FORMATS, dpi: int = 150) -> list[str]:
    """Write ``fig`` as STEM.<format> for each format, close it, and return the paths in format order."""
    plt = pyplot()
    stem = os.fspath(stem)
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    paths = []
    try:
        for f in parse_formats(list(formats)):
            path = f"{stem}.{f}"
            # no creation date in PDF/SVG: the same data give the same file
            meta = {"CreationDate": None} if f == "pdf" else {"Date": None} if f == "svg" else {}
            fig.savefig(path, dpi=dpi, metadata=meta, bbox_inches="tight")
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
