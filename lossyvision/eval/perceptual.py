"""Paper 2, Fig. 9: a no-reference perceptual index of original, compressed and restored images.

The paper used HOSA (Xu et al. 2016), whose codebook ships with no maintained library. This uses
BRISQUE (Mittal et al. 2012) from the ``brisque`` package, which ships its trained SVR model in the
wheel and so runs offline; like HOSA it is a blind index where lower means more natural-looking
(roughly 0-100). docs/restoration.md says which other libraries were tried and why they cannot run
here. Per variant: each image's index, their mean (Fig. 9a), and their distribution (Fig. 9b, a
histogram per variant).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from lossyvision import storage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

INDEX = "brisque"


def brisque_scorer() -> Callable[[np.ndarray], float]:
    """uint8 HxWx3 RGB -> BRISQUE index (lower: more natural), with the package's bundled model."""
    import warnings

    from lossyvision.extras import require

    with warnings.catch_warnings():  # brisque imports scipy.ndimage.filters, a deprecated alias
        warnings.simplefilter("ignore", DeprecationWarning)
        mod = require("brisque", "segmentation", "the perceptual index (perceptual-index)", "brisque")

    class _Brisque(mod.BRISQUE):
        # brisque 0.2.0 converts its features with float(), which NumPy 2 refuses for the one-element
        # arrays some of them are; taking the element gives the value older NumPy versions did
        def scale_features(self, features: np.ndarray) -> np.ndarray:
            flat = np.array([np.asarray(f, dtype=np.float64).reshape(-1)[0] for f in features])
            return super().scale_features(flat)

    scorer = _Brisque(url=False)

    def score(rgb: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(scorer.score(np.ascontiguousarray(rgb)))

    return score


@dataclass
class PerceptualConfig:
    shards: str = ""                # ROOT/<dataset> (a local path or an fsspec URL)
    variants: list[str] = field(default_factory=lambda: ["orig"])  # e.g. orig, bpg-qp41, bpg-qp41+restored
    split: str = "val"
    out_dir: str = "runs/perceptual-index"
    max_images: int | None = None   # the first N images of each variant
    max_pixels: int | None = None
    quiet: bool = False
    formats: tuple[str, ...] = ("png",)

    def __post_init__(self) -> None:
        from lossyvision.names import check_name
        from lossyvision.pipelines.stream import OptionError, check_limits

        from .figures import parse_formats

        self.formats = parse_formats(list(self.formats))
        self.variants = [check_name("--variant", v) for v in self.variants]
        check_name("--split", self.split)
        check_limits(limit=self.max_images, max_pixels=self.max_pixels)
        if not self.variants:
            raise OptionError("give the variants to score with --variant (repeatable)")

    def to_dict(self) -> dict:
        return asdict(self)


def score_variant(variant_dir: str, score: Callable[[np.ndarray], float], max_images: int | None = None,
                  max_pixels: int | None = None, quiet: bool = False) -> dict[str, float]:
    """key -> index for the variant's first ``max_images`` images, in shard order."""
    from lossyvision.pipelines.stream import ShardStream
    from lossyvision.progress import progress

    stream = ShardStream(variant_dir, rank=0, world_size=1, max_pixels=max_pixels)
    total = len(stream) if max_images is None else min(len(stream), max_images)
    out: dict[str, float] = {}
    with progress(stream, total=total, desc=f"{INDEX} {stream.variant.variant}", unit="img", quiet=quiet) as bar:
        for x, _y, key in bar:
            if len(out) >= total:
                break
            out[key] = score(x.permute(1, 2, 0).numpy())
    return out


def _stats(v: list[float]) -> dict[str, float]:
    a = np.asarray(v, np.float64)
    a = a[np.isfinite(a)]
    if not a.size:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "images": 0}
    return {"mean": float(a.mean()), "std": float(a.std()), "median": float(np.median(a)), "images": int(a.size)}


def index_figure(scores: dict[str, list[float]], split: str) -> Figure:
    """Fig. 9b: the distribution of the index per variant (histograms on shared bins)."""
    from .figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    finite = {k: np.asarray(v, np.float64)[np.isfinite(v)] for k, v in scores.items()}
    allv = np.concatenate([v for v in finite.values() if v.size] or [np.zeros(1)])
    bins = np.linspace(float(allv.min()), float(allv.max()) + 1e-9, 25)
    for name, v in finite.items():
        if v.size:
            ax.hist(v, bins=bins, histtype="step", linewidth=1.5, density=True,
                    label=f"{name} (mean {v.mean():.1f})")
    n = max((len(v) for v in scores.values()), default=0)
    ax.set_title(f"BRISQUE perceptual index, {n} {split} images (lower: more natural)", fontsize=10)
    ax.set_xlabel("BRISQUE")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def perceptual_index(cfg: PerceptualConfig) -> dict:
    """Score each variant; write OUT/perceptual.{json,csv,md} and OUT/perceptual_index.<format>."""
    from lossyvision.pipelines.stream import variant_dir

    from .figures import save

    split_dir = storage.join(cfg.shards, cfg.split)
    dirs = {v: variant_dir(split_dir, v) for v in cfg.variants}
    score = brisque_scorer()
    per_image: dict[str, dict[str, float]] = {}
    keys: list[str] | None = None
    for v, d in dirs.items():
        per_image[v] = score_variant(d, score, cfg.max_images if keys is None else len(keys), cfg.max_pixels, cfg.quiet)
        if keys is None:
            keys = list(per_image[v])
        elif list(per_image[v]) != keys:
            raise ValueError(f"{v} and {cfg.variants[0]} do not hold the same images in the same order")
    keys = keys or []
    summary = {"index": INDEX, "library": _library_version(), "split": cfg.split, "images": len(keys),
               "variants": {v: _stats(list(s.values())) for v, s in per_image.items()}}
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "perceptual.json").write_text(json.dumps(_finite({**summary, "per_image": per_image}), indent=1) + "\n")
    with (out / "perceptual.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", *cfg.variants])
        for k in keys:
            w.writerow([k, *(f"{per_image[v][k]:.4f}" for v in cfg.variants)])
    lines = [f"BRISQUE perceptual index (lower: more natural), {len(keys)} {cfg.split} images.", "",
             "| variant | mean | std | median |", "|---|---|---|---|"]
    for v, s in summary["variants"].items():
        lines.append(f"| {v} | {s['mean']:.2f} | {s['std']:.2f} | {s['median']:.2f} |")
    (out / "perceptual.md").write_text("\n".join(lines) + "\n")
    plots = save(index_figure({v: list(s.values()) for v, s in per_image.items()}, cfg.split),
                 out / "perceptual_index", cfg.formats)
    return {**summary, "files": [str(out / f"perceptual.{e}") for e in ("json", "csv", "md")] + plots}


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"brisque {version('brisque')}"
    except PackageNotFoundError:
        return "brisque"


def _finite(obj):
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
