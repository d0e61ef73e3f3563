"""A segmentation dataset with real image content and exact labels, in the generic `segfolder` layout.

Fashion-MNIST garments (Zalando's real 28x28 photographs, `apt-get install dataset-fashion-mnist`) are
composited onto crops of the real texture photographs scikit-image ships in its wheel (brick, grass,
gravel, coffee, chelsea, ...), their contrast halved around their mean colour. A garment's alpha comes
from its own intensity (Fashion-MNIST garments lie on black), its colour is a random tint shaded by
that intensity, and the label map is exact: a pixel belongs to the topmost garment whose alpha there
is >= 0.5, else to the background. One class per garment type (four by default) plus `background`;
half of the types are always composited small (`--small-px` 8-16 px: 6-12 % of the image side, as a
pedestrian in a Cityscapes frame), the others big (32-64 px), so Table II's small / big split is by
design; big garments are pasted first, small ones on top.

Splits (`ROOT/images/<split>/`, `ROOT/labels/<split>/`, `ROOT/classes.json`):
- `train`: labelled, garments from Fashion-MNIST train images 0-19 999 (the segmentation training set);
- `train_extra`: images only (like Cityscapes' train_extra), garments from train images 20 000-39 999,
  for the restoration GAN, so it never sees a segmentation training image;
- `val`: labelled, garments from the Fashion-MNIST test split.
Train images 40 000-59 999 are left for seg_pretrain.py's encoder pretraining. The textures are shared
by all splits (other random crops), as Cityscapes' cities share their kind of streets. Every image is
drawn from its own generator seeded by (seed, split, index), so the first N images of a split are the
same whatever the split's size.

    python tools/repro/seg_synth.py --out /tmp/fmnist-seg --train 600 --train-extra 300 --val 200
"""

from __future__ import annotations

import argparse
import colorsys
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# Fashion-MNIST's own order (its label ids 0-9); label_id here is that + 1, 0 is the background
GARMENTS = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
# The default four types have the most distinct outlines (the colour is a random tint, so shape is all
# a model has): a DeepLabv3+ trained for minutes on a CPU left six types' small ones at 0 IoU (measured).
DEFAULT_GARMENTS = ("trouser", "dress", "sneaker", "bag")
DEFAULT_SMALL = ("trouser", "bag")
# real photographs in scikit-image's wheel (no download); grey ones get a random tint
TEXTURES = ("brick", "grass", "gravel", "coffee", "chelsea", "rocket", "astronaut", "immunohistochemistry",
            "hubble_deep_field", "moon", "camera", "coins")
SPLITS = {"train": 0, "train_extra": 1, "val": 2}
IGNORE_INDEX = 255


@dataclass
class SynthConfig:
    out: str = "/tmp/fmnist-seg"
    size: int = 128                          # square images; a multiple of 8 (the restoration generator's stride)
    counts: dict[str, int] = field(default_factory=lambda: {"train": 600, "train_extra": 300, "val": 200})
    seed: int = 0
    small_px: tuple[int, int] = (8, 16)      # garment side (its 28x28 frame scaled to this), inclusive range
    big_px: tuple[int, int] = (32, 64)
    n_small: tuple[int, int] = (4, 8)        # garments per image, inclusive ranges
    n_big: tuple[int, int] = (1, 3)
    zoom: tuple[float, float] = (0.5, 1.5)   # texture pixels per output pixel (the crop's scale)
    contrast: float = 0.5                    # texture contrast around its mean (1: the photo's own)
    garments: tuple[str, ...] = DEFAULT_GARMENTS  # the classes (besides background), Fashion-MNIST names
    small: tuple[str, ...] = DEFAULT_SMALL   # the garments always composited small; the others are big
    fmnist_root: str | None = None           # default: /usr/share/datasets/fashion-mnist

    def __post_init__(self) -> None:
        if self.size % 8 or self.size < 32:
            raise ValueError(f"size must be a multiple of 8 and >= 32, got {self.size}")
        unknown = set(self.counts) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {list(SPLITS)}")
        bad = [g for g in (*self.garments, *self.small) if g not in GARMENTS]
        if bad or not set(self.small) <= set(self.garments) or not self.garments:
            raise ValueError(f"garments must be Fashion-MNIST names ({', '.join(GARMENTS)}) and small a subset "
                             f"of them; got garments={list(self.garments)}, small={list(self.small)}")
        for name, (lo, hi) in (("small_px", self.small_px), ("big_px", self.big_px)):
            if not 2 <= lo <= hi <= self.size:
                raise ValueError(f"{name} must satisfy 2 <= low <= high <= size, got {(lo, hi)}")


def label_id(garment: str) -> int:
    """A garment's label id in the label maps: its Fashion-MNIST label + 1 (0 is the background)."""
    return GARMENTS.index(garment) + 1


def classes_json(cfg: SynthConfig) -> dict:
    """The `segfolder` class list: background first (train id 0), then the garments as configured."""
    classes = [{"name": "background", "label_id": 0, "group": "big"}]
    classes += [{"name": g, "label_id": label_id(g), "group": "small" if g in cfg.small else "big"}
                for g in cfg.garments]
    return {"name": "fmnist-seg", "ignore_index": IGNORE_INDEX, "classes": classes}


def load_textures() -> list[np.ndarray]:
    """The texture photos as float RGB in [0, 1] (grey ones replicated; their tint is drawn per image)."""
    import skimage.data

    out = []
    for name in TEXTURES:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(img[:, :, :3].astype(np.float32) / 255.0)
    return out


# disjoint garment pools: thirds of Fashion-MNIST train (segmentation train, GAN train_extra, encoder
# pretraining) and its test split (val)
POOLS = {"train": ("train", 0, 20_000), "train_extra": ("train", 20_000, 40_000),
         "pretrain": ("train", 40_000, 60_000), "val": ("test", 0, 10_000)}


def load_garments(root: str | None, pool: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 Nx28x28, Fashion-MNIST labels 0-9) of one garment pool of POOLS."""
    from lossyvision.pipelines.fashion_mnist import FashionMNISTSource

    split, lo, hi = POOLS[pool]
    src = FashionMNISTSource(root, split)
    items = src.items()[lo:hi]
    images = np.stack([src.load(it)[0][:, :, 0] for it in items])
    return images, np.array([it.label for it in items], dtype=np.int64)


def background(rng: np.random.Generator, textures: list[np.ndarray], size: int, zoom: tuple[float, float],
               contrast: float = 1.0) -> np.ndarray:
    """A random crop of a random texture photo, rescaled to size x size, flipped, grey ones tinted,
    its contrast scaled by `contrast` around its mean colour."""
    k = int(rng.integers(len(textures)))
    tex = textures[k]
    h, w = tex.shape[:2]
    side = min(int(round(size * rng.uniform(*zoom))), h, w)
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = tex[y:y + side, x:x + side]
    img = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                     dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        img = img[::-1]
    if np.allclose(tex[..., 0], tex[..., 1]):  # a grey photo: tint it
        img = img * rng.uniform(0.55, 1.0, size=3).astype(np.float32)
    if contrast != 1.0:  # towards its own mean colour: garments stand out, the texture stays real
        mean = img.mean((0, 1), keepdims=True)
        img = mean + contrast * (img - mean)
    return np.ascontiguousarray(img)


def tint(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.6, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def paste(img: np.ndarray, label: np.ndarray, garment: np.ndarray, label_id: int, side: int,
          rng: np.random.Generator) -> None:
    """Composite one garment (uint8 28x28) of `side` px at a random place; update the label map in place."""
    g = np.asarray(Image.fromarray(garment).resize((side, side), Image.BILINEAR), dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        g = g[:, ::-1]
    # Fashion-MNIST garments lie on black: intensity >= ~0.12 is the garment, below it a soft edge
    alpha = np.clip(g / 0.12 - 0.5, 0.0, 1.0)[:, :, None]
    shade = g / max(float(g.max()), 1e-6)
    colour = tint(rng)[None, None, :] * (0.35 + 0.65 * shade[:, :, None])
    size = img.shape[0]
    y, x = int(rng.integers(size - side + 1)), int(rng.integers(size - side + 1))
    region = img[y:y + side, x:x + side]
    region[...] = alpha * colour + (1.0 - alpha) * region
    label[y:y + side, x:x + side][alpha[:, :, 0] >= 0.5] = label_id


def compose(rng: np.random.Generator, cfg: SynthConfig, textures: list[np.ndarray],
            by_class: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HxWx3) and its label map (uint8 label ids): big garments first, small on top."""
    img = background(rng, textures, cfg.size, cfg.zoom, cfg.contrast)
    label = np.zeros((cfg.size, cfg.size), dtype=np.uint8)
    small = [label_id(g) for g in cfg.garments if g in cfg.small]
    big = [label_id(g) for g in cfg.garments if g not in cfg.small]
    for ids, px, count in ((big, cfg.big_px, cfg.n_big), (small, cfg.small_px, cfg.n_small)):
        if not ids:
            continue
        for _ in range(int(rng.integers(count[0], count[1] + 1))):
            c = ids[int(rng.integers(len(ids)))]
            pool = by_class[c]
            paste(img, label, pool[int(rng.integers(len(pool)))], c, int(rng.integers(px[0], px[1] + 1)), rng)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), label


def build(cfg: SynthConfig, quiet: bool = False) -> dict:
    """Write the dataset under cfg.out (existing images of the same name are replaced); return a summary."""
    from lossyvision.progress import progress

    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(classes_json(cfg), indent=1) + "\n")
    textures = load_textures()
    names = ("background", *cfg.garments)
    pixels = {g: 0 for g in names}
    for split, n in cfg.counts.items():
        images, labels = load_garments(cfg.fmnist_root, split)
        by_class = {label_id(g): images[labels == GARMENTS.index(g)] for g in cfg.garments}
        img_dir = root / "images" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir = root / "labels" / split if split != "train_extra" else None  # images only, as Cityscapes'
        if lbl_dir is not None:
            lbl_dir.mkdir(parents=True, exist_ok=True)
        with progress(range(n), desc=f"seg_synth {split}", unit="img", quiet=quiet) as bar:
            for i in bar:
                rng = np.random.default_rng([cfg.seed, SPLITS[split], i])
                img, label = compose(rng, cfg, textures, by_class)
                stem = f"{split}-{i:05d}"
                Image.fromarray(img).save(img_dir / f"{stem}.png")
                if lbl_dir is not None:
                    Image.fromarray(label).save(lbl_dir / f"{stem}.png")
                    counts = np.bincount(label.ravel(), minlength=len(GARMENTS) + 1)
                    for name in names:
                        pixels[name] += int(counts[0 if name == "background" else label_id(name)])
    summary = {"config": asdict(cfg), "labelled_pixels": pixels}
    (root / "synth.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _pair(text: str, kind=int) -> tuple:
    lo, _, hi = text.partition(",")
    return kind(lo), kind(hi or lo)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/fmnist-seg", help="dataset root (default: /tmp/fmnist-seg)")
    ap.add_argument("--size", type=int, default=128, help="image side, a multiple of 8 (128)")
    ap.add_argument("--train", type=int, default=600, help="labelled segmentation training images (600)")
    ap.add_argument("--train-extra", type=int, default=300, help="unlabelled images for the restoration GAN (300)")
    ap.add_argument("--val", type=int, default=200, help="labelled validation images (200)")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (0)")
    ap.add_argument("--small-px", default="8,16", help="side range of small garments, px (8,16)")
    ap.add_argument("--big-px", default="32,64", help="side range of big garments, px (32,64)")
    ap.add_argument("--garments", default=",".join(DEFAULT_GARMENTS),
                    help=f"comma-separated Fashion-MNIST classes ({','.join(DEFAULT_GARMENTS)})")
    ap.add_argument("--small", default=",".join(DEFAULT_SMALL),
                    help=f"the garments composited small ({','.join(DEFAULT_SMALL)})")
    ap.add_argument("--fmnist-root", default=None, help="folder of the Fashion-MNIST IDX files "
                    "(default: /usr/share/datasets/fashion-mnist)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    cfg = SynthConfig(out=a.out, size=a.size, counts={"train": a.train, "train_extra": a.train_extra, "val": a.val},
                      seed=a.seed, small_px=_pair(a.small_px), big_px=_pair(a.big_px),
                      garments=tuple(a.garments.split(",")), small=tuple(a.small.split(",")), fmnist_root=a.fmnist_root)
    summary = build(cfg, quiet=a.quiet)
    print(json.dumps(summary["labelled_pixels"]), file=sys.stderr)


if __name__ == "__main__":
    main()
