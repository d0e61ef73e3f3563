"""Paper 2, Fig. 10: are the shallow features of compressed and restored images those of the originals?

One model (the OO model, trained on original images) sees the original, compressed and restored
versions of the same images; a forward hook on one shallow layer records each channel's mean
activation per image (over its spatial positions), averaged over the images (each image weighs
the same). Since the model is the same, the channels are aligned, and plotting a variant's channel
means against the originals' puts the originals on the identity line: the farther a variant's
points lie from it, the more its features drift. The figure has one panel per variant; the numbers
behind it (per-channel means, Pearson r, RMSE and mean absolute deviation from the originals'
means, in percent of their mean magnitude) are written as JSON and CSV.

The layer is a module name of the model (``named_modules``); the default is the encoder's first
residual stage (``encoder.layer1``, stride 4), the shallow features DeepLabv3+ also hands to its
decoder. The paper does not name its layer.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lossyvision import accel, storage
from lossyvision.nets.segmentation import DEFAULT_FEATURE_LAYER, find_layer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


@dataclass
class FeatureConfig:
    checkpoint: str = ""            # the OO model: model.pt from train-segmentation on orig
    shards: str = ""                # ROOT/<dataset> (a local path or an fsspec URL)
    variants: list[str] = field(default_factory=list)  # compressed and restored variants to compare
    orig_variant: str = "orig"
    split: str = "val"
    layer: str = DEFAULT_FEATURE_LAYER
    out_dir: str = "runs/seg-features"
    device: str | None = None
    amp: bool = False               # fp32 by default: the means are what is compared
    max_images: int | None = None   # the first N images of the split
    max_pixels: int | None = None   # None: lossyvision.pipelines.imageio.DEFAULT_MAX_PIXELS
    quiet: bool = False
    formats: tuple[str, ...] = ("png",)

    def __post_init__(self) -> None:
        from lossyvision.names import check_name
        from lossyvision.pipelines.stream import OptionError, check_limits

        from .figures import parse_formats

        self.formats = parse_formats(list(self.formats))
        self.variants = [check_name("--variant", v) for v in self.variants]
        check_name("--orig-variant", self.orig_variant)
        check_name("--split", self.split)
        check_limits(max_images=self.max_images, max_pixels=self.max_pixels)
        if not self.variants:
            raise OptionError("give the compressed and restored variants to compare with --variant (repeatable)")
        if self.orig_variant in self.variants:
            raise OptionError(f"--variant {self.orig_variant} is the reference (--orig-variant); give the others")

    def to_dict(self) -> dict:
        return asdict(self)


class _Stop(Exception):
    """Raised by the hook once the layer's output is recorded: the rest of the model is not needed."""


@torch.no_grad()
def channel_means(model: torch.nn.Module, layer: str, variant_dir: str, device: torch.device, amp: bool = False,
                  max_images: int | None = None, max_pixels: int | None = None,
                  quiet: bool = False) -> tuple[np.ndarray, list[str]]:
    """(mean activation per channel of ``layer`` over the variant's first ``max_images`` images,
    float64 [C]; the keys of those images, in order)."""
    from lossyvision.pipelines.stream import ShardStream, to_device
    from lossyvision.progress import progress

    module = find_layer(model, layer)
    captured: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _inp: tuple, out: torch.Tensor | tuple) -> None:
        t = out[0] if isinstance(out, (tuple, list)) else out
        if t.dim() != 4:
            raise ValueError(f"layer {layer!r} gives a {t.dim()}-d output; pick a convolutional layer (N x C x H x W)")
        captured.append(t.float().mean(dim=(0, 2, 3)).double().cpu())
        raise _Stop

    stream = ShardStream(variant_dir, rank=0, world_size=1, max_pixels=max_pixels)
    total = len(stream) if max_images is None else min(len(stream), max_images)
    dtype = accel.amp_dtype(device, None if amp else False)  # bf16 where native, else fp16; CUDA only
    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    keys: list[str] = []
    try:
        with progress(stream, total=total, desc=f"features {stream.variant.variant}", unit="img", quiet=quiet) as bar:
            for x, _y, key in bar:
                if len(keys) >= total:
                    break
                try:
                    with accel.autocast(device, dtype):
                        model(to_device(x[None], device))
                except _Stop:
                    pass
                if len(captured) != len(keys) + 1:
                    raise ValueError(f"layer {layer!r} did not run on {key!r}: is it part of the forward pass?")
                keys.append(key)
    finally:
        handle.remove()
        model.train(was_training)
    if not keys:
        raise ValueError(f"{variant_dir} holds no images")
    return torch.stack(captured).mean(0).numpy(), keys


def alignment(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """How far ``other``'s channel means lie from ``reference``'s (the identity line of Fig. 10)."""
    ref, oth = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    diff = oth - ref
    scale = float(np.mean(np.abs(ref)))
    r = float(np.corrcoef(ref, oth)[0, 1]) if ref.std() > 0 and oth.std() > 0 else float("nan")
    return {"pearson_r": r, "rmse": float(np.sqrt(np.mean(diff ** 2))),
            "mean_abs_dev_pct": float(np.mean(np.abs(diff)) / scale * 100) if scale > 0 else float("nan"),
            "max_abs_dev": float(np.max(np.abs(diff)))}


def feature_figure(reference: np.ndarray, means: dict[str, np.ndarray], layer: str, images: int,
                   split: str, orig: str = "orig") -> Figure:
    """One scatter panel per variant: its channel means (y) against the originals' (x), identity dashed."""
    from .figures import pyplot

    plt = pyplot()
    n = len(means)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.4, 3.9), squeeze=False)
    ref = np.asarray(reference)
    lo = min(float(ref.min()), *(float(np.min(m)) for m in means.values()))
    hi = max(float(ref.max()), *(float(np.max(m)) for m in means.values()))
    pad = (hi - lo) * 0.04 or 1.0
    for ax, (name, m) in zip(axes[0], means.items()):
        a = alignment(ref, m)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", linewidth=0.8, label="identity")
        ax.scatter(ref, m, s=8, alpha=0.7, label=name)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.set_title(f"{name}\nr = {a['pearson_r']:.4f}, mean |dev| = {a['mean_abs_dev_pct']:.1f} %", fontsize=9)
        ax.set_xlabel(f"channel mean, {orig}")
        ax.set_ylabel(f"channel mean, {name}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Mean activation per channel of {layer} ({len(ref)} channels, {images} {split} images), "
                 "model trained on originals", fontsize=10)
    fig.tight_layout()
    return fig


def seg_features(cfg: FeatureConfig) -> dict:
    """Run the original and each variant through the model; write OUT/features.{json,csv} and
    OUT/feature_alignment.<format>; return the summary (per variant: its alignment numbers)."""
    from lossyvision.nets.segmentation import load_segmentation_model
    from lossyvision.pipelines.stream import OptionError, resolve_device, variant_dir

    from .figures import save

    split_dir = storage.join(cfg.shards, cfg.split)
    dirs = {v: variant_dir(split_dir, v) for v in [cfg.orig_variant, *cfg.variants]}  # a typo fails before the model
    device = resolve_device(cfg.device)
    model, _ = load_segmentation_model(cfg.checkpoint, device)
    try:
        find_layer(model, cfg.layer)
    except ValueError as e:
        raise OptionError(f"--layer: {e}") from None
    ref, keys = channel_means(model, cfg.layer, dirs[cfg.orig_variant], device, cfg.amp, cfg.max_images,
                              cfg.max_pixels, cfg.quiet)
    means: dict[str, np.ndarray] = {}
    for v in cfg.variants:
        m, vkeys = channel_means(model, cfg.layer, dirs[v], device, cfg.amp, len(keys), cfg.max_pixels, cfg.quiet)
        if vkeys != keys:
            first = next((i for i, (a, b) in enumerate(zip(keys, vkeys)) if a != b), min(len(keys), len(vkeys)))
            raise ValueError(f"{v} and {cfg.orig_variant} do not hold the same images in the same order (image {first}: "
                             f"{vkeys[first] if first < len(vkeys) else 'none'!r} vs "
                             f"{keys[first] if first < len(keys) else 'none'!r})")
        means[v] = m
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": cfg.checkpoint, "layer": cfg.layer, "split": cfg.split, "images": len(keys),
               "channels": int(ref.shape[0]), "orig_variant": cfg.orig_variant,
               "alignment": {v: alignment(ref, m) for v, m in means.items()}}
    data = {**summary, "means": {cfg.orig_variant: ref.tolist(), **{v: m.tolist() for v, m in means.items()}}}
    (out / "features.json").write_text(json.dumps(_finite(data), indent=1) + "\n")
    with (out / "features.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["channel", cfg.orig_variant, *cfg.variants])
        for c in range(ref.shape[0]):
            w.writerow([c, f"{ref[c]:.6g}", *(f"{means[v][c]:.6g}" for v in cfg.variants)])
    plots = save(feature_figure(ref, means, cfg.layer, len(keys), cfg.split, cfg.orig_variant),
                 out / "feature_alignment", cfg.formats)
    for v, a in summary["alignment"].items():
        log.info("%s vs %s at %s: r %.4f, mean |dev| %.2f %% of the mean magnitude", v, cfg.orig_variant, cfg.layer,
                 a["pearson_r"], a["mean_abs_dev_pct"])
    return {**summary, "files": [str(out / "features.json"), str(out / "features.csv"), *plots]}


def _finite(obj):
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
