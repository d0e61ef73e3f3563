"""Top-1/top-5 accuracy of a classifier on shard variants, and the train-on-A / test-on-B matrix.

Accuracies are percent everywhere (``top1_pct``, ``top5_pct``: 70.0 means 70 %), in the returned
rows, the JSON/CSV/Markdown files and the heatmap.

Models receive float tensors normalised with `mean`/`std` (ImageNet's by default) on the device,
so any TorchScript file that expects torchvision's preprocessing can be evaluated as it is.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from lossyvision import accel
from lossyvision.names import check_name
from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS
from lossyvision.pipelines.stream import (IMAGENET_MEAN, IMAGENET_STD, ShardError, ShardStream, check_limits,
                                          make_loader, read_variant, resolve_device, to_device, variant_dir)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    model: str                               # torchvision:NAME[:WEIGHTS] | checkpoint | TorchScript file
    shards: str                              # ROOT/<dataset>/<split> (path or fsspec URL): holds the variant folders
    variants: list[str] = field(default_factory=lambda: ["orig"])
    weights: str | None = None
    batch_size: int = 128
    workers: int = 4
    device: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_samples: int | None = None
    amp: bool | None = None                  # None: autocast on CUDA (bf16 where native, else fp16)
    progress: bool = True                    # False: no progress bar (the older spelling of quiet=True)
    quiet: bool = False                      # no progress bar (it is off anyway when stderr is not a terminal)
    max_pixels: int = DEFAULT_MAX_PIXELS     # images in shards over this many pixels are refused before decoding

    def __post_init__(self) -> None:
        self.variants = [check_name("--variant", v) for v in self.variants]
        check_limits(batch_size=self.batch_size, max_samples=self.max_samples, max_pixels=self.max_pixels,
                     workers=(self.workers, 0))

    def to_dict(self) -> dict:
        return asdict(self)


def _one_size(manifest: dict) -> bool:
    """True when prepare-shards cropped or scaled every image of the variant to one size."""
    crop = manifest.get("crop") or {}
    return bool(crop.get("crop_w") or crop.get("scale_w"))


@torch.no_grad()
def accuracy(model: nn.Module, vdir: str | os.PathLike, *, device: torch.device | str = "cpu", batch_size: int = 128,
             workers: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD, max_samples: int | None = None,
             amp: bool | None = False, progress: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Top-1/top-5 (percent) of `model` on one variant folder (its first `max_samples` samples), plus
    its mean rate from the manifest. `progress`: a bar over the batches when stderr is a terminal.

    `amp`: autocast in `accel.amp_dtype(device, amp)` (bf16 where native, else fp16; None: on CUDA
    only). The hit counts stay on the device (one sync at the end). On CUDA the batches are pinned,
    the model (converted in place) and its input are channels_last, and cudnn.benchmark is on for a
    variant of one crop size (the previous setting is restored afterwards)."""
    from lossyvision.progress import progress as progress_bar

    check_limits(batch_size=batch_size, max_samples=max_samples, max_pixels=max_pixels)
    dev = torch.device(device)
    info = read_variant(vdir)
    ds = ShardStream(vdir, shuffle=False, rank=0, world_size=1, max_pixels=max_pixels)
    cuda = dev.type == "cuda"
    # one pass per loader: nothing for persistent workers to keep
    loader = make_loader(ds, batch_size, workers, pin_memory=cuda, persistent_workers=False)
    dtype = accel.amp_dtype(dev, amp)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        benchmark = torch.backends.cudnn.benchmark
        if not torch.are_deterministic_algorithms_enabled():  # a --deterministic run keeps its settings
            accel.configure_backends(dev, fixed_shapes=_one_size(info.manifest))
    correct1 = torch.zeros((), dtype=torch.int64, device=dev)
    correct5 = torch.zeros((), dtype=torch.int64, device=dev)
    n = 0
    total = len(loader) if max_samples is None else min(len(loader), -(-max_samples // batch_size))
    try:
        with progress_bar(loader, total=total, desc=f"eval {info.variant}", quiet=not progress) as bar:
            for xt, y, keys in bar:
                if max_samples is not None:
                    if n >= max_samples:
                        break
                    xt, y, keys = xt[:max_samples - n], y[:max_samples - n], keys[:max_samples - n]
                # the label checks run on the host copy of y: no device sync per batch
                if not torch.is_tensor(y) or y.dim() != 1:
                    raise ValueError(f"{vdir}: samples carry no class labels (task {info.task!r})")
                if (y < 0).any():
                    raise ValueError(f"{vdir}: samples carry no class labels (no .cls members)")
                y_dev = y.to(dev, non_blocking=True)
                with accel.autocast(dev, dtype):
                    logits = model(to_device(xt, dev, mean, std, channels_last=cuda)).float()
                if (y >= logits.shape[1]).any():
                    i = int((y >= logits.shape[1]).nonzero()[0])
                    raise ShardError(f"{vdir}: sample {keys[i]!r} has class {int(y[i])} but the model has "
                                     f"{logits.shape[1]} outputs; evaluate it on shards of its own classes")
                k = min(5, logits.shape[1])
                hit = logits.topk(k, dim=1).indices == y_dev[:, None]
                correct1 += hit[:, 0].sum()
                correct5 += hit.any(dim=1).sum()
                n += y.shape[0]
    finally:
        if cuda:
            torch.backends.cudnn.benchmark = benchmark
    c1, c5 = torch.stack([correct1, correct5]).tolist()  # the one host sync
    means = info.manifest.get("means", {}) or {}
    return {"variant": info.variant, "spec": info.spec, "samples": n,
            "top1_pct": 100.0 * c1 / max(n, 1), "top5_pct": 100.0 * c5 / max(n, 1),
            "bpp": means.get("bpp"), "bytes": means.get("bytes"), "psnr": means.get("psnr"),
            "ssim": means.get("ssim")}


def evaluate(cfg: EvalConfig) -> list[dict]:
    """Evaluate one model on each variant of cfg.variants; one result row per variant."""
    from lossyvision.train.models import load_for_eval
    dev = resolve_device(cfg.device)
    model = load_for_eval(cfg.model, weights=cfg.weights).to(dev)
    rows = []
    for v in cfg.variants:
        r = accuracy(model, variant_dir(cfg.shards, v), device=dev, batch_size=cfg.batch_size, workers=cfg.workers,
                     mean=cfg.mean, std=cfg.std, max_samples=cfg.max_samples, amp=cfg.amp,
                     progress=cfg.progress and not cfg.quiet, max_pixels=cfg.max_pixels)
        rows.append({"model": cfg.model, **r})
        log.info("%s on %s: top-1 %.2f %% top-5 %.2f %% (%d samples)", cfg.model, v, r["top1_pct"], r["top5_pct"],
                 r["samples"])
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Model | variant | bpp | top-1 % | top-5 % table."""
    lines = ["| model | variant | bpp | top-1 (%) | top-5 (%) | samples |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        bpp = f"{r['bpp']:.3f}" if r.get("bpp") is not None else "-"
        lines.append(f"| {r['model']} | {r['variant']} | {bpp} | {r['top1_pct']:.2f} | {r['top5_pct']:.2f} "
                     f"| {r['samples']} |")
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], json_path: str | Path | None = None, csv_path: str | Path | None = None,
                  md_path: str | Path | None = None, config: dict | None = None) -> None:
    """Write result rows as JSON (with the resolved config), CSV and/or Markdown."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"config": config, "results": rows}, indent=2) + "\n")
    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(markdown_table(rows))


@dataclass
class MatrixResult:
    """top1_pct[i][j]: top-1 (percent) of model i (trained on A) evaluated on variant j (B)."""

    models: list[str]
    variants: list[str]
    top1_pct: list[list[float]]
    top5_pct: list[list[float]]

    def to_dict(self) -> dict:
        return asdict(self)


def eval_matrix(models: dict[str, str], shards: str, variants: list[str], **accuracy_kwargs) -> MatrixResult:
    """Evaluate each model (label -> reference) on each variant (paper 1, Fig. 5)."""
    from lossyvision.train.models import load_for_eval
    device = resolve_device(accuracy_kwargs.pop("device", None))
    variants = [check_name("--variant", v) for v in variants]
    top1, top5 = [], []
    for label, ref in models.items():
        model = load_for_eval(ref).to(device)
        r1, r5 = [], []
        for v in variants:
            r = accuracy(model, variant_dir(shards, v), device=device, **accuracy_kwargs)
            r1.append(r["top1_pct"])
            r5.append(r["top5_pct"])
            log.info("%s on %s: top-1 %.2f %%", label, v, r["top1_pct"])
        top1.append(r1)
        top5.append(r5)
    return MatrixResult(list(models), list(variants), top1, top5)


def matrix_markdown(m: MatrixResult) -> str:
    head = "| top-1 (%): trained on \\ tested on | " + " | ".join(m.variants) + " |"
    sep = "| --- |" + " ---: |" * len(m.variants)
    rows = [f"| {name} | " + " | ".join(f"{a:.2f}" for a in accs) + " |" for name, accs in zip(m.models, m.top1_pct)]
    return "\n".join([head, sep, *rows]) + "\n"


def matrix_figure(m: MatrixResult, title: str = "top-1 accuracy (%)") -> Figure:
    """The heatmap figure: rows = training variant/model, columns = test variant, cells = top-1 %.

    The colour scale is always 0..100 %: a scale fitted to the data would turn equal accuracies
    (all 0 %, say) into a -0.1..0.1 bar that suggests differences that are not there."""
    import numpy as np

    from .figures import pyplot

    plt = pyplot()
    a = np.array(m.top1_pct, dtype=float).reshape(len(m.models), len(m.variants))
    fig, ax = plt.subplots(figsize=(1.1 * len(m.variants) + 2.8, 0.6 * len(m.models) + 2.0))
    im = ax.imshow(a, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(m.variants)), m.variants, rotation=45, ha="right")
    ax.set_yticks(range(len(m.models)), m.models)
    ax.set_xlabel("tested on (variant)")
    ax.set_ylabel("trained on (model)")
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            ax.text(j, i, f"{a[i, j]:.1f}", ha="center", va="center",
                    color="white" if a[i, j] < 60 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="top-1 accuracy (%)", ticks=[0, 20, 40, 60, 80, 100])
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_matrix(m: MatrixResult, path: str | Path, title: str = "top-1 accuracy (%)",
                formats: Iterable[str] | None = None) -> list[str]:
    """:func:`matrix_figure` written as PATH's stem in each of ``formats`` (default: PATH's own
    suffix, else PNG); returns the paths."""
    from .figures import FORMATS, save

    stem, suffix = os.path.splitext(os.fspath(path))
    if suffix.lstrip(".").lower() not in FORMATS:
        stem, suffix = os.fspath(path), ".png"
    return save(matrix_figure(m, title), stem, formats or (suffix.lstrip(".").lower(),))
