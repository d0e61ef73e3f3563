"""The ``lossyvision`` group: every command of the stage modules under one name.

``lossyvision <command>`` and the standalone console scripts (``prepare-shards``, ``rate-report``,
...) are the same click commands, with the same options, logging and environment variables
(LOSSYVISION_<COMMAND>_<OPTION>). User errors end in one line on stderr and exit code 2 (bad
options) or 1 (a failure while running), never a traceback.
"""

from __future__ import annotations

import importlib

import click

from . import options as o
from .common import OneLineGroup
from .encode import codecs_cmd, encode_cmd
from .prepare import prepare_shards
from .report import rate_report

CONTEXT = o.CONTEXT


@click.group(context_settings={**o.CONTEXT, "auto_envvar_prefix": o.ENV_PREFIX}, cls=OneLineGroup)
@o.version_option
@o.verbose_option
@o.quiet_option(expose=False)
def main() -> None:
    """lossyvision: train and evaluate vision models on lossy-compressed images.

    Every option can also come from the environment as LOSSYVISION_<COMMAND>_<OPTION>, e.g.
    LOSSYVISION_PREPARE_SHARDS_WORKERS=4 (the same for the standalone prepare-shards).
    """


for _cmd in (codecs_cmd, encode_cmd, prepare_shards, rate_report):
    main.add_command(_cmd)

# The training stages need torch; the group still lists the offline commands where they cannot load.
_STAGES = {"lossyvision.cli.classifier": ("train_classifier", "train_expert", "eval_classifier", "eval_matrix"),
           "lossyvision.cli.segmentation": ("train_restoration", "restore_shards", "train_segmentation",
                                            "eval_segmentation", "seg_features", "seg_timing", "perceptual_index")}


def _register_stages() -> None:
    for mod, names in _STAGES.items():
        try:
            m = importlib.import_module(mod)
        except ImportError as e:
            if e.name != mod:
                raise
            continue
        for n in names:
            cmd = getattr(m, n, None)
            if isinstance(cmd, click.Command):
                main.add_command(cmd, n.replace("_", "-"))


_register_stages()

prepare_shards_main = prepare_shards
rate_report_main = rate_report
