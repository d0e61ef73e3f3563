"""A small generated Cityscapes-layout shard set (docs/shards.md) with real label maps.

Label maps are drawn in Cityscapes *labelIds* (road, sidewalk, building, sky, car, person,
pole, and ignored ids such as unlabeled, ego vehicle and static) and mapped to train ids
with cityscapesscripts' `labels` table, exactly as a Cityscapes source does. Images are the
class colours plus texture. Variants: `orig` (PNG) and `jpeg-q<N>` (Pillow JPEG bitstreams).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def label_id_to_train_id() -> np.ndarray:
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, 255, np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < 255:
            lut[lab.id] = lab.trainId
    return lut


def _label_ids(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    from cityscapesscripts.helpers.labels import name2label

    ids = np.full((h, w), name2label["building"].id, np.uint8)
    ids[: h // 4] = name2label["sky"].id
    ids[h * 2 // 3:] = name2label["road"].id
    ids[h * 2 // 3:, : w // 5] = name2label["sidewalk"].id
    ids[h - h // 10:, w // 3: w * 2 // 3] = name2label["ego vehicle"].id  # ignored (255)
    for _ in range(2):
        y, x = rng.integers(h // 2, h - h // 5), rng.integers(0, w - w // 4)
        ids[y: y + h // 8, x: x + w // 5] = name2label["car"].id
        ids[y + h // 16: y + h // 12, x + 2: x + 6] = name2label["unlabeled"].id  # ignored (255)
    x = rng.integers(w // 4, w - 4)
    ids[h // 4: h * 2 // 3, x: x + 2] = name2label["pole"].id
    y, x = rng.integers(h // 3, h // 2), rng.integers(0, w - 6)
    ids[y: y + h // 6, x: x + 4] = name2label["person"].id
    ids[h // 3: h // 3 + 3, w // 2: w // 2 + 3] = name2label["static"].id  # ignored
    return ids


def _image(rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
    from cityscapesscripts.helpers.labels import id2label

    rgb = np.zeros(ids.shape + (3,), np.float32)
    for i in np.unique(ids):
        rgb[ids == i] = id2label[int(i)].color
    yy, xx = np.mgrid[: ids.shape[0], : ids.shape[1]]
    rgb += 25 * np.sin(xx / 3.0 + yy / 5.0)[..., None] + rng.normal(0, 12, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_variant(split_dir: Path, variant: str, samples: list[dict], shard_size: int, codec: dict | None) -> None:
    import webdataset as wds

    out = split_dir / variant
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for i in range(0, len(samples), shard_size):
        chunk = samples[i: i + shard_size]
        name = f"shard-{i // shard_size:06d}.tar"
        with wds.TarWriter(str(out / name)) as w:
            for s in chunk:
                w.write(s)
        shards.append({"name": name, "index": i // shard_size, "count": len(chunk),
                       "first_key": chunk[0]["__key__"], "last_key": chunk[-1]["__key__"]})
    means = {}
    if codec is not None:
        stats = [json.loads(s["json"]) for s in samples]
        means = {k: float(np.mean([st[k] for st in stats])) for k in ("bytes", "bpp", "psnr", "ssim")}
    manifest = {"format": "lossyvision-shards/1", "dataset": "cityscapes", "split": split_dir.name,
                "variant": variant, "task": "segmentation", "codec": codec, "shard_size": shard_size,
                "shards": shards, "num_samples": len(samples), "means": means, "failures": [], "complete": True}
    (out / "_manifest.json").write_text(json.dumps(manifest))


def make_cityscapes_shards(root: Path, split: str = "train", n: int = 4, h: int = 64, w: int = 128,
                           shard_size: int = 2, qualities: tuple[int, ...] = (10,), seed: int = 0) -> Path:
    """Write ROOT/cityscapes/<split>/{orig,jpeg-q..}; return ROOT/cityscapes."""
    from lossyvision.quality import psnr, ssim

    rng = np.random.default_rng(seed)
    lut = label_id_to_train_id()
    split_dir = Path(root) / "cityscapes" / split
    cities = ["aachen", "bochum"]
    items = []
    for i in range(n):
        key = f"{split}/{cities[i % 2]}/{cities[i % 2]}_{i:06d}_000019"
        ids = _label_ids(rng, h, w)
        items.append((key, _image(rng, ids), lut[ids]))
    items.sort(key=lambda t: t[0])
    orig = [{"__key__": k, "png": _png(rgb), "seg.png": _png(seg),
             "json": json.dumps({"h": h, "w": w, "source": k}).encode()} for k, rgb, seg in items]
    _write_variant(split_dir, "orig", orig, shard_size, None)
    for q in qualities:
        spec = f"jpeg-q{q}"
        samples = []
        for k, rgb, seg in items:
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=q)
            data = buf.getvalue()
            dec = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            st = {"bytes": len(data), "bpp": len(data) * 8 / (h * w), "h": h, "w": w, "psnr": psnr(dec, rgb),
                  "ssim": ssim(dec, rgb), "ms_ssim": None, "q": q, "spec": spec}
            samples.append({"__key__": k, "jpg": data, "seg.png": _png(seg), "json": json.dumps(st).encode()})
        _write_variant(split_dir, spec, samples, shard_size,
                       {"name": "jpeg", "spec": spec, "ext": "jpg", "params": {"q": q}, "versions": {}})
    return Path(root) / "cityscapes"


def make_cityscapes_folder(root: Path, split: str = "train", n: int = 4, h: int = 64, w: int = 128,
                           seed: int = 0) -> Path:
    """Write a Cityscapes source tree (leftImg8bit/ + gtFine/*_gtFine_labelIds.png); return its root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for i in range(n):
        city = ["aachen", "bochum"][i % 2]
        base = f"{city}_{i:06d}_000019"
        ids = _label_ids(rng, h, w)
        img_dir, lab_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(rng, ids)).save(img_dir / f"{base}_leftImg8bit.png")
        Image.fromarray(ids).save(lab_dir / f"{base}_gtFine_labelIds.png")
    return root
