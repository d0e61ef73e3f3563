"""Training-time streaming of lossyvision shards (see docs/shards.md).

`ShardStream` reads shard i of a codec variant, and optionally shard i of `orig` in lockstep,
decodes in DataLoader workers and yields **uint8** CHW tensors; normalisation happens on the
device (`to_device`), which halves the CPU cost per sample compared with float tensors.

Splitting: each epoch the shard order is permuted (seeded by `seed + epoch`), the permuted
shards are laid end to end and cut into `world_size` equal contiguous ranges of
`num_samples // world_size` samples (the remainder is dropped, as DistributedSampler with
`drop_last=True` does), and each rank's range is cut again among its DataLoader workers. Every
rank therefore sees the same number of samples and, with the same batch size and worker count,
the same number of batches, which DDP needs to avoid hanging on the last all-reduce.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import random
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lossyvision import storage

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_LABEL = -1

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's split: key up to the first dot


class ShardError(RuntimeError):
    """A shard is unreadable, truncated, or disagrees with its manifest or with `orig`."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int


@dataclass(frozen=True)
class VariantInfo:
    """What a loader needs from `<variant_dir>/manifest.json`."""

    root: str                 # the variant folder: a local path or an fsspec URL
    variant: str
    spec: str | None          # codec spec (`jpeg-q10`); None for `orig`
    ext: str                  # member holding the image: `png` for orig, the codec ext otherwise
    shards: tuple[ShardInfo, ...]
    task: str
    classes: tuple[str, ...] | None
    manifest: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(s.count for s in self.shards)

    def shard_path(self, name: str) -> str:
        """Path or URL of one of this variant's shards."""
        return storage.join(self.root, name)


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if storage.is_remote(path) else os.path.basename(os.path.normpath(path))


def read_variant(variant_dir: str | os.PathLike) -> VariantInfo:
    """Parse a variant's manifest.json (local path or URL); raise FileNotFoundError/ValueError naming the problem."""
    root = os.fspath(variant_dir)
    path = storage.join(root, "manifest.json")
    if not storage.isfile(path):
        raise FileNotFoundError(f"no manifest.json in {root} (is this a variant folder written by prepare-shards?)")
    m = json.loads(storage.read_text(path))
    codec = m.get("codec")
    done = [s for s in m.get("shards", []) if s]  # unfinished shards of an interrupted job are null
    shards = tuple(ShardInfo(s["name"], int(s["count"])) for s in sorted(done, key=lambda s: s["name"]))
    if not shards:
        raise ValueError(f"{path}: manifest lists no shards")
    if not m.get("complete", True):
        log.warning("%s: manifest is not marked complete; reading the %d shards it lists", path, len(shards))
    classes = m.get("classes")
    return VariantInfo(
        root=root, variant=m.get("variant", _basename(root)),
        spec=codec["spec"] if codec else None, ext=codec["ext"] if codec else m.get("orig_format", "png"),
        shards=shards, task=m.get("task", "none"),
        classes=tuple(classes) if classes else None, manifest=m)


def check_aligned(a: VariantInfo, b: VariantInfo) -> None:
    """Raise ShardError unless the two variants are partitioned identically (same names and counts)."""
    if [(s.name, s.count) for s in a.shards] != [(s.name, s.count) for s in b.shards]:
        raise ShardError(f"variants {a.root} and {b.root} are not partitioned identically "
                         f"({len(a.shards)} vs {len(b.shards)} shards or different counts); "
                         "prepare them from the same source list with the same --shard-size")


def iter_tar_samples(path: str | os.PathLike) -> Iterator[dict]:
    """Yield `{"__key__": key, ext: bytes, ...}` groups from a tar (local path or URL), in file order."""
    path = os.fspath(path)
    current: dict | None = None
    try:
        with storage.open_read(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                m = _KEY_EXT.match(member.name)
                if m is None:
                    raise ShardError(f"{path}: member {member.name!r} has no key.ext form")
                key, ext = m.group(1), m.group(2)
                data = tar.extractfile(member).read()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key}
                current[ext] = data
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ShardError(f"{path}: truncated or corrupt tar ({type(e).__name__}: {e})") from e
    if current is not None:
        yield current


def decode_png(data: bytes, mode: str = "RGB") -> np.ndarray:
    """PNG -> uint8 HxWx3 (mode RGB) or HxW (mode L), writable (torch refuses read-only buffers).

    imagecodecs (libpng) decodes a 224x224 crop in 1.3 ms against Pillow's 1.8 ms
    (tools/bench/train.py); Pillow stays the fallback for the modes it must convert."""
    import imagecodecs

    a = imagecodecs.png_decode(data)
    if a.dtype == np.uint8 and ((mode == "RGB" and a.ndim == 3 and a.shape[2] == 3) or (mode == "L" and a.ndim == 2)):
        return a
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert(mode))


def decode_lossless(data: bytes, ext: str) -> np.ndarray:
    """An `orig` image (or a restored one): PNG, or QOI when prepared with --orig-format qoi."""
    if ext == "qoi":
        import imagecodecs

        return imagecodecs.qoi_decode(data)
    return decode_png(data)


def _as_chw(rgb: np.ndarray) -> torch.Tensor:
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    # a permuted HWC view: already channels_last in memory, which is what the model wants
    if not (rgb.flags.writeable and rgb.flags.c_contiguous):
        rgb = np.array(rgb)
    return torch.from_numpy(rgb).permute(2, 0, 1)


def _label(sample: dict, where: str):
    if "cls" in sample:
        return int(sample["cls"])
    if "seg.png" in sample:
        return torch.from_numpy(decode_png(sample["seg.png"], mode="L"))
    return NO_LABEL


def split_range(start: int, stop: int, parts: int, index: int) -> tuple[int, int]:
    """Contiguous part `index` of `parts` of [start, stop), sizes differing by at most one."""
    n = stop - start
    return start + n * index // parts, start + n * (index + 1) // parts


class ShardStream(IterableDataset):
    """Stream `(x, x_tilde, y, key)` (paired) or `(x_tilde, y, key)` (single) from shards.

    x, x_tilde: uint8 3xHxW; y: int class (`cls`), uint8 HxW map (`seg.png`) or -1.
    `variant_dir` is the folder of one variant (its manifest.json and shards); `orig_dir`, when
    given, is the `orig` folder of the same (dataset, split), read in lockstep. Call
    `set_epoch(e)` before each epoch (workers must not be persistent, so they see it).
    """

    def __init__(self, variant_dir: str | os.PathLike, orig_dir: str | os.PathLike | None = None, *,
                 shuffle: bool = False, seed: int = 0, buffer_size: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 drop_remainder: bool | None = None) -> None:
        super().__init__()
        self.variant = read_variant(variant_dir)
        self.orig = read_variant(orig_dir) if orig_dir is not None else None
        if self.orig is not None:
            check_aligned(self.orig, self.variant)
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_size = buffer_size if shuffle else 0
        if rank is None or world_size is None:
            rank, world_size = _dist_rank_world()
        self.rank, self.world_size = rank, world_size
        # with one rank nothing needs dropping; with several, equal counts per rank matter more
        self.drop_remainder = world_size > 1 if drop_remainder is None else drop_remainder
        self.epoch = 0
        self._codec = None

    @property
    def paired(self) -> bool:
        return self.orig is not None

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self.variant.classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this rank yields per epoch (all its workers together)."""
        a, b = self._rank_range()
        return b - a

    def num_batches(self, batch_size: int, num_workers: int, drop_last: bool = False) -> int:
        """Batches a DataLoader yields per epoch: each worker batches its own part separately."""
        a, b = self._rank_range()
        total = 0
        for w in range(max(num_workers, 1)):
            lo, hi = split_range(a, b, max(num_workers, 1), w)
            n = hi - lo
            total += n // batch_size if drop_last else -(-n // batch_size)
        return total

    # -- partitioning -------------------------------------------------------------------
    def _rank_range(self) -> tuple[int, int]:
        total = self.variant.num_samples
        if self.drop_remainder:
            per = total // self.world_size
            return self.rank * per, (self.rank + 1) * per
        return split_range(0, total, self.world_size, self.rank)

    def shard_order(self) -> list[int]:
        order = list(range(len(self.variant.shards)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def _segments(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(shard index, first, stop) pieces covering virtual positions [start, stop)."""
        segs, pos = [], 0
        for i in self.shard_order():
            n = self.variant.shards[i].count
            lo, hi = max(start, pos), min(stop, pos + n)
            if lo < hi:
                segs.append((i, lo - pos, hi - pos))
            pos += n
        return segs

    # -- reading --------------------------------------------------------------------------
    def _decode_variant(self, sample: dict, where: str) -> np.ndarray:
        if "decoded.png" in sample:
            return decode_png(sample["decoded.png"])
        ext = self.variant.ext
        if ext not in sample:
            raise ShardError(f"{where}: sample {sample['__key__']!r} has no .{ext} member "
                             f"(members: {sorted(k for k in sample if k != '__key__')})")
        if self.variant.spec is None:
            return decode_lossless(sample[ext], ext)
        if self._codec is None:
            from lossyvision.codecs import from_spec
            self._codec = from_spec(self.variant.spec)
        return self._codec.decode(sample[ext])

    def _read_shard(self, i: int, first: int, stop: int) -> Iterator[tuple]:
        info = self.variant.shards[i]
        vpath = self.variant.shard_path(info.name)
        vit = iter_tar_samples(vpath)
        oit = iter_tar_samples(self.orig.shard_path(info.name)) if self.orig is not None else None
        n = 0
        for vs in vit:
            os_ = None
            if oit is not None:
                os_ = next(oit, None)
                if os_ is None:
                    raise ShardError(f"{self.orig.shard_path(info.name)}: ends after {n} samples but "
                                     f"{vpath} continues (key {vs['__key__']!r})")
                if os_["__key__"] != vs["__key__"]:
                    raise ShardError(f"{info.name}: key mismatch at sample {n}: orig has {os_['__key__']!r}, "
                                     f"{self.variant.variant} has {vs['__key__']!r} ({vpath})")
            n += 1
            if n <= first:
                continue
            if n > stop:
                return
            key = vs["__key__"]
            has_label = "cls" in vs or "seg.png" in vs
            y = _label(vs if has_label or os_ is None else os_, vpath)
            x_tilde = _as_chw(self._decode_variant(vs, vpath))
            if os_ is None:
                yield x_tilde, y, key
            else:
                yield _as_chw(decode_lossless(os_[self.orig.ext], self.orig.ext)), x_tilde, y, key
        if n < min(stop, info.count):
            raise ShardError(f"{vpath}: holds {n} samples but the manifest says {info.count} "
                             "(truncated shard? rerun prepare-shards to rewrite it)")

    def __iter__(self) -> Iterator[tuple]:
        worker = get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        a, b = self._rank_range()
        lo, hi = split_range(a, b, nw, wid)
        stream = (s for seg in self._segments(lo, hi) for s in self._read_shard(*seg))
        if self.buffer_size > 1:
            rng = random.Random(hash((self.seed, self.epoch, self.rank, wid)))
            stream = shuffle_buffer(stream, self.buffer_size, rng)
        yield from stream


def shuffle_buffer(it: Iterator, size: int, rng: random.Random) -> Iterator:
    """Yield every item of `it` once, in an order randomised within a window of `size`."""
    buf: list = []
    for item in it:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def variant_dir(shards: str | os.PathLike, variant: str) -> str:
    """`ROOT/<dataset>/<split>` (local path or URL) + variant -> its folder, with a clear error if it is missing."""
    shards = os.fspath(shards)
    path = storage.join(shards, variant)
    if not storage.isfile(storage.join(path, "manifest.json")):
        raise FileNotFoundError(f"variant {variant!r} not found under {shards}; "
                                f"available: {', '.join(available_variants(shards)) or 'none (wrong --shards path?)'}")
    return path


def available_variants(shards: str) -> list[str]:
    """Names of the variant folders (those holding a manifest.json) directly under `shards`."""
    return [n for n in storage.listdir(shards, dirs_only=True) if storage.isfile(storage.join(shards, n, "manifest.json"))]


def to_device(x: torch.Tensor, device: torch.device | str, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              channels_last: bool = False) -> torch.Tensor:
    """uint8 Bx3xHxW -> normalised float32 on `device` (the copy is 4x smaller than float's)."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    # (x/255 - m)/s as one scale and one shift in place: two passes, no temporaries (3x faster on a
    # CPU than the three-pass form; tools/bench/train.py)
    return x.float().mul_(1.0 / (255.0 * s)).sub_(m / s)


def make_loader(ds: ShardStream, batch_size: int, num_workers: int = 0, drop_last: bool = False,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over a ShardStream (non-persistent workers, so `set_epoch` reaches them)."""
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
        pin_memory=pin_memory, persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None)
