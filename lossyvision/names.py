"""Names that become path components: datasets, splits and variants.

Every command checks them here, in one place, before anything is created: a name is one path
component of at most 128 characters from ``[A-Za-z0-9._+=-]``, starting with a letter or digit,
so it can never be empty, absolute, ``..`` or hold a separator. Codec specs (``jpeg-q10``,
``j2k-r200-nomct``, ``bpg-bpp0.05``) and restored variants (``bpg-qp41+restored``) all fit.
"""

from __future__ import annotations

import re

__all__ = ["NAME_PATTERN", "NameError_", "check_name", "is_valid_name"]

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}"
_NAME = re.compile(NAME_PATTERN)


class NameError_(ValueError):
    """A dataset, split or variant name that is not a single safe path component."""


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


def check_name(what: str, name: object) -> str:
    """Return ``name`` if it is a safe single path component, else raise :class:`NameError_`
    whose message names the option (``what``, e.g. ``--split``) and the rule."""
    if is_valid_name(name):
        return name  # type: ignore[return-value]
    shown = repr(name) if isinstance(name, str) else type(name).__name__
    raise NameError_(
        f"{what} {shown} is not a valid name: use 1-128 characters from A-Z a-z 0-9 . _ + = -, starting with a letter "
        "or digit, with no '/' and no '..'"
    )
