"""Fashion-MNIST (Zalando, 70 000 28x28 grey images, 10 classes) from Debian's `dataset-fashion-mnist`.

`apt-get install dataset-fashion-mnist` puts the four gzipped IDX files in
`/usr/share/datasets/fashion-mnist/`; any folder holding the same four files works as `root`.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


try:  # the shared protocol; registering makes `--dataset fashion-mnist` work in prepare-shards
    from lossyvision.pipelines.sources import Item, Source, SourceError, register_source
except ImportError:  # pragma: no cover - only while sources.py is absent
    @dataclass(frozen=True)
    class Item:  # type: ignore[no-redef]
        key: str
        ref: str
        label: object = None

    class Source:  # type: ignore[no-redef]
        pass

    def register_source(cls):  # type: ignore[no-redef]
        return cls

    SourceError = ValueError  # type: ignore[misc,assignment]


def _read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally .gz): big-endian header, magic 0x0000080N with N dims."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise SourceError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise SourceError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise SourceError(f"{path}: truncated IDX file ({arr.size} values, header says {shape})")
    return arr.reshape(shape)


def _find(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise SourceError(
        f"{stem}(.gz) not found in {root}; install it with 'apt-get install dataset-fashion-mnist' "
        f"(files land in {DEFAULT_ROOT}) or pass the folder holding the IDX files")


@register_source
class FashionMNISTSource(Source):
    """Source protocol: `items()` sorted by key, `load(item) -> (uint8 28x28x3 RGB, int label)`.

    Keys are `<split>/<index:05d>` (index in the IDX file), so shards sort in file order.
    Images are grey; they are replicated to 3 channels so every codec and model sees RGB.
    """

    name = "fashion-mnist"
    task = "classification"
    classes = CLASSES

    def __init__(self, root: str | None = None, split: str = "train") -> None:
        if split not in _FILES:
            raise SourceError(f"unknown fashion-mnist split {split!r}; choose --split {' or '.join(sorted(_FILES))}")
        self.root = root or DEFAULT_ROOT
        self.split = split
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._images is None:
            img_stem, lbl_stem = _FILES[self.split]
            self._images = _read_idx(_find(self.root, img_stem))
            self._labels = _read_idx(_find(self.root, lbl_stem))
            if len(self._images) != len(self._labels):
                raise SourceError(f"{self.root}: {len(self._images)} images but {len(self._labels)} labels")
        return self._images, self._labels

    def __getstate__(self) -> dict:
        # workers reload the arrays lazily instead of receiving 47 MB through pickle
        return {**self.__dict__, "_images": None, "_labels": None}

    def describe(self) -> dict:
        return {"name": self.name, "root": self.root, "task": self.task, "split": self.split}

    def items(self) -> list:
        _, labels = self._arrays()
        return [Item(key=f"{self.split}/{i:05d}", ref=str(i), label=int(labels[i]))
                for i in range(len(labels))]

    def load(self, item) -> tuple[np.ndarray, int]:
        images, labels = self._arrays()
        i = int(item.ref)
        grey = images[i]
        return np.repeat(grey[:, :, None], 3, axis=2), int(labels[i])
