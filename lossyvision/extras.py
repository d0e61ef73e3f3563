"""Optional dependencies: import one, or stop with one line that names the extra installing it.

Bottom layer of the package (imports nothing else of lossyvision). The core install (codecs,
encode, prepare-shards, rate-report, the shard loaders) never imports what an extra brings; a
command that needs it calls :func:`require` where it is used, and the CLI prints the
:class:`MissingExtra` message as its one error line (exit 1).
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: CompressAI is not declared by the ``msh`` extra (setup.cfg says why): the second step is by hand.
COMPRESSAI_INSTALL = "pip install 'lossyvision[msh]' && pip install --no-deps compressai==1.2.8 (see the README)"


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the pip command that installs it."""


def install_hint(extra: str) -> str:
    return f"pip install 'lossyvision[{extra}]'"


def require(module: str, extra: str, what: str, package: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or MissingExtra: "<what> needs <package>: pip install ...".

    ``package`` is the distribution's name on PyPI (default: ``module``). When the module is there but
    one of its own imports fails, that error is part of the message, since the extra reinstalls both.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        cause = "" if e.name in (top, module) else f" ({e})"
        raise MissingExtra(f"{what} needs {package or top}{cause}: {install_hint(extra)}", name=module) from e
