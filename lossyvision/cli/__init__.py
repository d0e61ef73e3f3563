"""The command line: a thin layer of click commands over the library API.

``lossyvision <command>`` and the standalone scripts (``prepare-shards``, ``train-expert``, ...) are
the same click commands; every entry point of setup.cfg is exported here.
"""

from .core import main, prepare_shards_main, rate_report_main
from .classifier import eval_classifier_main, eval_matrix_main, train_classifier_main, train_expert_main
from .segmentation import eval_segmentation_main, restore_shards_main, train_restoration_main, train_segmentation_main

__all__ = ["main", "prepare_shards_main", "rate_report_main", "train_classifier_main", "train_expert_main",
           "eval_classifier_main", "eval_matrix_main", "train_restoration_main", "restore_shards_main",
           "train_segmentation_main", "eval_segmentation_main"]
