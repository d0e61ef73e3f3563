"""Sources: list a dataset's images as sorted :class:`Item` s and load one as ``(rgb, label)``.

Sources are plain picklable classes (Ray workers receive them), registered by name:
``imagenet``, ``cityscapes``, ``segfolder``, ``inria``, ``sdd``, ``folder``, ``samples`` and
``fashion-mnist``. Segmentation sources carry a :class:`~.classlists.ClassList` (``class_list``)
that maps their label ids to train ids and that prepare-shards records in the manifest.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import storage
from .classlists import CITYSCAPES, INRIA, SDD, ClassList, ClassListError, parse_classes_json
from .crops import PatchGrid
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
    class_list: ClassList | None = None  # segmentation sources: label ids -> train ids, small/big groups
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


CITYSCAPES_CLASSES = list(CITYSCAPES.classes)
# Cityscapes splits that come with gtFine label maps; any other split (train_extra) is images only
# unless a gtFine/<split> folder exists
CITYSCAPES_LABELLED = ("train", "val")


@register_source
class CityscapesSource(_FileSource):
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/<split>/<city>/*_gtFine_labelIds.png``.

    ``train_extra`` (the 20 000 coarsely annotated frames) is listed as images only: paper 2 trains
    its codec and restoration networks there, without labels; gtCoarse is never read."""

    name = "cityscapes"
    task = "segmentation"
    classes = CITYSCAPES_CLASSES
    class_list = CITYSCAPES

    def __init__(self, root: str | None, split: str, **_: Any):
        if not root:
            raise SourceError("the cityscapes dataset needs --src pointing at the root with leftImg8bit/ and gtFine/")
        self.root = _root(root)
        self.split = split
        _need_dir(storage.join(self.root, "leftImg8bit", split), f"Cityscapes folder leftImg8bit/{split}")
        self.labelled = split in CITYSCAPES_LABELLED or storage.isdir(storage.join(self.root, "gtFine", split))
        # here, not at the first image: without cityscapesscripts every image would be skipped as bad
        self._lut = cityscapes_lut() if self.labelled else None

    def items(self) -> list[Item]:
        labels = dict(_walk_images(storage.join(self.root, "gtFine", self.split), self.root)) if self.labelled else {}
        items = []
        for rel, stamp in _walk_images(storage.join(self.root, "leftImg8bit", self.split), self.root):
            if stamp.startswith("!"):
                items.append(_entry(rel, rel, None, stamp))
                continue
            if not rel.endswith("_leftImg8bit.png"):
                continue
            parts = rel.split("/")
            base = parts[-1][: -len("_leftImg8bit.png")]
            if not self.labelled:
                items.append(Item(make_key(f"{parts[-2]}/{base}"), rel, None, stamp))
                continue
            lab = "/".join(("gtFine", self.split, parts[-2], base + "_gtFine_labelIds.png"))
            items.append(Item(make_key(f"{parts[-2]}/{base}"), rel, lab, f"{stamp}|{labels.get(lab, 'missing')}"))
        return _unique_keys(items)

    def load(self, item: Item) -> tuple[np.ndarray, Any]:
        _raise_listing_error(item)
        rgb = read_rgb(storage.join(self.root, item.ref), self.max_pixels)
        if item.label is None:
            return rgb, None
        if self._lut is None:  # dropped when the source was pickled for a Ray worker
            self._lut = cityscapes_lut()
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


def read_label_ids(root: str, rel: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A single-channel label-id map (8- or 16-bit PNG, palette PNG, TIFF) as an integer array;
    missing, oversized, corrupt or colour maps raise SourceError naming the file."""
    from PIL import Image

    path = storage.join(root, rel)
    if not storage.exists(path):
        raise SourceError(f"label map missing: {rel}")
    try:
        data = read_file_bounded(path, max_pixels)
    except SourceError as e:
        raise SourceError(f"label map {rel}: {e}") from None
    try:
        check_pixels(*header_size(data), max_pixels, f"label map {rel}")
        with Image.open(io.BytesIO(data)) as im:
            if im.mode == "1":  # a 1-bit map's pixels are 0 and 255
                im = im.convert("L")
            if im.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
                raise SourceError(f"label map {rel} is a {im.mode} image; expected one channel of label ids "
                                  "(an 8- or 16-bit greyscale or a palette PNG)")
            ids = np.asarray(im)
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"corrupt label map {rel}: {e}") from None
    if ids.ndim != 2:
        raise SourceError(f"label map {rel} is not a single-channel image of label ids")
    return ids


class _LabelMapSource(_FileSource):
    """Items whose ``label`` is the relative path of a label-id map (or None: images only),
    mapped to train ids with the source's class list."""

    task = "segmentation"

    def _labels(self, rgb: np.ndarray, item: Item) -> np.ndarray | None:
        if item.label is None:
            return None
        ids = read_label_ids(self.root, item.label, self.max_pixels)
        if ids.shape != rgb.shape[:2]:
            raise SourceError(f"label map {item.label} {ids.shape} and image {rgb.shape[:2]} differ in size")
        return self.class_list.train_ids(ids)

    def load(self, item: Item) -> tuple[np.ndarray, Any]:
        _raise_listing_error(item)
        rgb = read_rgb(storage.join(self.root, item.ref), self.max_pixels)
        return rgb, self._labels(rgb, item)


def _rel_under(rel: str, prefix: str) -> str:
    return rel[len(prefix) + 1:] if rel.startswith(prefix + "/") else rel


def _stem(rel: str) -> str:
    return os.path.splitext(rel)[0]


SEGFOLDER_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


@register_source
class SegFolderSource(_LabelMapSource):
    """Any segmentation dataset in one layout (docs/restoration.md, "Datasets")::

        ROOT/classes.json              {"name", "ignore_index": 255, "classes": [{"name", "label_id", "group"}]}
        ROOT/images/<split>/<stem>.<png|jpg|jpeg|tif|tiff|webp>   (sub-folders allowed)
        ROOT/labels/<split>/<stem>.png                            (uint8/uint16 label ids; optional)

    Train ids are the classes' order in classes.json; a label id no class lists becomes
    ``ignore_index``. A split without a ``labels/<split>/`` folder is images only."""

    name = "segfolder"

    def __init__(self, root: str | None, split: str, **_: Any):
        if not root:
            raise SourceError("the segfolder dataset needs --src pointing at a root with classes.json and images/<split>/")
        self.root = _root(root)
        self.split = split
        path = storage.join(self.root, "classes.json")
        if not storage.isfile(path):
            raise SourceError(f"segfolder class list not found: {path} (see docs/restoration.md, \"Datasets\")")
        text = storage.read_text(path)
        try:
            self.class_list = parse_classes_json(text, path)
        except ClassListError as e:
            raise SourceError(str(e)) from None
        self.classes = list(self.class_list.classes)
        # a changed class list changes every train-id map: part of every item's stamp, so shards rebuild
        self.classes_sig = hashlib.sha256(text.encode()).hexdigest()[:16]
        _need_dir(storage.join(self.root, "images", split), f"segfolder image folder images/{split}")
        self.labelled = storage.isdir(storage.join(self.root, "labels", split))

    def describe(self) -> dict:
        return {**super().describe(), "labelled": self.labelled}

    def items(self) -> list[Item]:
        img_dir, lab_dir = f"images/{self.split}", f"labels/{self.split}"
        labels = dict(_walk_images(storage.join(self.root, lab_dir), self.root)) if self.labelled else {}
        items = []
        for rel, stamp in _walk_images(storage.join(self.root, img_dir), self.root):
            inner = _rel_under(rel, img_dir)
            if stamp.startswith("!"):
                items.append(_entry(inner, rel, None, stamp))
                continue
            if os.path.splitext(rel)[1].lower() not in SEGFOLDER_EXTS:
                continue
            if not self.labelled:
                items.append(Item(make_key(inner), rel, None, f"{stamp}|{self.classes_sig}"))
                continue
            lab = f"{lab_dir}/{_stem(inner)}.png"
            items.append(Item(make_key(inner), rel, lab, f"{stamp}|{labels.get(lab, 'missing')}|{self.classes_sig}"))
        return _unique_keys(items)


# INRIA Aerial Image Labeling: gt exists for the five training cities; paper 2 trains segmentation on
# four, evaluates on one (it does not say which: the last one listed here) and trains the codec and
# restoration on the five test cities, whose gt is not public.
INRIA_LABELLED_CITIES = ("austin", "chicago", "kitsap", "tyrol-w", "vienna")
INRIA_VAL_CITY = "vienna"
INRIA_SPLITS = ("train", "val", "all", "train_extra")


@register_source
class InriaSource(_LabelMapSource):
    """``AerialImageDataset/train/images/<city><n>.tif`` + ``train/gt/<city><n>.tif`` (0 / 255 ->
    background / building), ``test/images/`` without gt. Splits: ``train`` (austin, chicago, kitsap,
    tyrol-w), ``val`` (vienna), ``all`` (the five), ``train_extra`` (test/images: images only)."""

    name = "inria"
    class_list = INRIA
    classes = list(INRIA.classes)

    def __init__(self, root: str | None, split: str, **_: Any):
        if not root:
            raise SourceError("the inria dataset needs --src pointing at AerialImageDataset/ (with train/ and test/)")
        base = _root(root)
        nested = storage.join(base, "AerialImageDataset")
        self.root = nested if storage.isdir(nested) else base
        self.split = split
        if split not in INRIA_SPLITS:
            raise SourceError(f"inria has the splits {', '.join(INRIA_SPLITS)}; got '{split}'")
        self.folder = "test" if split == "train_extra" else "train"
        _need_dir(storage.join(self.root, self.folder, "images"), f"INRIA folder {self.folder}/images")

    def _cities(self) -> tuple[str, ...] | None:
        return {"train": tuple(c for c in INRIA_LABELLED_CITIES if c != INRIA_VAL_CITY), "val": (INRIA_VAL_CITY,),
                "all": INRIA_LABELLED_CITIES}.get(self.split)

    def items(self) -> list[Item]:
        cities = self._cities()
        gt_dir = f"{self.folder}/gt"
        labels = dict(_walk_images(storage.join(self.root, gt_dir), self.root)) if cities else {}
        items = []
        for rel, stamp in _walk_images(storage.join(self.root, self.folder, "images"), self.root):
            name = os.path.basename(_stem(rel))
            city = re.sub(r"\d+$", "", name)
            if stamp.startswith("!"):
                items.append(_entry(f"{city}/{name}", rel, None, stamp))
                continue
            if cities is None:
                items.append(Item(make_key(f"{city}/{name}"), rel, None, stamp))
            elif city in cities:
                lab = f"{gt_dir}/{os.path.basename(rel)}"
                items.append(Item(make_key(f"{city}/{name}"), rel, lab, f"{stamp}|{labels.get(lab, 'missing')}"))
        return _unique_keys(items)


# Paper 2: the 400 public SDD images resized from 6000x4000 to 3000x2000, each cut into 12 patches of
# 1200x800; 265 train segmentation, 70 evaluate it, 65 train the codec and restoration. The paper gives
# neither the grid nor which images go where: 12 patches fit 3000x2000 as 4 columns x 3 rows at a
# stride of 600 px both ways, and the split is by file name (consecutive frames of one flight stay
# on one side), in the paper's proportions.
SDD_GRID = PatchGrid(frame_w=3000, frame_h=2000, patch_w=1200, patch_h=800, cols=4, rows=3)
SDD_SPLIT_SIZES = (("train", 265), ("val", 70), ("train_extra", 65))
SDD_SPLITS = ("train", "val", "train_extra", "all")


def sdd_split(stems: list[str], split: str) -> list[str]:
    """The sorted stems of one SDD split: train/val/train_extra take 265/70/65 of every 400 in name order."""
    stems = sorted(stems)
    if split == "all":
        return stems
    total = sum(n for _, n in SDD_SPLIT_SIZES)
    start = 0
    for name, n in SDD_SPLIT_SIZES:
        stop = len(stems) if name == SDD_SPLIT_SIZES[-1][0] else start + round(len(stems) * n / total)
        if name == split:
            return stems[start:stop]
        start = stop
    raise SourceError(f"sdd has the splits {', '.join(SDD_SPLITS)}; got '{split}'")


def patch_key(key: str, index: int) -> str:
    return f"{key}__p{index:02d}"


def patch_index(key: str) -> int:
    return int(key.rsplit("__p", 1)[1])


@register_source
class SemanticDroneSource(_LabelMapSource):
    """Semantic Drone Dataset, as released: ``original_images/<n>.jpg`` + ``label_images_semantic/<n>.png``
    (class ids 0..23) under ROOT, ROOT/semantic_drone_dataset or ROOT/dataset/semantic_drone_dataset.
    Every image is resized to 3000x2000 (labels with nearest) and cut into 12 patches of 1200x800,
    each its own sample ``<n>__p00`` .. ``<n>__p11`` (row-major)."""

    name = "sdd"
    class_list = SDD
    classes = list(SDD.classes)
    grid = SDD_GRID

    def __init__(self, root: str | None, split: str, **_: Any):
        if not root:
            raise SourceError("the sdd dataset needs --src pointing at the folder with original_images/ and label_images_semantic/")
        base = _root(root)
        for cand in (base, storage.join(base, "semantic_drone_dataset"), storage.join(base, "dataset", "semantic_drone_dataset")):
            if storage.isdir(storage.join(cand, "original_images")):
                self.root = cand
                break
        else:
            raise SourceError(f"Semantic Drone Dataset folder original_images not found under {base}")
        if split not in SDD_SPLITS:
            raise SourceError(f"sdd has the splits {', '.join(SDD_SPLITS)}; got '{split}'")
        self.split = split
        self._frame: tuple[str, np.ndarray, np.ndarray | None] | None = None

    def items(self) -> list[Item]:
        labels = dict(_walk_images(storage.join(self.root, "label_images_semantic"), self.root))
        found = {os.path.basename(_stem(rel)): (rel, st) for rel, st in _walk_images(storage.join(self.root, "original_images"), self.root)}
        need_labels = self.split != "train_extra"
        items = []
        for stem in sdd_split(list(found), self.split):
            rel, stamp = found[stem]
            lab = f"label_images_semantic/{stem}.png"
            if lab not in labels and not need_labels:
                lab = None
            for k in range(self.grid.count):
                key = patch_key(make_key(stem), k)
                if stamp.startswith("!"):
                    items.append(Item(key, rel, None, "unusable", stamp[1:]))
                else:
                    items.append(Item(key, rel, lab, f"{stamp}|{labels.get(lab, 'missing') if lab else ''}"))
        return _unique_keys(items)

    def load(self, item: Item) -> tuple[np.ndarray, Any]:
        _raise_listing_error(item)
        # the 12 patches of a frame are neighbours in sorted shards: one decode and resize serves them all
        if self._frame is None or self._frame[0] != item.ref:
            self._frame = None  # the old frame goes before the new one is decoded
            rgb = read_rgb(storage.join(self.root, item.ref), self.max_pixels)
            rgb, label = self.grid.frame(rgb, self._labels(rgb, item))
            self._frame = (item.ref, rgb, label)
        _, rgb, label = self._frame
        return self.grid.patch(rgb, label, patch_index(item.key))


@register_source
class FolderSource(_FileSource):
    """Any folder of images (recursively), no labels: for rate studies on a photo collection.

    ``--split S`` takes ``--src/S/`` (keys relative to it) when that folder exists, so a ``--split
    train`` over a tree that also holds ``val/`` never mixes the two; otherwise (and for ``all``) every
    image under ``--src``, the split then only naming the output folder."""

    name = "folder"

    def __init__(self, root: str | None, split: str = "all", **_: Any):
        if not root:
            raise SourceError("the folder dataset needs --src DIR")
        self.root = _root(root)
        self.split = split
        _need_dir(self.root, "source folder")
        sub = storage.join(self.root, split)
        self.top = sub if split != "all" and storage.isdir(sub) else self.root

    def items(self) -> list[Item]:
        cut = 0 if self.top == self.root else len(self.split) + 1  # keys relative to the split folder
        return _unique_keys([_entry(rel[cut:], rel, None, stamp) for rel, stamp in _walk_images(self.top, self.root)])


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
