"""lossyvision: train and evaluate vision models on lossy-compressed images."""

__version__ = "0.2.0"
