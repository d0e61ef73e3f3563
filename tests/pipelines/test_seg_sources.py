"""Segmentation sources in their real on-disk layouts (small generated images): Cityscapes train_extra,
segfolder, INRIA Aerial, the Semantic Drone Dataset; class lists in manifests; class-list-driven scores."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lossyvision.eval.segmentation import confusion_matrix, evaluate_model, result_record, scores_from_confusion
from lossyvision.pipelines.classlists import (CITYSCAPES, INRIA, SDD, ClassList, ClassListError, from_manifest,
                                              parse_classes_json, variant_class_list)
from lossyvision.pipelines.crops import PatchGrid
from lossyvision.pipelines.prepare import PrepareConfig, prepare_shards
from lossyvision.pipelines.sources import SDD_GRID, SourceError, cityscapes_lut, create_source, sdd_split

from ..conftest import make_cityscapes


def _png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _prepare(dataset: str, src: str, split: str, out: Path, **kw) -> dict:
    return prepare_shards(PrepareConfig(dataset=dataset, src=src, split=split, out=str(out), executor="local",
                                        progress=False, **kw))


def _samples(vdir: Path) -> list[dict]:
    out: dict[str, dict] = {}
    for tar in sorted(vdir.glob("shard-*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, member = m.name.split(".", 1)
                out.setdefault(key, {"__key__": key})[member] = t.extractfile(m).read()
    return [out[k] for k in sorted(out)]


# -- Cityscapes ----------------------------------------------------------------------------------

def _train_extra(root: Path, n: int = 3) -> None:
    for i in range(n):
        city = ("augsburg", "bad-honnef")[i % 2]
        _png(root / "leftImg8bit" / "train_extra" / city / f"{city}_{i:06d}_000000_leftImg8bit.png", _rgb(32, 64, i))


def test_cityscapes_train_extra_lists_images_without_labels(tmp_path):
    root = Path(make_cityscapes(str(tmp_path / "cs")))  # train with gtFine
    _train_extra(root)
    assert not (root / "gtFine" / "train_extra").exists()
    src = create_source("cityscapes", str(root), "train_extra")
    items = src.items()
    assert [it.key for it in items] == ["augsburg/augsburg_000000_000000", "augsburg/augsburg_000002_000000",
                                        "bad-honnef/bad-honnef_000001_000000"]
    assert all(it.label is None for it in items)
    rgb, lab = src.load(items[0])
    assert rgb.shape == (32, 64, 3) and lab is None
    m = _prepare("cityscapes", str(root), "train_extra", tmp_path / "out")["orig"]
    assert m["num_samples"] == 3 and m["num_failures"] == 0
    assert m["segmentation"]["classes"] == list(CITYSCAPES.classes) and m["segmentation"]["ignore_index"] == 255
    samples = _samples(tmp_path / "out" / "cityscapes" / "train_extra" / "orig")
    assert len(samples) == 3 and not any("seg.png" in s for s in samples)


def test_cityscapes_labels_stay_required_where_the_split_has_gtfine(tmp_path):
    root = Path(make_cityscapes(str(tmp_path / "cs")))
    first = sorted((root / "gtFine" / "train").rglob("*.png"))[0]
    first.unlink()
    src = create_source("cityscapes", str(root), "train")
    missing = [it for it in src.items() if it.label.endswith(first.name)]
    with pytest.raises(SourceError, match="label map missing"):
        src.load(missing[0])
    # a val split with no gtFine folder at all is still a labelled split: its images fail, none is silently unlabelled
    _png(root / "leftImg8bit" / "val" / "aachen" / "aachen_000009_000019_leftImg8bit.png", _rgb(16, 16))
    val = create_source("cityscapes", str(root), "val")
    with pytest.raises(SourceError, match="label map missing"):
        val.load(val.items()[0])


def test_cityscapes_class_list_is_cityscapesscripts_table_and_survives_pickling(tmp_path):
    lut = cityscapes_lut()
    assert np.array_equal(CITYSCAPES.lut()[:256], lut)
    root = make_cityscapes(str(tmp_path / "cs"))
    src = pickle.loads(pickle.dumps(create_source("cityscapes", root, "train")))  # as a Ray worker receives it
    rgb, lab = src.load(src.items()[0])
    assert lab.shape == rgb.shape[:2] and lab.max() <= 255
    m = _prepare("cityscapes", root, "train", tmp_path / "out")["orig"]
    assert m["segmentation"] == CITYSCAPES.to_manifest()
    assert variant_class_list(str(tmp_path / "out" / "cityscapes" / "train" / "orig")) == CITYSCAPES


# -- segfolder -----------------------------------------------------------------------------------

def _segfolder(root: Path, classes: list[dict], ignore: int = 255) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"name": "garments", "ignore_index": ignore, "classes": classes}))


GARMENTS = [{"name": "background", "label_id": 3, "group": "big"}, {"name": "shirt", "label_id": 1000, "group": "small"},
            {"name": "coat", "label_id": 7, "group": "big"}]


def test_segfolder_maps_label_ids_and_unlisted_ids_to_ignore(tmp_path):
    root = tmp_path / "sf"
    _segfolder(root, GARMENTS)
    ids16 = np.array([[3, 1000, 7, 0], [5, 3, 65535, 1000]], np.uint16)  # 0, 5, 65535: listed by no class
    _png(root / "images" / "train" / "a" / "x.jpg", _rgb(2, 4))
    _png(root / "labels" / "train" / "a" / "x.png", ids16)
    _png(root / "images" / "train" / "y.png", _rgb(2, 4, 1))
    _png(root / "labels" / "train" / "y.png", np.array([[3, 7, 9, 7], [7, 7, 3, 200]], np.uint8))
    src = create_source("segfolder", str(root), "train")
    assert src.classes == ["background", "shirt", "coat"]
    items = {it.key: it for it in src.items()}
    assert sorted(items) == ["a/x", "y"]
    _, lab = src.load(items["a/x"])
    assert lab.dtype == np.uint8 and lab.tolist() == [[0, 1, 2, 255], [255, 0, 255, 1]]
    _, lab = src.load(items["y"])
    assert lab.tolist() == [[0, 2, 255, 2], [2, 2, 0, 255]]


def test_segfolder_shards_carry_train_ids_and_the_manifest_block(tmp_path):
    root = tmp_path / "sf"
    _segfolder(root, GARMENTS[:2], ignore=200)
    for i in range(2):
        _png(root / "images" / "val" / f"im{i}.png", _rgb(20, 24, i))
        _png(root / "labels" / "val" / f"im{i}.png", np.where(np.arange(24)[None, :] < 12, 3, 1000).repeat(20, 0).astype(np.uint16))
    _png(root / "images" / "train_extra" / "u0.png", _rgb(20, 24, 5))  # no labels/train_extra: images only
    ms = _prepare("segfolder", str(root), "val", tmp_path / "out", codecs=[])
    block = {"name": "garments", "classes": ["background", "shirt"], "small": ["shirt"], "ignore_index": 200,
             "label_ids": [3, 1000]}
    assert ms["orig"]["segmentation"] == block and ms["orig"]["task"] == "segmentation"
    vdir = tmp_path / "out" / "segfolder" / "val" / "orig"
    cl = variant_class_list(str(vdir))
    assert cl.classes == ("background", "shirt") and cl.small == ("shirt",) and cl.ignore_index == 200
    seg = np.asarray(Image.open(io.BytesIO(_samples(vdir)[0]["seg.png"])))
    assert seg.shape == (20, 24) and (seg[:, :12] == 0).all() and (seg[:, 12:] == 1).all()
    extra = _prepare("segfolder", str(root), "train_extra", tmp_path / "out", codecs=[])["orig"]
    assert extra["num_samples"] == 1 and extra["segmentation"] == block
    assert "seg.png" not in _samples(tmp_path / "out" / "segfolder" / "train_extra" / "orig")[0]


@pytest.mark.parametrize("classes, ignore, message", [
    ([{"name": "a", "label_id": 1}, {"name": "b", "label_id": 1}], 255, "one label id to two classes"),
    ([{"name": "a", "label_id": 1}, {"name": "a", "label_id": 2}], 255, "names a class twice"),
    ([{"name": "a", "label_id": 1}, {"name": "b", "label_id": 2}], 1, "ignore_index must be an integer from 2"),
    ([{"name": "a", "label_id": 1, "group": "tiny"}], 255, "use \"small\" or \"big\""),
    ([{"name": "a", "label_id": "1"}], 255, "integer \"label_id\""),
    ([], 255, "non-empty \"classes\""),
])
def test_bad_class_lists_are_one_line_errors(tmp_path, classes, ignore, message):
    root = tmp_path / "sf"
    _segfolder(root, classes, ignore)
    (root / "images" / "train").mkdir(parents=True)
    with pytest.raises(SourceError, match=message) as e:
        create_source("segfolder", str(root), "train")
    assert "classes.json" in str(e.value) and "\n" not in str(e.value)


def test_manifests_without_the_block_are_cityscapes_and_restored_variants_inherit_it(tmp_path):
    assert from_manifest({"task": "segmentation", "classes": list(CITYSCAPES.classes)}) == CITYSCAPES
    cl = parse_classes_json(json.dumps({"name": "g", "classes": GARMENTS}))
    split = tmp_path / "ds" / "val"
    for v, m in (("jpeg-q5", {"segmentation": cl.to_manifest()}), ("jpeg-q5+restored", {"restored_from": {"variant": "jpeg-q5"}})):
        (split / v).mkdir(parents=True)
        (split / v / "_manifest.json").write_text(json.dumps({"format": "lossyvision-shards/1", "task": "segmentation", **m}))
    assert variant_class_list(str(split / "jpeg-q5+restored")) == cl
    with pytest.raises(ClassListError, match="ignore_index"):
        ClassList("x", ("a", "b"), ignore_index=1)


# -- class-list-driven evaluation ----------------------------------------------------------------

def _two_class_case() -> tuple[np.ndarray, np.ndarray]:
    """10x10: columns 0-5 background, 6-9 building, last row ignored; the prediction says building from
    column 5 on (one background column wrong) and anything at all on the ignored row."""
    label = np.zeros((10, 10), np.uint8)
    label[:, 6:] = 1
    label[9] = 255
    pred = np.zeros((10, 10), np.int64)
    pred[:, 5:] = 1
    pred[9] = np.arange(10) % 2
    return pred, label


def test_two_class_scores_are_the_hand_count():
    pred, label = _two_class_case()
    cm = confusion_matrix(pred, label, INRIA.num_classes, INRIA.ignore_index)
    # rows = truth: background 54 px (45 right, 9 called building), building 36 px (all right)
    assert cm.tolist() == [[45, 9], [0, 36]]
    s = scores_from_confusion(cm, INRIA.classes, INRIA.small)
    assert s.iou_pct["background"] == pytest.approx(100 * 45 / 54)  # TP / (TP + FN + FP) = 45 / (45 + 9 + 0)
    assert s.iou_pct["building"] == pytest.approx(80.0)  # 36 / (36 + 0 + 9)
    assert s.miou_pct == pytest.approx((100 * 45 / 54 + 80.0) / 2)
    assert s.pixel_accuracy_pct == pytest.approx(90.0) and s.pixels == 90
    assert np.isnan(s.miou_small_pct) and s.miou_big_pct == pytest.approx(s.miou_pct)  # INRIA: no small group
    rec = result_record(cm, 1, "orig", "orig", None, None, class_list=INRIA)
    assert rec["classes"] == ["background", "building"] and rec["dataset"] == "inria"


class _ColumnModel(torch.nn.Module):
    """A fixed rule, not a trained net: class 1 from image column 5 on, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(x.shape[-1], device=x.device).expand(x.shape[0], x.shape[-2], -1)
        one = (cols >= 5).float()
        return torch.stack([1 - one, one], 1)


def test_two_class_segfolder_shards_evaluate_to_the_hand_count(tmp_path):
    root = tmp_path / "sf"
    _segfolder(root, [{"name": "background", "label_id": 0}, {"name": "building", "label_id": 255}], ignore=100)
    _, label = _two_class_case()
    ids = np.where(label == 1, 255, np.where(label == 255, 42, 0)).astype(np.uint8)  # 42: listed by no class
    for i in range(2):
        _png(root / "images" / "val" / f"t{i}.png", _rgb(10, 10, i))
        _png(root / "labels" / "val" / f"t{i}.png", ids)
    _prepare("segfolder", str(root), "val", tmp_path / "out", codecs=[])
    vdir = tmp_path / "out" / "segfolder" / "val" / "orig"
    cl = variant_class_list(str(vdir))
    cm, n = evaluate_model(_ColumnModel(), str(vdir), torch.device("cpu"), num_classes=cl.num_classes,
                           ignore_index=cl.ignore_index, quiet=True)
    assert n == 2 and cm.tolist() == [[90, 18], [0, 72]]
    s = scores_from_confusion(cm, cl.classes, cl.small)
    assert s.iou_pct == pytest.approx({"background": 100 * 45 / 54, "building": 80.0})


# -- INRIA Aerial ---------------------------------------------------------------------------------

def _tif(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format="TIFF")


def test_inria_maps_255_to_building_and_splits_by_city(tmp_path):
    base = tmp_path / "inria" / "AerialImageDataset"
    gt = np.zeros((8, 12), np.uint8)
    gt[2:6, 3:9] = 255
    gt[0, 0] = 128  # not a gt value: ignored
    for city in ("austin", "tyrol-w", "vienna"):
        for n in (1, 2):
            _tif(base / "train" / "images" / f"{city}{n}.tif", _rgb(8, 12, n))
            _tif(base / "train" / "gt" / f"{city}{n}.tif", gt)
    _tif(base / "test" / "images" / "bellingham1.tif", _rgb(8, 12))
    train = create_source("inria", str(tmp_path / "inria"), "train")
    assert [it.key for it in train.items()] == ["austin/austin1", "austin/austin2", "tyrol-w/tyrol-w1", "tyrol-w/tyrol-w2"]
    assert [it.key for it in create_source("inria", str(base), "val").items()] == ["vienna/vienna1", "vienna/vienna2"]
    rgb, lab = train.load(train.items()[0])
    assert rgb.shape == (8, 12, 3) and train.classes == ["background", "building"]
    want = np.zeros((8, 12), np.uint8)
    want[2:6, 3:9] = 1
    want[0, 0] = 255
    assert np.array_equal(lab, want)
    extra = create_source("inria", str(base), "train_extra")
    assert [(it.key, it.label) for it in extra.items()] == [("bellingham/bellingham1", None)]
    with pytest.raises(SourceError, match="inria has the splits"):
        create_source("inria", str(base), "test")


# -- Semantic Drone Dataset -----------------------------------------------------------------------

def test_patch_grid_geometry():
    boxes = SDD_GRID.boxes()
    assert len(boxes) == SDD_GRID.count == 12 and all((w, h) == (1200, 800) for *_, w, h in boxes)
    assert [b[:2] for b in boxes[:5]] == [(0, 0), (600, 0), (1200, 0), (1800, 0), (0, 600)]
    assert boxes[-1][:2] == (1800, 1200) and boxes[-1][0] + 1200 == 3000 and boxes[-1][1] + 800 == 2000
    assert PatchGrid(10, 10, 10, 10, 1, 1).boxes() == [(0, 0, 10, 10)]


def _palette() -> np.ndarray:
    return np.random.default_rng(99).integers(0, 256, (24, 3), dtype=np.uint8)


def _sdd(root: Path, stems: list[str], h: int = 200, w: int = 300) -> dict[str, np.ndarray]:
    """SDD's release layout at 1/20 of its 6000x4000 (a factor of 10 below the 3000x2000 frame)."""
    base = root / "dataset" / "semantic_drone_dataset"
    labels = {}
    for i, stem in enumerate(stems):
        yy, xx = np.mgrid[:h, :w]
        ids = ((xx // 7 + yy // 5 + i) % 24).astype(np.uint8)  # every SDD id, ignored ones included
        palette = _palette()
        base.joinpath("original_images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(palette[ids]).save(base / "original_images" / f"{stem}.jpg", quality=98, subsampling=0)
        _png(base / "label_images_semantic" / f"{stem}.png", ids)
        labels[stem] = ids
    return labels


def test_sdd_cuts_12_aligned_patches_per_image(tmp_path):
    ids = _sdd(tmp_path / "sdd", ["001", "000"])["000"]
    src = create_source("sdd", str(tmp_path / "sdd"), "all")
    items = src.items()
    assert [it.key for it in items[:12]] == [f"000__p{k:02d}" for k in range(12)] and len(items) == 24
    palette = _palette().astype(np.int32)
    train_ids = SDD.lut()[ids]
    for k, (x0, y0, w, h) in enumerate(SDD_GRID.boxes()):
        rgb, lab = src.load(items[k])
        assert rgb.shape == (800, 1200, 3) and lab.shape == (800, 1200) and lab.dtype == np.uint8
        yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w]
        # labels: nearest at exactly 10x, so pixel (y, x) of the frame is source pixel (y // 10, x // 10)
        assert np.array_equal(lab, train_ids[yy // 10, xx // 10])
        # the image moved with them: block centres keep the colour of their label id
        py, px = np.flatnonzero((np.arange(h) + y0) % 10 == 5), np.flatnonzero((np.arange(w) + x0) % 10 == 5)
        src_ids = ids[np.ix_((y0 + py) // 10, (x0 + px) // 10)]
        err = np.abs(rgb[np.ix_(py, px)].astype(np.int32) - palette[src_ids]).mean()
        assert err < 12, (k, err)
    assert set(np.unique(train_ids)) == set(range(20)) | {255}  # 20 classes, 4 ids ignored


def test_sdd_splits_and_prepared_patches(tmp_path):
    stems = [f"{i:03d}" for i in range(0, 16, 2)]
    parts = {s: sdd_split(stems, s) for s in ("train", "val", "train_extra")}
    assert [len(p) for p in parts.values()] == [5, 1, 2]  # 265/70/65 of 400
    assert sum(parts.values(), []) == sorted(stems) == sdd_split(stems, "all")
    assert len(sdd_split([f"{i:03d}" for i in range(400)], "val")) == 70
    _sdd(tmp_path / "sdd", ["000"], h=40, w=60)
    m = _prepare("sdd", str(tmp_path / "sdd"), "all", tmp_path / "out", codecs=[], orig_format="qoi")["orig"]
    assert m["num_samples"] == 12 and m["num_failures"] == 0 and m["segmentation"] == SDD.to_manifest()
    assert len(m["segmentation"]["classes"]) == 20
    s = _samples(tmp_path / "out" / "sdd" / "all" / "orig")
    assert [x["__key__"] for x in s] == [f"000__p{k:02d}" for k in range(12)]
    assert json.loads(s[5]["json"])["w"] == 1200 and json.loads(s[5]["json"])["h"] == 800
    assert os.path.basename(json.loads(s[5]["json"])["source"]) == "000.jpg"


def test_train_segmentation_takes_its_classes_from_the_manifest(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from lossyvision.train.segmentation import SegmentationConfig, train_segmentation

    root = tmp_path / "sf"
    _segfolder(root, GARMENTS)
    ids = np.full((32, 32), 3, np.uint16)
    ids[8:20, 8:20], ids[:, 26:] = 1000, 7
    for split in ("train", "val"):
        for i in range(2):
            _png(root / "images" / split / f"g{i}.png", _rgb(32, 32, i))
            _png(root / "labels" / split / f"g{i}.png", ids)
        _prepare("segfolder", str(root), split, tmp_path / "out", codecs=[])
    summary = train_segmentation(SegmentationConfig(
        shards=str(tmp_path / "out" / "segfolder"), out_dir=str(tmp_path / "run"), encoder="resnet18",
        encoder_weights=None, crop_size=32, batch_size=2, steps=1, num_workers=0, quiet=True))
    ckpt = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert ckpt["arch"]["num_classes"] == 3 and ckpt["segmentation"]["classes"] == ["background", "shirt", "coat"]
    rec = json.loads((tmp_path / "run" / "results" / "orig__orig.json").read_text())
    assert rec["classes"] == ["background", "shirt", "coat"] and set(rec["iou_pct"]) == set(rec["classes"])
    assert summary["miou_pct"] == rec["miou_pct"]
    assert "| background | shirt | coat |" in (tmp_path / "run" / "results.md").read_text()
