"""Evaluation: rate statistics, classification accuracy, segmentation mIoU."""
