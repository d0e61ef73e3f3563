"""lossyvision: train and evaluate vision models on lossy-compressed images."""

__version__ = "0.1.0"
