"""Deprecated: the restoration networks live in `lossyvision.nets` now (kept for one release)."""
