"""HDF5 cache of the frozen teacher's logits g(x), keyed by sample key.

Expert training's teacher sees only the clean crops, which are fixed (no augmentation), so
g(x) is the same every epoch: computing it once lets training read only the compressed
variant. The file records what produced it (architecture, a fingerprint of the teacher's
weights, the normalisation, the `orig` shards' sha256) and `open_cache` refuses a file that
does not match, so a stale cache cannot silently train the wrong thing.

Layout (format 3): `keys` (N variable-length UTF-8 strings, sorted), `logits` (N x C little-endian
float32, computed in fp32, exactly what the paper's fp32 teacher gave; 5.1 GB for ImageNet train's
1.28 M x 1000), attrs `meta` (JSON). `logits` is stored contiguous (no chunks, no filters) so a
reader maps it with `np.memmap` at the dataset's file offset instead of loading it: the ranks of
a node share one copy in the page cache, and a process holds only the keys' index in its own
memory. Format 2 was chunked (read whole into every rank's RAM); format 1 stored float16. An
older cache is rebuilt (a log line says so).

Build under DDP: each rank runs the teacher over its contiguous 1/world slice of the `orig`
samples (`split_range`, nothing dropped) into a part file; rank 0 merges the parts, sorted by
key, into the final file (written to a temporary name, then renamed). Two all_reduces of a
failure count separate the phases, so a rank that fails makes every rank fail at once instead
of leaving the others in a barrier until the process-group timeout.

Files are opened with `locking=False`: a cache is written once under a private temporary name
and read only after the atomic rename, and HDF5's file locks fail on NFS/Lustre mounts without
lock support ("unable to lock file").
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lossyvision.fingerprint import state_dict_sha256
from lossyvision.pipelines.stream import ShardStream, make_loader, read_variant, to_device
from lossyvision.progress import progress as progress_bar, rate_eta
from lossyvision.train import distributed

log = logging.getLogger(__name__)
FORMAT = "lossyvision-teacher-cache/3"
_MERGE_ROWS = 65536  # rows per block when rank 0 merges the parts: ~256 MB for 1000 classes


class CacheMismatch(ValueError):
    """The cache file was made by another model, normalisation or set of shards."""


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the state dict (names, shapes, bytes): identifies the teacher exactly (without the
    dtypes, as caches of format 1-3 were fingerprinted)."""
    return state_dict_sha256(model, dtypes=False)


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
    """A cache file's keys (an in-memory index) and logits (float32 N x C, usually memory-mapped):
    `lookup(keys) -> float32 B x C`."""

    def __init__(self, keys: list[str], logits: np.ndarray, meta: dict) -> None:
        self.index = {k: i for i, k in enumerate(keys)}
        self.mapped = isinstance(logits, np.memmap)  # the file's pages, shared by the processes of a node
        self.logits = torch.from_numpy(logits)
        self.meta = meta

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, keys: list[str] | tuple[str, ...], pin: bool = False) -> torch.Tensor:
        """The rows of `keys`; `pin`: in page-locked memory, for a `non_blocking` copy to CUDA."""
        try:
            rows = torch.tensor([self.index[k] for k in keys], dtype=torch.long)
        except KeyError as e:
            raise KeyError(f"sample {e.args[0]!r} is not in the teacher cache (built from other shards?)") from None
        if not pin:
            return self.logits.index_select(0, rows)
        out = torch.empty((len(rows), self.logits.shape[1]), dtype=self.logits.dtype, pin_memory=True)
        return torch.index_select(self.logits, 0, rows, out=out)


def _h5py():
    from lossyvision.extras import require

    return require("h5py", "train", "the teacher cache (--teacher-cache)")


def _read_meta(path: str | Path) -> dict:
    with _h5py().File(path, "r", locking=False) as f:
        return json.loads(f.attrs["meta"])


def _check_meta(path: str | Path, meta: dict, expect: dict) -> None:
    for field in ("format", "model", "weights_sha256", "source", "mean", "std"):
        if meta.get(field) != expect.get(field):
            raise CacheMismatch(f"teacher cache {path} was built with a different {field} "
                                f"({meta.get(field)!r} != {expect.get(field)!r}); delete it or pass another "
                                "--teacher-cache path")


def open_cache(path: str | Path, expect: dict) -> TeacherCache:
    """Open a cache and check it against `expect` (from `expected_meta`); CacheMismatch names the field.
    The logits are memory-mapped (copy-on-write, never written) where the layout allows it."""
    h5py = _h5py()
    with h5py.File(path, "r", locking=False) as f:
        meta = json.loads(f.attrs["meta"])
        _check_meta(path, meta, expect)
        keys = [k.decode() if isinstance(k, bytes) else k for k in f["keys"][:]]
        ds = f["logits"]
        offset = ds.id.get_offset() if ds.chunks is None and not ds.compression else None
        if offset is None or ds.dtype != np.dtype("<f4") or ds.size == 0:
            logits = ds[:].astype(np.float32)  # not mappable (an empty file, a foreign layout): read it
        else:
            logits = np.memmap(path, dtype="<f4", mode="c", offset=offset, shape=ds.shape)
    return TeacherCache(keys, logits, meta)


def _part_paths(path: Path, rank: int, world: int) -> tuple[Path, Path]:
    stem = f".{path.name}.part{rank}-of-{world}"
    return path.with_name(stem + ".npy"), path.with_name(stem + ".keys.json")


def _build_part(path: Path, teacher: nn.Module, orig_dir, meta: dict, dev: torch.device, batch_size: int,
                workers: int, progress: bool, max_pixels: int | None, info: distributed.DistInfo) -> None:
    """This rank's slice of the samples -> `<part>.npy` (rows in stream order) and `<part>.keys.json`."""
    mean, std = meta["mean"], meta["std"]
    # every sample exactly once over the ranks: contiguous slices, sizes differing by at most one
    ds = ShardStream(orig_dir, shuffle=False, rank=info.rank, world_size=info.world_size, drop_remainder=False,
                     max_pixels=max_pixels)
    loader = make_loader(ds, batch_size, workers, pin_memory=dev.type == "cuda")
    npy, keys_json = _part_paths(path, info.rank, info.world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    out: np.ndarray | None = None
    total, every, t0 = len(loader), max(1, len(loader) // 10), time.perf_counter()
    where = f"teacher cache {orig_dir}" + (f" (rank {info.rank}/{info.world_size})" if info.distributed else "")
    with progress_bar(loader, total=total, desc="teacher cache", quiet=not progress, leave=True) as bar:
        for i, (x, _, k) in enumerate(bar, 1):
            logits = teacher(to_device(x, dev, mean, std)).float().cpu().numpy()
            if out is None:
                out = np.lib.format.open_memmap(npy, mode="w+", dtype="<f4", shape=(len(ds), logits.shape[1]))
            out[len(keys):len(keys) + len(k)] = logits
            keys.extend(k)
            if i % every == 0 and i < total and info.main:
                log.info("%s: batch %d/%d (%s)", where, i, total, rate_eta(i, time.perf_counter() - t0, total - i))
    if out is None:  # no sample on this rank
        np.save(npy, np.zeros((0, 0), dtype="<f4"))
    else:
        out.flush()
        del out
    keys_json.write_text(json.dumps(keys))


def _merge_parts(path: Path, meta: dict, world: int) -> tuple[int, int]:
    """Rank 0: the parts -> the final file, rows sorted by key, in blocks (never the whole cache in RAM)."""
    h5py = _h5py()
    parts = [_part_paths(path, r, world) for r in range(world)]
    keys: list[str] = []
    arrays, starts = [], []
    for npy, keys_json in parts:
        k = json.loads(keys_json.read_text())
        a = np.load(npy, mmap_mode="r")
        starts.append(len(keys))
        keys.extend(k)
        arrays.append(a)
    classes = max((a.shape[1] for a in arrays if len(a)), default=0)
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    starts_arr = np.array(starts)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w", locking=False) as f:
        f.create_dataset("keys", data=np.array([keys[i] for i in order], dtype=object), dtype=h5py.string_dtype())
        # contiguous (no chunks, no filters: h5py's default without them), so readers can memory-map it
        ds = f.create_dataset("logits", shape=(len(keys), classes), dtype="<f4")
        for lo in range(0, len(order), _MERGE_ROWS):
            idx = order[lo:lo + _MERGE_ROWS]
            part = np.searchsorted(starts_arr, idx, side="right") - 1
            block = np.empty((len(idx), classes), dtype="<f4")
            for p in np.unique(part):
                sel = part == p
                block[sel] = arrays[p][idx[sel] - starts[p]]
            ds[lo:lo + len(idx)] = block
        f.attrs["meta"] = json.dumps(meta)
    del arrays
    tmp.replace(path)
    for npy, keys_json in parts:
        npy.unlink(missing_ok=True)
        keys_json.unlink(missing_ok=True)
    return len(keys), classes


def _agree(ok: bool, info: distributed.DistInfo, dev: torch.device, what: str) -> None:
    """A barrier that carries failures: every rank raises if any rank failed (its own error first)."""
    failed = torch.tensor([0.0 if ok else 1.0], device=dev)
    distributed.all_reduce_sum(failed, info)
    n = int(failed.item())
    if n and ok:
        raise RuntimeError(f"{what} failed on {n} of {info.world_size} ranks; see their log")


@torch.no_grad()
def build_cache(path: str | Path, teacher: nn.Module, orig_dir: str | Path, meta: dict,
                device: torch.device | str = "cpu", batch_size: int = 256, workers: int = 0,
                progress: bool = False, max_pixels: int | None = None,
                dist_info: distributed.DistInfo | None = None) -> TeacherCache:
    """Run `teacher` over every clean sample of `orig_dir` once and write the HDF5 cache atomically
    (a progress bar with `progress` on a terminal, and an INFO line per tenth of the batches).

    With `dist_info` of several ranks, call it on every rank: each computes its share (see the
    module docstring); every rank returns the merged cache."""
    info = dist_info or distributed.DistInfo()
    path, dev = Path(path), torch.device(device)
    teacher.eval()
    err: BaseException | None = None
    try:
        _build_part(path, teacher, orig_dir, meta, dev, batch_size, workers, progress and info.main,
                    max_pixels, info)
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
        err = e
    if info.distributed:
        _agree(err is None, info, dev, "the teacher-cache build")
    if err is not None:
        raise err
    if info.main:
        try:
            n, c = _merge_parts(path, meta, info.world_size)
            log.info("wrote teacher cache %s (%d samples x %d classes%s)", path, n, c,
                     f", built by {info.world_size} ranks" if info.distributed else "")
        except BaseException as e:  # noqa: BLE001
            err = e
    if info.distributed:
        _agree(err is None, info, dev, "merging the teacher cache")
    if err is not None:
        raise err
    return open_cache(path, meta)


def get_or_build(path: str | Path, teacher: nn.Module, model_spec: dict, orig_dir: str | Path, mean, std,
                 dist_info: distributed.DistInfo | None = None, **build_kwargs) -> TeacherCache:
    """Open `path` if it matches this teacher and these shards, build it if absent or of an older
    format. Under DDP call it on every rank (each builds its share; see `build_cache`)."""
    expect = expected_meta(model_spec, teacher, orig_dir, mean, std)
    info = dist_info or distributed.DistInfo()
    if Path(path).exists():
        found = _read_meta(path).get("format")
        if found == FORMAT:
            return open_cache(path, expect)
        if info.main:
            log.info("teacher cache %s has format %s; this lossyvision writes %s (memory-mapped logits): "
                     "rebuilding it", path, found, FORMAT)
        # every rank read the old meta before any part is written: rank 0 replaces it only after
        # the first all_reduce of build_cache
    return build_cache(path, teacher, orig_dir, expect, dist_info=info, **build_kwargs)
