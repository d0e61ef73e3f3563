"""Sources: list a dataset's images as sorted :class:`Item` s and load one as ``(rgb, label)``.

Sources are plain picklable classes (Ray workers receive them), registered by name:
``imagenet``, ``cityscapes``, ``folder``, ``samples`` and ``fashion-mnist``.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import storage
from .imageio import DEFAULT_MAX_PIXELS, SourceError, check_pixels, header_size, read_file_bounded, read_rgb

__all__ = ["Item", "Source", "SourceError", "register_source", "create_source", "source_names", "make_key"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


@dataclass(frozen=True)
class Item:
    key: str  # stable, tar-safe key, e.g. "train/n01440764/n01440764_10026"
    ref: str  # what load() needs: a path relative to the source root, or an index
    label: Any = None  # int class index, relative path of a label map, or None
    stamp: str = ""  # size and change stamp of the source file(s): a rerun rebuilds shards whose stamps changed
    error: str = ""  # set when listing found this entry unusable (a dangling symlink, a FIFO...): load() raises it


def make_key(relpath: str) -> str:
    """Tar-safe WebDataset key from a relative path: no extension, no dots, no '..', no leading '/'."""
    p = relpath.replace("\\", "/")
    stem, ext = os.path.splitext(p)
    if ext.lower() in IMAGE_EXTS:
        p = stem
    parts = [re.sub(r"[^A-Za-z0-9_\-]", "_", part) for part in p.split("/") if part not in ("", ".", "..")]
    if not parts:
        raise SourceError(f"cannot make a key from path {relpath!r}")
    return "/".join(parts)


class Source:
    name: str = ""
    task: str = "none"  # "classification" | "segmentation" | "none"
    classes: list[str] | None = None
    root: str = ""
    max_pixels: int = DEFAULT_MAX_PIXELS  # images whose header says more are listed as failures, not decoded

    def items(self) -> list[Item]:
        raise NotImplementedError

    def load(self, item: Item) -> tuple[np.ndarray, Any]:
        """(uint8 HxWx3 RGB, label: int | uint8 HxW train-id map | None); raises SourceError."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "root": self.root, "task": self.task}


_SOURCES: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    if cls.name in _SOURCES:
        raise ValueError(f"source '{cls.name}' is already registered")
    _SOURCES[cls.name] = cls
    return cls


def source_names(pattern: str = "*") -> list[str]:
    _load_optional()
    return sorted(n for n in _SOURCES if fnmatch.fnmatch(n, pattern))


def create_source(name: str, root: str | None, split: str, **kwargs: Any) -> Source:
    """Instantiate a registered source; unknown names and missing folders raise SourceError."""
    _load_optional()
    if name not in _SOURCES:
        raise SourceError(f"unknown dataset '{name}'; choose one of {', '.join(source_names())}")
    max_pixels = kwargs.pop("max_pixels", None)
    src = _SOURCES[name](root, split, **kwargs)
    if max_pixels is not None:
        src.max_pixels = max_pixels
    return src


def _load_optional() -> None:
    try:  # fashion-mnist lives in its own module
        from . import fashion_mnist  # noqa: F401
    except ImportError:
        pass


def _unique_keys(items: list[Item]) -> list[Item]:
    """Items sorted by key; when several files map to one key (``a.png`` and ``a.jpg``), the first
    by path keeps it and the others become failures under keys of their own, so the job goes on."""
    items = sorted(items, key=lambda it: (it.key, it.ref))
    taken = {it.key for it in items}
    first: dict[str, Item] = {}
    out: list[Item] = []
    for it in items:
        if it.key not in first:
            first[it.key] = it
            out.append(it)
            continue
        n = 1
        while f"{it.key}__dup{n}" in taken:
            n += 1
        taken.add(f"{it.key}__dup{n}")
        out.append(Item(f"{it.key}__dup{n}", it.ref, it.label, it.stamp, f"maps to the same key '{it.key}' as {first[it.key].ref}; rename one"))
    return sorted(out, key=lambda it: it.key)


def _walk_images(top: str, rel_to: str) -> list[tuple[str, str]]:
    """Sorted ``(path relative to rel_to, stamp)`` of the images under ``top`` (local or URL);
    relative paths use '/' whatever the platform. Entries that cannot be listed (dangling symlinks,
    loops, unreadable folders, FIFOs) come back with the stamp ``!<reason>``: see :func:`_entry`."""
    errors: list[tuple[str, str]] = []
    found = [(rel.replace(os.sep, "/"), f"{st.size}:{st.stamp}") for rel, st in storage.walk_files(top, IMAGE_EXTS, rel_to, errors)]
    found += [(rel.replace(os.sep, "/"), "!" + reason) for rel, reason in errors]
    return sorted(found)


def _entry(key_path: str, rel: str, label: Any, stamp: str) -> Item:
    """An Item for a listed file, or a failing one for an entry listing could not use."""
    if stamp.startswith("!"):
        return Item(make_key(key_path), rel, label, "unusable", stamp[1:])
    return Item(make_key(key_path), rel, label, stamp)


def _need_dir(path: str, what: str) -> None:
    if not storage.isdir(path):
        raise SourceError(f"{what} not found: {path}")


def _root(root: str) -> str:
    return root.rstrip("/") if storage.is_remote(root) else os.path.abspath(storage.local_path(root))


def _raise_listing_error(item: Item) -> None:
    if item.error:
        raise SourceError(item.error)


class _FileSource(Source):
    def load(self, item: Item) -> tuple[np.ndarray, Any]:
        _raise_listing_error(item)
        return read_rgb(storage.join(self.root, item.ref), self.max_pixels), item.label

    def __getstate__(self) -> dict:
        # Ray tasks receive the source object; caches (ImageNet's 1.28 M items) stay in the driver.
        return {k: (None if k.startswith("_") else v) for k, v in self.__dict__.items()}


@register_source
class ImageNetSource(_FileSource):
    """ILSVRC2012: ``train/<wnid>/*.JPEG``; ``val/`` in wnid folders or flat with a ground truth.

    Flat ``val/`` labels come from ``LOC_val_solution.csv`` (Kaggle layout), or from
    ``ILSVRC2012_validation_ground_truth.txt`` plus the devkit's ``meta.mat`` (ILSVRC2012_ID ->
    wnid), searched in the root, ``val/``, and ``ILSVRC2012_devkit_t12/data/``. Class index =
    position of the wnid in sorted order (torchvision's convention).
    """

    name = "imagenet"
    task = "classification"

    def __init__(self, root: str | None, split: str, **_: Any):
        if not root:
            raise SourceError("the imagenet dataset needs --src pointing at the ILSVRC2012 root (with train/ and/or val/)")
        self.root = _root(root)
        self.split = split
        _need_dir(storage.join(self.root, split), f"ImageNet split folder '{split}'")
        self._items: list[Item] | None = None

    def _class_dirs(self, split: str) -> list[str]:
        return storage.listdir(storage.join(self.root, split), dirs_only=True)

    def _find(self, name: str) -> str | None:
        parent = self.root.rsplit("/", 1)[0] if storage.is_remote(self.root) else os.path.dirname(self.root)
        for d in (self.root, storage.join(self.root, self.split), storage.join(self.root, "ILSVRC2012_devkit_t12", "data"), parent):
            p = storage.join(d, name)
            if storage.isfile(p):
                return p
        return None

    def items(self) -> list[Item]:
        if self._items is not None:
            return self._items
        dirs = self._class_dirs(self.split)
        if dirs:
            wnids = sorted(set(self._class_dirs("train")) | set(dirs)) if self.split != "train" else dirs
            index = {w: i for i, w in enumerate(wnids)}
            items = []
            for w in dirs:
                for rel, stamp in _walk_images(storage.join(self.root, self.split, w), self.root):
                    items.append(_entry(rel, rel, index[w], stamp))
            self.classes = wnids
        else:
            items = self._flat_items()
        self._items = _unique_keys(items)
        return self._items

    def _flat_items(self) -> list[Item]:
        files = _walk_images(storage.join(self.root, self.split), self.root)
        labels: dict[str, str] = {}
        loc = self._find("LOC_val_solution.csv")
        gt = self._find("ILSVRC2012_validation_ground_truth.txt")
        if loc:
            for row in csv.DictReader(io.StringIO(storage.read_text(loc), newline="")):
                labels[row["ImageId"]] = row["PredictionString"].split()[0]
        elif gt:
            meta = self._find("meta.mat")
            if not meta:
                raise SourceError(f"found {gt} but not the devkit's meta.mat (ILSVRC2012_devkit_t12/data/meta.mat) that maps its ids to wnids")
            id2wnid = _devkit_ids(meta)
            ids = [int(line) for line in storage.read_text(gt).splitlines() if line.strip()]
            # line i belongs to the i-th validation image in file-name order
            names = sorted(os.path.splitext(os.path.basename(p))[0] for p, _ in files)
            labels = {n: id2wnid[i] for n, i in zip(names, ids)}
        else:
            raise SourceError(
                f"ImageNet '{self.split}' is flat (no wnid folders) and no ground truth was found; put LOC_val_solution.csv "
                "or ILSVRC2012_validation_ground_truth.txt + the devkit's meta.mat in the dataset root"
            )
        wnids = self._class_dirs("train") or sorted(set(labels.values()))
        if not self._class_dirs("train"):
            syn = self._find("LOC_synset_mapping.txt")
            if syn:
                wnids = sorted(line.split()[0] for line in storage.read_text(syn).splitlines() if line.strip())
        index = {w: i for i, w in enumerate(wnids)}
        self.classes = wnids
        items = []
        for rel, stamp in files:
            stem = os.path.splitext(os.path.basename(rel))[0]
            w = labels.get(stem)
            items.append(_entry(rel, rel, index[w] if w in index else None, stamp))
        return items

    def load(self, item: Item) -> tuple[np.ndarray, Any]:
        _raise_listing_error(item)
        if item.label is None:
            raise SourceError("no ground-truth label for this image")
        return super().load(item)


def _devkit_ids(meta_path: str) -> dict[int, str]:
    from scipy.io import loadmat

    synsets = loadmat(io.BytesIO(storage.read_bytes(meta_path)), squeeze_me=True)["synsets"]
    return {int(s[0]): str(s[1]) for s in synsets if int(s[4]) == 0}


def cityscapes_lut() -> np.ndarray:
    """256-entry lookup table: Cityscapes label id -> train id (255 = ignore), from cityscapesscripts."""
    from ..extras import require

    labels = require("cityscapesscripts.helpers.labels", "cityscapes", "--dataset cityscapes", "cityscapesscripts").labels

    lut = np.full(256, 255, dtype=np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < 255:
            lut[lab.id] = lab.trainId
    return lut


CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip


@register_source
class CityscapesSource(_FileSource):
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/<split>/<city>/*_gtFine_labelIds.png``."""

    name = "cityscapes"
    task = "segmentation"
    classes = CITYSCAPES_CLASSES

    def __init__(self, root: str | None, split: str, **_: Any):
        if not root:
            raise SourceError("the cityscapes dataset needs --src pointing at the root with leftImg8bit/ and gtFine/")
        self.root = _root(root)
        self.split = split
        _need_dir(storage.join(self.root, "leftImg8bit", split), f"Cityscapes folder leftImg8bit/{split}")
        # here, not at the first image: without cityscapesscripts every image would be skipped as bad
        self._lut = cityscapes_lut()

    def items(self) -> list[Item]:
        labels = dict(_walk_images(storage.join(self.root, "gtFine", self.split), self.root))
        items = []
        for rel, stamp in _walk_images(storage.join(self.root, "leftImg8bit", self.split), self.root):
            if stamp.startswith("!"):
                items.append(_entry(rel, rel, None, stamp))
                continue
            if not rel.endswith("_leftImg8bit.png"):
                continue
            parts = rel.split("/")
            base = parts[-1][: -len("_leftImg8bit.png")]
            lab = "/".join(("gtFine", self.split, parts[-2], base + "_gtFine_labelIds.png"))
            items.append(Item(make_key(f"{parts[-2]}/{base}"), rel, lab, f"{stamp}|{labels.get(lab, 'missing')}"))
        return _unique_keys(items)

    def load(self, item: Item) -> tuple[np.ndarray, Any]:
        _raise_listing_error(item)
        rgb = read_rgb(storage.join(self.root, item.ref), self.max_pixels)
        path = storage.join(self.root, item.label)
        import imagecodecs

        if not storage.exists(path):
            raise SourceError(f"label map missing: {item.label}")
        try:
            data = read_file_bounded(path, self.max_pixels)
        except SourceError as e:
            raise SourceError(f"label map {item.label}: {e}") from None
        try:
            check_pixels(*header_size(data), self.max_pixels, f"label map {item.label}")
            ids = imagecodecs.png_decode(data)
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"corrupt label map {item.label}: {e}") from None
        if ids.ndim != 2 or ids.dtype != np.uint8:
            raise SourceError(f"label map {item.label} is not a single-channel 8-bit PNG")
        if ids.shape != rgb.shape[:2]:
            raise SourceError(f"label map {ids.shape} and image {rgb.shape[:2]} differ in size")
        return rgb, self._lut[ids]


@register_source
class FolderSource(_FileSource):
    """Any folder of images (recursively), no labels: for rate studies on a photo collection."""

    name = "folder"

    def __init__(self, root: str | None, split: str = "all", **_: Any):
        if not root:
            raise SourceError("the folder dataset needs --src DIR")
        self.root = _root(root)
        self.split = split
        _need_dir(self.root, "source folder")

    def items(self) -> list[Item]:
        return _unique_keys([_entry(rel, rel, None, stamp) for rel, stamp in _walk_images(self.root, self.root)])


# Real photographs that scikit-image ships in its wheel (no download needed), for the demo.
SAMPLE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
    "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png", "coins.png", "moon.png", "page.png",
    "text.png", "grass.png", "gravel.png", "brick.png", "cell.png",
)  # fmt: skip


@register_source
class SamplesSource(_FileSource):
    """The real photos bundled with scikit-image (RGB and greyscale), for demos and tests."""

    name = "samples"

    def __init__(self, root: str | None = None, split: str = "all", **_: Any):
        import skimage.data

        self.root = os.path.abspath(root or skimage.data.data_dir)
        self.split = split

    def items(self) -> list[Item]:
        found = dict(_walk_images(self.root, self.root))
        have = [f for f in SAMPLE_PHOTOS if f in found]
        if not have:
            raise SourceError(f"no sample photos found in {self.root}; is scikit-image installed?")
        return _unique_keys([Item(make_key(f), f, None, found[f]) for f in have])
