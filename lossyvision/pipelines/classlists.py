"""Segmentation class lists: names, the label ids they come from, the ignore value, small/big groups.

A :class:`ClassList` says how a dataset's label maps become train ids (its classes in order are
train ids 0..K-1; any other label id becomes ``ignore_index``) and how its scores are grouped
(paper 2's small/big split). Prepared segmentation shards record theirs in the manifest as the
``"segmentation"`` block; training and evaluation read it from there (:func:`variant_class_list`),
and manifests written before the block existed are Cityscapes' 19 classes.

Registered lists: ``cityscapes``, ``inria`` (INRIA Aerial Image Labeling) and ``sdd`` (Semantic
Drone Dataset); the ``segfolder`` source reads its own from ``classes.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ClassList", "ClassListError", "IGNORE_INDEX", "CITYSCAPES", "INRIA", "SDD", "class_list", "class_list_names",
           "from_manifest", "parse_classes_json", "register_class_list", "variant_class_list"]

IGNORE_INDEX = 255
# label maps are 8- or 16-bit PNGs (or TIFFs): one lookup table covers every possible id
_LUT_SIZE = 1 << 16


class ClassListError(ValueError):
    """A class list (classes.json or a manifest's block) that cannot be used; the message says why."""


@dataclass(frozen=True)
class ClassList:
    name: str
    classes: tuple[str, ...]
    label_ids: tuple[int, ...] = ()  # label-map value of each class; () = the train ids themselves
    small: tuple[str, ...] = ()  # classes averaged as "small objects"; every other class is "big"
    # train-id maps are stored as 8-bit PNGs: train ids and the ignore value must fit in a byte
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "small", tuple(self.small))
        object.__setattr__(self, "label_ids", tuple(int(i) for i in self.label_ids) or tuple(range(len(self.classes))))
        k = len(self.classes)
        where = f"class list '{self.name}'"
        if k < 1:
            raise ClassListError(f"{where} has no classes")
        if len(set(self.classes)) != k:
            raise ClassListError(f"{where} names a class twice: {sorted({c for c in self.classes if self.classes.count(c) > 1})}")
        if len(self.label_ids) != k:
            raise ClassListError(f"{where}: {len(self.label_ids)} label ids for {k} classes")
        if len(set(self.label_ids)) != k:
            raise ClassListError(f"{where} maps one label id to two classes: "
                                 f"{sorted({i for i in self.label_ids if self.label_ids.count(i) > 1})}")
        bad = [i for i in self.label_ids if not 0 <= i < _LUT_SIZE]
        if bad:
            raise ClassListError(f"{where}: label ids must be 0..{_LUT_SIZE - 1}, got {bad[:5]}")
        if not isinstance(self.ignore_index, int) or not k <= self.ignore_index <= 255:
            raise ClassListError(f"{where}: ignore_index must be an integer from {k} (the class count) to 255, "
                                 f"got {self.ignore_index!r}")
        unknown = sorted(set(self.small) - set(self.classes))
        if unknown:
            raise ClassListError(f"{where}: small classes {unknown} are not among its classes")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def big(self) -> tuple[str, ...]:
        return tuple(c for c in self.classes if c not in self.small)

    def lut(self) -> np.ndarray:
        """uint8 lookup table over every 16-bit label id: class label id -> train id, else ignore_index."""
        lut = np.full(_LUT_SIZE, self.ignore_index, np.uint8)
        lut[list(self.label_ids)] = np.arange(self.num_classes, dtype=np.uint8)
        return lut

    def train_ids(self, ids: np.ndarray) -> np.ndarray:
        """Train-id map (uint8) of a label-id map (any integer dtype); unlisted ids -> ignore_index."""
        a = np.asarray(ids)
        if a.dtype == bool:
            a = a.astype(np.uint8)
        if not np.issubdtype(a.dtype, np.integer):
            raise ClassListError(f"label map of dtype {a.dtype}: expected integer label ids")
        if a.size and (a.min() < 0 or a.max() >= _LUT_SIZE):
            return np.where((a >= 0) & (a < _LUT_SIZE), self.lut()[np.clip(a, 0, _LUT_SIZE - 1)], self.ignore_index).astype(np.uint8)
        return self.lut()[a]

    def to_manifest(self) -> dict:
        """The manifest's "segmentation" block."""
        return {"name": self.name, "classes": list(self.classes), "small": list(self.small), "ignore_index": self.ignore_index,
                "label_ids": list(self.label_ids)}


# Cityscapes train ids 0..18 and their label ids (cityscapesscripts' labels table, which the source
# reads; tests/pipelines/test_seg_sources.py checks the two agree); small = paper 2, Table II, footnote 5.
CITYSCAPES = ClassList(
    "cityscapes",
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
     "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33),
    small=("person", "rider", "motorcycle", "bicycle", "pole", "traffic light", "traffic sign"),
)

# INRIA Aerial Image Labeling: ground truth is 0 (not building) / 255 (building). The paper does not
# group its two classes; "building" is not called small.
INRIA = ClassList("inria", ("background", "building"), (0, 255))

# Semantic Drone Dataset (label_images_semantic ids 0..23). Its 20 classes are those the dataset's
# page lists; unlabeled (0), bald-tree (20), ar-marker (21) and conflicting (23) are ignored. The
# paper does not group them; the small group here is the objects a few dozen pixels across at altitude.
SDD = ClassList(
    "sdd",
    ("paved-area", "dirt", "grass", "gravel", "water", "rocks", "pool", "vegetation", "roof", "wall", "window",
     "door", "fence", "fence-pole", "person", "dog", "car", "bicycle", "tree", "obstacle"),
    (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 22),
    small=("fence-pole", "person", "dog", "car", "bicycle"),
)

_LISTS: dict[str, ClassList] = {}


def register_class_list(cl: ClassList) -> ClassList:
    if cl.name in _LISTS:
        raise ValueError(f"class list '{cl.name}' is already registered")
    _LISTS[cl.name] = cl
    return cl


for _cl in (CITYSCAPES, INRIA, SDD):
    register_class_list(_cl)


def class_list_names() -> list[str]:
    return sorted(_LISTS)


def class_list(name: str) -> ClassList:
    if name not in _LISTS:
        raise ClassListError(f"no class list named '{name}'; registered: {', '.join(class_list_names())}")
    return _LISTS[name]


def parse_classes_json(text: str, where: str = "classes.json") -> ClassList:
    """A segfolder ``classes.json``: {"name", "ignore_index" (255), "classes": [{"name", "label_id", "group"}]}."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ClassListError(f"{where} is not valid JSON ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("classes"), list) or not d["classes"]:
        raise ClassListError(f'{where}: expected an object with a non-empty "classes" list')
    names, ids, small = [], [], []
    for i, c in enumerate(d["classes"]):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
            raise ClassListError(f'{where}: classes[{i}] needs a "name" (a non-empty string)')
        lid = c.get("label_id")
        if not isinstance(lid, int) or isinstance(lid, bool):
            raise ClassListError(f'{where}: class {c["name"]!r} needs an integer "label_id", got {lid!r}')
        group = c.get("group", "big")
        if group not in ("small", "big"):
            raise ClassListError(f'{where}: class {c["name"]!r} has group {group!r}; use "small" or "big"')
        names.append(c["name"])
        ids.append(lid)
        if group == "small":
            small.append(c["name"])
    name = d.get("name", "segfolder")
    if not isinstance(name, str) or not name:
        raise ClassListError(f'{where}: "name" must be a non-empty string')
    try:
        return ClassList(name, tuple(names), tuple(ids), tuple(small), d.get("ignore_index", IGNORE_INDEX))
    except ClassListError as e:
        raise ClassListError(f"{where}: {e}") from None


def from_manifest(m: dict[str, Any]) -> ClassList:
    """The class list of a segmentation variant's manifest; manifests written before the
    "segmentation" block existed are Cityscapes'."""
    block = m.get("segmentation")
    if not isinstance(block, dict):
        return CITYSCAPES
    try:
        return ClassList(str(block.get("name") or m.get("dataset") or "segmentation"), tuple(block["classes"]),
                         tuple(block.get("label_ids") or ()), tuple(block.get("small") or ()),
                         block.get("ignore_index", IGNORE_INDEX))
    except (KeyError, TypeError) as e:
        raise ClassListError(f'the manifest\'s "segmentation" block is incomplete ({e!r})') from None


def variant_class_list(vdir: str) -> ClassList:
    """The class list of a variant folder's manifest. A restored variant whose manifest lacks the
    block takes the one of the variant it was restored from (a sibling folder)."""
    from .. import storage
    from .shards import load_manifest

    m = load_manifest(vdir)
    if m is None:
        raise ClassListError(f"{vdir} has no manifest")
    if "segmentation" not in m:
        src = (m.get("restored_from") or {}).get("variant")
        parent = vdir.rstrip("/").rsplit("/", 1)[0] if "/" in vdir.rstrip("/") else ""
        if src and parent:
            sm = load_manifest(storage.join(parent, src))
            if sm is not None and "segmentation" in sm:
                m = sm
    try:
        return from_manifest(m)
    except ClassListError as e:
        raise ClassListError(f"{vdir}: {e}") from None
