"""Shared fixtures: real photos (scikit-image's) and small datasets in the real on-disk layouts."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import pytest
from PIL import Image

pytest_plugins = ["tests.s3server"]  # s3_endpoint, s3_bucket: a local S3 stand-in

RGB_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(getattr(skimage.data, name)())


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Four real RGB photos, centre-cropped to 224x224 (paper 1's input size)."""
    out = []
    for n in RGB_PHOTOS:
        a = _photo(n)
        h, w = a.shape[:2]
        s = min(h, w)
        a = np.asarray(Image.fromarray(a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]).resize((224, 224), Image.BICUBIC))
        out.append(np.ascontiguousarray(a))
    return out


@pytest.fixture(scope="session")
def photo(photos) -> np.ndarray:
    return photos[0]


def _save_jpeg(a: np.ndarray, path: str, mode: str | None = None) -> None:
    im = Image.fromarray(a)
    if mode:
        im = im.convert(mode)
    im.save(path, "JPEG", quality=90)


WNIDS = ("n01440764", "n01443537", "n01484850")


def _tile(i: int, size=(300, 260)) -> np.ndarray:
    """A real-photo tile, different for each i."""
    a = _photo(RGB_PHOTOS[i % len(RGB_PHOTOS)])
    w, h = size
    y = (i * 37) % max(1, a.shape[0] - h)
    x = (i * 53) % max(1, a.shape[1] - w)
    return np.ascontiguousarray(a[y : y + h, x : x + w])


def make_imagenet(root: str, per_class: int = 3, val_form: str = "folders", odd: bool = True) -> str:
    """ILSVRC2012 layout: train/<wnid>/*.JPEG and val/ (wnid folders, 'loc' csv or 'devkit' files)."""
    os.makedirs(root, exist_ok=True)
    k = 0
    for split in ("train", "val"):
        rows = []
        for ci, w in enumerate(WNIDS):
            for j in range(per_class):
                k += 1
                if split == "train" or val_form == "folders":
                    d = os.path.join(root, split, w)
                    name = f"{w}_{k}.JPEG" if split == "train" else f"ILSVRC2012_val_{k:08d}.JPEG"
                else:
                    d = os.path.join(root, split)
                    name = f"ILSVRC2012_val_{k:08d}.JPEG"
                os.makedirs(d, exist_ok=True)
                _save_jpeg(_tile(k), os.path.join(d, name))
                rows.append((os.path.splitext(name)[0], w))
        if split == "val" and val_form == "loc":
            with open(os.path.join(root, "LOC_val_solution.csv"), "w", newline="") as f:
                wr = csv.writer(f)
                wr.writerow(["ImageId", "PredictionString"])
                for img_id, w in rows:
                    wr.writerow([img_id, f"{w} 1 2 30 40"])
        if split == "val" and val_form == "devkit":
            from scipy.io import savemat

            ids = {w: i + 1 for i, w in enumerate(WNIDS)}  # ILSVRC2012_ID 1..N
            dt = np.dtype([("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
                           ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")])
            syn = np.array([(ids[w], w, w, "", 0, np.zeros(0), 0, per_class) for w in WNIDS], dtype=dt)
            d = os.path.join(root, "ILSVRC2012_devkit_t12", "data")
            os.makedirs(d, exist_ok=True)
            savemat(os.path.join(d, "meta.mat"), {"synsets": syn})
            with open(os.path.join(d, "ILSVRC2012_validation_ground_truth.txt"), "w") as f:
                for _, w in sorted(rows):
                    f.write(f"{ids[w]}\n")
    if odd:
        d = os.path.join(root, "val", WNIDS[0]) if val_form == "folders" else os.path.join(root, "val")
        base = "ILSVRC2012_val_9000" if val_form != "folders" else "odd"
        _save_jpeg(_tile(90), os.path.join(d, f"{base}0001.JPEG"), mode="CMYK")
        _save_jpeg(_tile(91), os.path.join(d, f"{base}0002.JPEG"), mode="L")
        # ImageNet's famous PNG-named-JPEG, with an alpha channel here
        rgba = np.dstack([_tile(92), np.full((260, 300), 200, np.uint8)])
        Image.fromarray(rgba).save(os.path.join(d, f"{base}0003.JPEG"), "PNG")
        import imagecodecs

        g16 = (_tile(93)[..., 0].astype(np.uint16) * 257)
        with open(os.path.join(d, f"{base}0004.JPEG"), "wb") as f:
            f.write(imagecodecs.png_encode(g16))
        buf = io.BytesIO()
        Image.fromarray(_tile(94)).save(buf, "JPEG", quality=90)
        with open(os.path.join(d, f"{base}0005.JPEG"), "wb") as f:
            f.write(buf.getvalue()[: len(buf.getvalue()) // 3])  # truncated
        open(os.path.join(d, f"{base}0006.JPEG"), "wb").close()  # zero bytes
        if val_form != "folders":
            labels = {f"{base}000{i}": WNIDS[i % 3] for i in range(1, 7)}
            if val_form == "loc":
                with open(os.path.join(root, "LOC_val_solution.csv"), "a", newline="") as f:
                    for img_id, w in labels.items():
                        csv.writer(f).writerow([img_id, f"{w} 1 2 3 4"])
    return root


# Real Cityscapes label ids: 7 road, 8 sidewalk, 11 building, 21 vegetation, 23 sky, 24 person,
# 26 car, 0 unlabeled, 1 ego vehicle (ignored), 5 dynamic (ignored).
CITY_IDS = np.array([7, 8, 11, 21, 23, 24, 26, 0, 1, 5], dtype=np.uint8)


def make_cityscapes(root: str, split: str = "train", n: int = 4, size=(256, 128)) -> str:
    w, h = size
    for i in range(n):
        city = ("aachen", "bochum")[i % 2]
        base = f"{city}_{i:06d}_000019"
        d = os.path.join(root, "leftImg8bit", split, city)
        g = os.path.join(root, "gtFine", split, city)
        os.makedirs(d, exist_ok=True)
        os.makedirs(g, exist_ok=True)
        Image.fromarray(_tile(i, (w, h))).save(os.path.join(d, base + "_leftImg8bit.png"))
        rng = np.random.default_rng(i)
        blocks = rng.integers(0, len(CITY_IDS), size=(h // 16, w // 16))
        ids = CITY_IDS[np.kron(blocks, np.ones((16, 16), dtype=int))].astype(np.uint8)
        Image.fromarray(ids).save(os.path.join(g, base + "_gtFine_labelIds.png"))
    return root


@pytest.fixture
def imagenet_root(tmp_path) -> str:
    return make_imagenet(str(tmp_path / "ILSVRC2012"))


@pytest.fixture
def cityscapes_root(tmp_path) -> str:
    return make_cityscapes(str(tmp_path / "cityscapes"))
