"""HDF5 cache of the frozen teacher's logits g(x), keyed by sample key.

Expert training's teacher sees only the clean crops, which are fixed (no augmentation), so
g(x) is the same every epoch: computing it once lets training read only the compressed
variant. The file records what produced it (architecture, a fingerprint of the teacher's
weights, the normalisation, the `orig` shards' sha256) and `open_cache` refuses a file that
does not match, so a stale cache cannot silently train the wrong thing.

Layout: `keys` (N variable-length UTF-8 strings, sorted), `logits` (N x C float32, computed in
fp32: 5.1 GB for ImageNet train's 1.28 M x 1000, small beside the shards, and exactly what the
paper's fp32 teacher gave; format 1 stored float16 from bf16 autocast), attrs `meta` (JSON).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lossyvision.pipelines.stream import ShardStream, make_loader, read_variant, to_device
from lossyvision.progress import progress as progress_bar, rate_eta

log = logging.getLogger(__name__)
FORMAT = "lossyvision-teacher-cache/2"


class CacheMismatch(ValueError):
    """The cache file was made by another model, normalisation or set of shards."""


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the state dict (names, shapes, bytes): identifies the teacher exactly."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def source_fingerprint(orig_dir: str | Path) -> dict:
    """Identity of the clean shards: dataset/split and each shard's name, count and sha256."""
    v = read_variant(orig_dir)
    shards = v.manifest.get("shards", [])
    h = hashlib.sha256(json.dumps([(s.get("name"), s.get("count"), s.get("sha256")) for s in shards]).encode())
    return {"dataset": v.manifest.get("dataset"), "split": v.manifest.get("split"),
            "variant": v.variant, "num_samples": v.num_samples, "shards_sha256": h.hexdigest()}


def expected_meta(model_spec: dict, teacher: nn.Module, orig_dir: str | Path, mean, std) -> dict:
    return {"format": FORMAT, "model": model_spec, "weights_sha256": weights_fingerprint(teacher),
            "source": source_fingerprint(orig_dir), "mean": list(mean), "std": list(std)}


class TeacherCache:
    """In-memory view of a cache file: `lookup(keys) -> float32 B x C` logits."""

    def __init__(self, keys: list[str], logits: np.ndarray, meta: dict) -> None:
        self.index = {k: i for i, k in enumerate(keys)}
        self.logits = torch.from_numpy(logits)
        self.meta = meta

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, keys: list[str] | tuple[str, ...]) -> torch.Tensor:
        try:
            rows = [self.index[k] for k in keys]
        except KeyError as e:
            raise KeyError(f"sample {e.args[0]!r} is not in the teacher cache (built from other shards?)") from None
        return self.logits[rows].float()


def _h5py():
    from lossyvision.extras import require

    return require("h5py", "train", "the teacher cache (--teacher-cache)")


def open_cache(path: str | Path, expect: dict) -> TeacherCache:
    """Load a cache and check it against `expect` (from `expected_meta`); CacheMismatch names the field."""
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        meta = json.loads(f.attrs["meta"])
        for field in ("format", "model", "weights_sha256", "source", "mean", "std"):
            if meta.get(field) != expect.get(field):
                raise CacheMismatch(f"teacher cache {path} was built with a different {field} "
                                    f"({meta.get(field)!r} != {expect.get(field)!r}); delete it or pass another "
                                    "--teacher-cache path")
        keys = [k.decode() if isinstance(k, bytes) else k for k in f["keys"][:]]
        logits = f["logits"][:]
    return TeacherCache(keys, logits, meta)


@torch.no_grad()
def build_cache(path: str | Path, teacher: nn.Module, orig_dir: str | Path, meta: dict,
                device: torch.device | str = "cpu", batch_size: int = 256, workers: int = 0,
                progress: bool = False, max_pixels: int | None = None) -> TeacherCache:
    """Run `teacher` over every clean sample of `orig_dir` once and write the HDF5 cache atomically
    (a progress bar with `progress` on a terminal, and an INFO line per tenth of the batches)."""
    import time

    h5py = _h5py()
    mean, std = meta["mean"], meta["std"]
    ds = ShardStream(orig_dir, shuffle=False, rank=0, world_size=1, max_pixels=max_pixels)
    loader = make_loader(ds, batch_size, workers)
    teacher.eval()
    keys: list[str] = []
    chunks: list[np.ndarray] = []
    dev = torch.device(device)
    total, every, t0 = len(loader), max(1, len(loader) // 10), time.perf_counter()
    with progress_bar(loader, total=total, desc="teacher cache", quiet=not progress, leave=True) as bar:
        for i, (x, _, k) in enumerate(bar, 1):
            logits = teacher(to_device(x, dev, mean, std))
            chunks.append(logits.float().cpu().numpy())
            keys.extend(k)
            if i % every == 0 and i < total:
                log.info("teacher cache %s: batch %d/%d (%s)", orig_dir, i, total,
                         rate_eta(i, time.perf_counter() - t0, total - i))
    order = np.argsort(np.array(keys, dtype=object))
    keys_sorted = [keys[i] for i in order]
    logits = np.concatenate(chunks)[order]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("keys", data=np.array(keys_sorted, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("logits", data=logits, chunks=(min(1024, len(logits)), logits.shape[1]))
        f.attrs["meta"] = json.dumps(meta)
    tmp.replace(path)
    log.info("wrote teacher cache %s (%d samples x %d classes)", path, *logits.shape)
    return TeacherCache(keys_sorted, logits, meta)


def get_or_build(path: str | Path, teacher: nn.Module, model_spec: dict, orig_dir: str | Path, mean, std,
                 **build_kwargs) -> TeacherCache:
    """Open `path` if it matches this teacher and these shards, build it if absent."""
    expect = expected_meta(model_spec, teacher, orig_dir, mean, std)
    if Path(path).exists():
        return open_cache(path, expect)
    return build_cache(path, teacher, orig_dir, expect, **build_kwargs)
