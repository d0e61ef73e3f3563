"""Network definitions at the bottom of the package: they import only torch and torchvision, so the
pipelines (restore-shards), training and evaluation can all build them without an arrow going up.
Each module is imported on its own (``lossyvision.nets.restoration``, ``lossyvision.nets.segmentation``,
which also needs segmentation-models-pytorch, an extra); this package file imports none of them."""
