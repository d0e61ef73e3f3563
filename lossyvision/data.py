"""PyTorch datasets over the shards `prepare-shards` writes: the public data API.

    from lossyvision.data import ShardDataset, PairedShardDataset, make_loader, to_device, variant_dir

- `ShardDataset(folder)`: one variant (or a mixture of aligned variants); yields `(image, label, key)`.
- `PairedShardDataset(folder, orig_folder)`: a compressed variant and `orig` read in lockstep (keys
  checked); yields `(orig, image, label, key)`, for expert training, restoration, distortion losses.
- `make_loader(ds, batch_size, num_workers, drop_last, pin_memory=False, persistent_workers=None)`: a
  DataLoader of whole batches whose `len()` is exactly the number of batches it yields, for any worker
  count and on every DDP rank; its workers are persistent by default (see Epochs).
- `to_device(x, device)`: a uint8 batch to normalised float32 on the device (ImageNet's mean/std by
  default), where normalising is cheap; the copy is non-blocking (asynchronous from pinned memory).
- `variant_dir(root, variant, split=...)`: a variant's folder, or an error listing the variants there.

Samples: images are uint8 3xHxW tensors (`orig` and the variant decoded exactly as lossyvision's own
training reads them), `label` is the class index (`.cls`), a uint8 HxW train-id map (`seg.png`) or -1
(`NO_LABEL`), `key` the sample's key (str). Batches from `make_loader` are lists of the same
fields, images uint8 Bx3xHxW.

Epochs (docs/classifier.md, "Data loading"): build the loader once and call `ds.set_epoch(e)` before
each epoch's `iter(loader)`. The epoch is kept in shared memory, so the loader's persistent workers
(started once, under fork or spawn) see it when the epoch starts in them; `make_loader(...,
persistent_workers=False)` restarts the workers every epoch instead. On CUDA pass `pin_memory=True`. With
`shuffle=True` the shard order is permuted per epoch (seeded by `seed` and `e`) and each worker
shuffles its samples through a buffer of `buffer_size` encoded samples. Under DDP every rank reads
`len(ds) = num_samples // world_size` samples (the remainder is dropped, as DistributedSampler's
`drop_last=True`), so `len(ds)` is what one rank yields per epoch, all its workers together;
`make_loader(..., drop_last=True)` (training) also drops the ragged tail of at most
`batch_size - 1` samples, a different one each epoch. `ds.num_batches(batch_size, drop_last)` is
`len(make_loader(...))` without building the loader.

This module names the API; the implementation is `lossyvision.pipelines.stream`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from lossyvision.pipelines.stream import (IMAGENET_MEAN, IMAGENET_STD, NO_LABEL, ShardError, ShardStream, VariantInfo,
                                          available_variants, make_loader, read_variant, to_device, variant_dir)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NO_LABEL", "PairedShardDataset", "ShardDataset", "ShardError",
           "ShardStream", "Transform", "VariantInfo", "available_variants", "make_loader", "read_variant",
           "to_device", "variant_dir"]

#: `transform(sample) -> sample`: receives one sample as the dataset yields it, a tuple
#: `(image, label, key)` (`ShardDataset`) or `(orig, image, label, key)` (`PairedShardDataset`)
#: with the images as uint8 3xHxW tensors, and returns the sample to batch instead (any values
#: `torch.utils.data.default_collate` batches: float tensors, crops, dicts). It runs in the
#: DataLoader worker that decoded the sample, once per sample per epoch; it must return exactly one
#: sample (`len()` counts samples) and be picklable under the `spawn` and `forkserver` start
#: methods (macOS, Python 3.14+): a module-level function, `functools.partial`, or a torchvision
#: transform, not a lambda or a local function.
Transform = Callable[[tuple], Any]

Folder = str | os.PathLike


class ShardDataset(ShardStream):
    """One variant's shards as an `IterableDataset` of `(image, label, key)` (or of `transform(...)` of it).

    `variant_dir`: the variant folder (`ROOT/<dataset>/<split>/<variant>`, a path or an fsspec URL),
    or a list of aligned variant folders of one split: a mixture, each sample drawn from one of them
    (per sample and epoch, seeded). `shuffle`/`seed`/`buffer_size`: per-epoch shard permutation and
    sample buffer (training); `rank`/`world_size`: default to torch.distributed's when it is
    initialised; `max_pixels`: images above it are refused before decoding. `len()` and epochs: see
    the module docstring.
    """

    def __init__(self, variant_dir: Folder | Sequence[Folder], *, transform: Transform | None = None,
                 shuffle: bool = False, seed: int = 0, buffer_size: int = 0, rank: int | None = None,
                 world_size: int | None = None, drop_remainder: bool | None = None,
                 max_pixels: int | None = None) -> None:
        super().__init__(variant_dir if isinstance(variant_dir, (str, os.PathLike)) else list(variant_dir), None,
                         shuffle=shuffle, seed=seed, buffer_size=buffer_size, rank=rank, world_size=world_size,
                         drop_remainder=drop_remainder, max_pixels=max_pixels, transform=transform)


class PairedShardDataset(ShardStream):
    """A compressed variant and its `orig`, aligned, as an `IterableDataset` of `(orig, image, label, key)`.

    Shard i of both folders is read in lockstep and every key is checked, so `orig` and `image` are
    always the same crop (a `ShardError` names the shard otherwise). `variant_dir` may be a list of
    aligned variants (a mixture); the other arguments are `ShardDataset`'s.
    """

    def __init__(self, variant_dir: Folder | Sequence[Folder], orig_dir: Folder, *,
                 transform: Transform | None = None, shuffle: bool = False, seed: int = 0, buffer_size: int = 0,
                 rank: int | None = None, world_size: int | None = None, drop_remainder: bool | None = None,
                 max_pixels: int | None = None) -> None:
        super().__init__(variant_dir if isinstance(variant_dir, (str, os.PathLike)) else list(variant_dir), orig_dir,
                         shuffle=shuffle, seed=seed, buffer_size=buffer_size, rank=rank, world_size=world_size,
                         drop_remainder=drop_remainder, max_pixels=max_pixels, transform=transform)
