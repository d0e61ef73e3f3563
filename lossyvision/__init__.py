"""lossyvision: train and evaluate vision models on lossy-compressed images."""

__version__ = "0.1.0"

# The data API (lossyvision.data) is exported here lazily: `import lossyvision` must stay cheap and
# must not import torch (prepare-shards and rate-report run without it).
_DATA_API = ("ShardDataset", "PairedShardDataset", "make_loader", "to_device", "variant_dir", "ShardError")


def __getattr__(name: str):
    if name in _DATA_API:
        from lossyvision import data

        return getattr(data, name)
    if name == "data":
        import importlib

        return importlib.import_module("lossyvision.data")
    raise AttributeError(f"module 'lossyvision' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_DATA_API, "data"])
