"""The CPU-scale stand-in for an ImageNet-pretrained encoder: garment classification on clean images.

Paper 2's DeepLabv3+ starts from an ImageNet-pretrained backbone (clean photographs, image-level
labels, a task other than the segmentation). ImageNet weights cannot be downloaded here, and a
randomly initialised DeepLabv3+ learns next to nothing in the ~100 steps per run a 25-minute CPU budget
allows. So, as ImageNet is for Cityscapes, the encoder is pretrained once on a disjoint pool of clean
images with image-level labels: one Fashion-MNIST garment (all 10 classes; train images 40 000-59 999,
which no segmentation split uses) composited at a random scale onto a texture crop, classified by a
global-average-pooled linear head. Every configuration and seed then starts from the same encoder
(`train-segmentation --encoder-weights encoder.pth`), as every paper run starts from ImageNet's.

    python tools/repro/seg_pretrain.py --out /tmp/encoder.pth --steps 600
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from seg_synth import GARMENTS, background, load_garments, load_textures, paste  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation train-segmentation applies
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PretrainConfig:
    out: str = "/tmp/encoder.pth"
    encoder: str = "resnet18"
    steps: int = 600
    batch_size: int = 32
    size: int = 48            # image side
    garment_px: tuple[int, int] = (8, 46)   # spans seg_synth's small garments and most of its big ones
    contrast: float = 0.5     # as seg_synth's default
    lr: float = 1e-3          # Adam: from random init, SGD at this budget stays near chance (measured)
    seed: int = 0
    val_images: int = 500     # held-out accuracy on Fashion-MNIST test garments
    fmnist_root: str | None = None


class _Batches:
    """An endless, seeded stream of (N x 3 x S x S float normalised, N labels) composited garments."""

    def __init__(self, cfg: PretrainConfig, pool: str, seed: int) -> None:
        self.cfg = cfg
        self.images, self.labels = load_garments(cfg.fmnist_root, pool)
        self.textures = load_textures()
        self.rng = np.random.default_rng(seed)
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, rng = self.cfg, self.rng
        xs, ys = [], []
        for _ in range(n):
            img = background(rng, self.textures, cfg.size, (0.5, 1.5), cfg.contrast)
            label = np.zeros((cfg.size, cfg.size), dtype=np.uint8)
            i = int(rng.integers(len(self.images)))
            paste(img, label, self.images[i], 1, int(rng.integers(cfg.garment_px[0], cfg.garment_px[1] + 1)), rng)
            xs.append(np.clip(img, 0, 1))
            ys.append(int(self.labels[i]))
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float()
        return (x - self.mean) / self.std, torch.tensor(ys)


def _encoder(name: str) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    # the same encoder class (and state-dict keys) DeepLabV3Plus builds; output stride 32 as ImageNet's
    return smp.encoders.get_encoder(name, in_channels=3, depth=5, weights=None)


class _Classifier(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.out_channels[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1].mean((2, 3)))


def pretrain_encoder(cfg: PretrainConfig, quiet: bool = False) -> dict:
    """Train the encoder; write its state dict to cfg.out and a summary (accuracy %) beside it."""
    from lossyvision.progress import progress

    torch.manual_seed(cfg.seed)
    model = _Classifier(_encoder(cfg.encoder), len(GARMENTS))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    data = _Batches(cfg, "pretrain", cfg.seed)
    t0 = time.time()
    losses = []
    model.train()
    with progress(total=cfg.steps, desc="encoder pretraining", unit="step", quiet=quiet) as bar:
        for step in range(cfg.steps):
            for group in opt.param_groups:  # poly decay
                group["lr"] = cfg.lr * (1 - step / cfg.steps) ** 0.9
            x, y = data.batch(cfg.batch_size)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(1)
    model.eval()
    val = _Batches(cfg, "val", cfg.seed + 1)
    correct = 0
    with torch.no_grad():
        for start in range(0, cfg.val_images, 100):
            x, y = val.batch(min(100, cfg.val_images - start))
            correct += int((model(x).argmax(1) == y).sum())
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.encoder.state_dict(), out)
    summary = {"config": asdict(cfg), "val_top1_pct": 100.0 * correct / cfg.val_images,
               "last_loss": float(np.mean(losses[-20:])), "seconds": round(time.time() - t0, 1)}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/encoder.pth", help="encoder state dict to write (/tmp/encoder.pth)")
    ap.add_argument("--encoder", default="resnet18", help="segmentation-models-pytorch encoder (resnet18)")
    ap.add_argument("--steps", type=int, default=600, help="Adam steps (600)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per step (32)")
    ap.add_argument("--seed", type=int, default=0, help="seed (0)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    s = pretrain_encoder(PretrainConfig(out=a.out, encoder=a.encoder, steps=a.steps, batch_size=a.batch_size,
                                        seed=a.seed), quiet=a.quiet)
    print(json.dumps({k: v for k, v in s.items() if k != "config"}))


if __name__ == "__main__":
    main()
