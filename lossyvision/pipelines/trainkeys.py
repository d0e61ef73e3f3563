"""Which images a restoration network trained on, and whether a split to restore overlaps them.

The paper trains its restoration GAN on 2000 Cityscapes ``train_extra`` images, disjoint from the
segmentation training set it later restores; restoring images the network trained on makes RO
optimistic. train-restoration records its keys (in generator.pt and as ``train_keys.json`` beside
it); restore-shards compares them with the keys of the split it restores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

TRAIN_KEYS = "train_keys.json"


def variant_keys(variant_dir: str | os.PathLike) -> list[str]:
    """Every sample key of a variant, in shard order (reads its shards; use a small variant)."""
    from lossyvision.pipelines.stream import iter_tar_samples, read_variant

    info = read_variant(variant_dir)
    return [s["__key__"] for shard in info.shards for s in iter_tar_samples(info.shard_path(shard.name))]


def seeded_subset(keys: list[str], n: int | None, seed: int = 0) -> list[str]:
    """``n`` keys chosen at random by ``seed``, in their original order; all of them when ``n`` is None
    or not smaller than their number.

    Each key is ranked by sha256(seed, key) and the ``n`` lowest are kept: the choice depends on the
    keys and the seed only (not on their order, a library version or the machine), and for one seed
    a smaller subset is part of every larger one (paper Fig. 8's growing training sets are nested).
    """
    if n is None or n >= len(keys):
        return list(keys)
    rank = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).digest())
    chosen = set(rank[:n])
    return [k for k in keys if k in chosen]


def write_train_keys(path: Path, record: dict) -> None:
    """``record`` (dataset, split, variant, ..., keys) as JSON, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def check_overlap(record: dict | None, keys: list[str], split: str, generator: str, allow: bool) -> int:
    """How many of ``keys`` (the split to restore) the generator trained on; refused unless ``allow``.

    ``record`` is the generator's ``train_keys`` block (None for files written before it existed:
    a warning that the overlap cannot be checked, and -1).
    """
    from lossyvision.pipelines.stream import OptionError

    if record is None or record.get("keys") is None:
        log.warning("%s records no training keys (written before train-restoration recorded them): its overlap "
                    "with split %s cannot be checked", generator, split)
        return -1
    overlap = len(set(keys) & set(record["keys"]))
    if overlap:
        what = (f"{overlap} of the {len(keys)} images of split {split} are among the {len(record['keys'])} images "
                f"{generator} was trained on (split {record.get('split')})")
        if not allow:
            raise OptionError(f"{what}; restoring them makes RO optimistic; restore a split disjoint from the "
                              "generator's training data, or pass --allow-overlap")
        log.warning("%s; restoring them anyway (--allow-overlap)", what)
    return overlap
