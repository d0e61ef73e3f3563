"""Dataset restoration (Katakol et al. 2021, Sec. IV and Appendices B and C).

A generator learns to turn compressed training images back into plausible originals, trained
on (compressed, original) pairs read in lockstep from two aligned variants of a split disjoint
from the segmentation training set (Cityscapes ``train_extra`` by default). Recipes:

- ``gan`` (the paper's): FineNet generator, loss ``L_GAN + 10 (2 L1 + L_VGG + L_MS-SSIM +
  L_DIST)``, two discriminators on the standard GAN loss (Appendix B).
- ``l1-msssim``: the same generator on ``10 (2 L1 + L_MS-SSIM)``, no discriminators.
- ``rdn-psnr`` / ``rdn-msssim``: the non-adversarial baseline of Table III, a residual dense
  network (Appendix C: 16 blocks, 6 layers each, growth 32) trained to maximise PSNR (MSE loss,
  whose minimiser is PSNR's maximiser) or MS-SSIM (``1 - MS-SSIM``), with Appendix C's schedule.

The keys of the images trained on are recorded in generator.pt and in ``train_keys.json`` beside
it, so that restore-shards can refuse a split that overlaps them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from lossyvision import accel, storage
from lossyvision.names import check_name
from lossyvision.nets.finenet import GENERATOR_STRIDE, MultiScaleDiscriminator, VGGFeatures
from lossyvision.nets.restoration import build_restoration_net, normalize_arch
from lossyvision.pipelines.epoch import SharedEpoch
from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS
from lossyvision.pipelines.restore import load_generator  # noqa: F401  (its old home, re-exported)
from lossyvision.pipelines.stream import OptionError, check_limits, resolve_device
from lossyvision.pipelines.trainkeys import TRAIN_KEYS, seeded_subset, variant_keys, write_train_keys
from lossyvision.progress import progress, rate_eta

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Recipe:
    """What a recipe trains (network, objective) and its optimiser defaults (the paper's)."""

    net: str
    objective: str           # "gan", "l1-msssim", "mse" or "msssim"
    steps: int
    lr: float
    lr_decay_steps: tuple[int, ...]
    betas: tuple[float, float]


# Appendix B for the GAN (and the same generator without discriminators); Appendix C for RDN,
# whose Adam betas the paper does not give: RDN's own (0.9, 0.999).
RECIPE_TABLE: dict[str, Recipe] = {
    "gan": Recipe("finenet", "gan", 135_000, 2e-4, (80_000,), (0.1, 0.9)),
    "l1-msssim": Recipe("finenet", "l1-msssim", 135_000, 2e-4, (80_000,), (0.1, 0.9)),
    "rdn-psnr": Recipe("rdn", "mse", 200_000, 1e-3, (80_000, 150_000), (0.9, 0.999)),
    "rdn-msssim": Recipe("rdn", "msssim", 200_000, 1e-3, (80_000, 150_000), (0.9, 0.999)),
}
RECIPES = tuple(RECIPE_TABLE)


@dataclass
class RestorationConfig:
    """Defaults are the paper's: batch 1, 256x256 patches; per recipe (None: the recipe's default)
    ~135k iterations, Adam(0.1, 0.9), lr 2e-4 divided by 10 at 80k for the GAN (Appendix B), and
    200k iterations, lr 1e-3 divided by 10 at 80k and 150k for RDN (Appendix C)."""

    shards: str = ""                 # ROOT/<dataset>, e.g. ROOT/cityscapes (a local path or an fsspec URL)
    variant: str = ""                # the compressed variant to learn to restore, e.g. bpg-qp41
    out_dir: str = "runs/restoration"
    split: str = "train_extra"       # the paper's 2000 extra images, disjoint from the segmentation training set
    orig_variant: str = "orig"
    recipe: str = "gan"              # one of RECIPES
    steps: int | None = None
    batch_size: int = 1
    patch_size: int = 256
    lr: float | None = None
    lr_decay_steps: tuple[int, ...] | None = None  # lr is multiplied by lr_decay at each of these iterations
    lr_decay: float = 0.1
    beta1: float | None = None
    beta2: float | None = None
    # loss weights: L_GAN + 10 (2 L1 + L_VGG + L_MS-SSIM + L_DIST)
    gan_weight: float = 1.0
    l1_weight: float = 20.0
    vgg_weight: float = 10.0
    msssim_weight: float = 10.0
    dist_weight: float = 10.0
    width: int = 64                  # generator c64 / discriminator C64 channels (tests shrink it)
    n_blocks: int = 9
    disc_width: int = 64
    rdn_blocks: int = 16             # RDN (Appendix C): global layers (residual dense blocks)
    rdn_layers: int = 6              # local layers (convolutions per block)
    rdn_growth: int = 32             # growth rate
    rdn_features: int = 64           # G0, RDN's feature width between blocks
    vgg_weights: str | None = "imagenet"  # "imagenet", a state-dict path, or "random" (tests only)
    max_images: int | None = None    # a seeded random subset of N images of the split (paper Fig. 8)
    num_workers: int = 4
    shuffle_buffer: int = 64
    seed: int = 0
    amp: bool = True                 # autocast on CUDA: bf16 where native (cc >= 8), else fp16 + GradScaler
    deterministic: bool = False      # deterministic kernels, cudnn.benchmark off (lossyvision.accel)
    device: str | None = None
    log_every: int = 100             # a log.jsonl record and an INFO line (losses, rate, ETA) every N steps
    sample_every: int = 1000
    ckpt_every: int = 5000
    sample_size: int = 512           # side of the centre crop shown in sample grids
    resume: bool = False
    overwrite: bool = False          # replace a run already in out_dir (else it is refused without resume)
    max_pixels: int = DEFAULT_MAX_PIXELS  # images in shards over this many pixels are refused before decoding
    quiet: bool = False              # no progress bars (they are off anyway when stderr is not a terminal)

    def __post_init__(self) -> None:
        for what, name in (("--variant", self.variant), ("--split", self.split), ("--orig-variant", self.orig_variant)):
            if name:
                check_name(what, name)
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        r = RECIPE_TABLE[self.recipe]
        self.steps = r.steps if self.steps is None else self.steps
        self.lr = r.lr if self.lr is None else self.lr
        self.lr_decay_steps = r.lr_decay_steps if self.lr_decay_steps is None else tuple(self.lr_decay_steps)
        self.beta1 = r.betas[0] if self.beta1 is None else self.beta1
        self.beta2 = r.betas[1] if self.beta2 is None else self.beta2
        check_limits(steps=self.steps, batch_size=self.batch_size, patch_size=self.patch_size, width=self.width,
                     n_blocks=self.n_blocks, disc_width=self.disc_width, limit=self.max_images,
                     rdn_blocks=self.rdn_blocks, rdn_layers=self.rdn_layers, rdn_growth=self.rdn_growth,
                     rdn_features=self.rdn_features, num_workers=(self.num_workers, 0), log_every=self.log_every,
                     sample_every=self.sample_every, ckpt_every=self.ckpt_every, max_pixels=self.max_pixels,
                     sample_size=self.sample_size)
        for step in self.lr_decay_steps:
            check_limits(lr_decay_steps=(step, 0))
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise OptionError(f"--lr must be a positive number, got {self.lr!r}")
        if self.resume and self.overwrite:
            raise OptionError("--resume continues a run and --overwrite replaces it; give one of them")
        if r.net == "finenet" and self.patch_size % GENERATOR_STRIDE:
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of {GENERATOR_STRIDE}")
        if r.objective != "mse" and self.patch_size <= 32:
            raise ValueError(f"patch_size {self.patch_size} is too small for 5-scale MS-SSIM; use > 32")
        if self.recipe == "gan" and self.patch_size < 128:
            raise ValueError(f"patch_size {self.patch_size} is too small for the 1/4-scale discriminator (4 stride-2 layers on a quarter of it); use >= 128")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def net(self) -> str:
        """The restoration network this recipe trains (a `lossyvision.nets.restoration` name)."""
        return RECIPE_TABLE[self.recipe].net


# -- data ------------------------------------------------------------------------------------

def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 image tensor -> float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in [-1, 1] -> uint8 (rounded, clamped)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class PatchPairs(IterableDataset):
    """Random aligned patches ``(original, compressed)`` (uint8 3xPxP) from two variants.

    Wraps `lossyvision.pipelines.stream.ShardStream` (lockstep reading, key checks, worker and
    rank splitting) and cuts one random patch per image visit.
    """

    def __init__(self, variant_dir: str, orig_dir: str, patch_size: int, *, seed: int = 0,
                 shuffle: bool = True, buffer_size: int = 64, keys: frozenset[str] | None = None,
                 max_pixels: int | None = None) -> None:
        super().__init__()
        from lossyvision.pipelines.stream import ShardStream

        self.stream = ShardStream(variant_dir, orig_dir, shuffle=shuffle, seed=seed, buffer_size=buffer_size,
                                  max_pixels=max_pixels)
        self.patch_size = patch_size
        self.seed = seed
        self.keys = keys  # restrict to these keys (paper Fig. 8: fewer training images)
        self._epoch = SharedEpoch(0)  # persistent DataLoader workers read it when an epoch starts

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        epoch = self.epoch
        self.stream.set_epoch(epoch)  # this worker's copy of the stream: the epoch the main process set
        rng = random.Random(hash((self.seed, epoch, info.id if info else 0)))
        p = self.patch_size
        for x, xc, _, key in self.stream:
            if self.keys is not None and key not in self.keys:
                continue
            h, w = x.shape[-2:]
            if h < p or w < p:
                raise ValueError(f"image {key!r} is {h}x{w}, smaller than --patch-size {p}")
            top, left = rng.randrange(h - p + 1), rng.randrange(w - p + 1)
            yield x[:, top:top + p, left:left + p].clone(), xc[:, top:top + p, left:left + p].clone()


def training_keys(variant_dir: str, limit: int | None, seed: int) -> list[str]:
    """The keys a run trains on: all of the variant's, or a seeded random subset of ``limit``."""
    return seeded_subset(variant_keys(variant_dir), limit, seed)


def fixed_pair(variant_dir: str, orig_dir: str, size: int,
               max_pixels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first pair of the variant, centre-cropped to at most ``size`` (a multiple of 8): uint8 1x3xHxW."""
    from lossyvision.pipelines.stream import ShardStream

    x, xc, _, _ = next(iter(ShardStream(variant_dir, orig_dir, shuffle=False, rank=0, world_size=1,
                                        max_pixels=max_pixels)))
    h, w = x.shape[-2:]
    ch = min(size, h) // GENERATOR_STRIDE * GENERATOR_STRIDE
    cw = min(size, w) // GENERATOR_STRIDE * GENERATOR_STRIDE
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[None, :, top:top + ch, left:left + cw], xc[None, :, top:top + ch, left:left + cw]


# -- losses ----------------------------------------------------------------------------------

def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Standard (non-saturating) GAN loss on patch logits: -log D or -log(1 - D), patch mean."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def ms_ssim_loss(restored: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM (5 scales) on [-1, 1] images, in float32.

    The paper writes ``L_MS-SSIM = MS-SSIM``; as a loss it must fall as MS-SSIM rises. Patches
    of 161+ pixels use the standard 11x11 window; smaller ones (tests) shrink the window so
    the coarsest of the 5 scales still holds it (pytorch-msssim needs side > 16 (win - 1)).
    """
    from lossyvision.extras import require

    ms_ssim = require("pytorch_msssim", "segmentation", "the MS-SSIM loss of train-restoration", "pytorch-msssim").ms_ssim

    side = min(restored.shape[-2:])
    win = 11 if side > 160 else max(3, ((side - 1) // 16) // 2 * 2 + 1)
    if side <= 16 * (win - 1):
        raise ValueError(f"MS-SSIM needs patches larger than {16 * (win - 1)} pixels, got {side}")
    with torch.autocast(restored.device.type, enabled=False):
        a = ((restored.float() + 1) / 2).clamp(0, 1)
        b = (original.float() + 1) / 2
        return 1 - ms_ssim(a, b, data_range=1.0, win_size=win)


def feature_l1(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """sum_j 1/M_j ||f_j(fake) - f_j(real)||_1 (mean absolute difference per layer, summed)."""
    return sum(F.l1_loss(a.float(), b.detach().float()) for a, b in zip(fake, real))


# -- model I/O -------------------------------------------------------------------------------

def generator_arch(cfg: RestorationConfig) -> dict:
    """The ``arch`` block of the network ``cfg`` trains (`lossyvision.nets.restoration`)."""
    if cfg.net == "rdn":
        return {"net": "rdn", "blocks": cfg.rdn_blocks, "layers": cfg.rdn_layers, "growth": cfg.rdn_growth,
                "features": cfg.rdn_features}
    return {"net": "finenet", "width": cfg.width, "n_blocks": cfg.n_blocks, "norm": "instance"}


def save_generator(path: Path, generator: torch.nn.Module, arch: dict, meta: dict) -> None:
    """Slim file for restore-shards: weights + architecture + how it was trained (meta: step, config,
    train_keys)."""
    _atomic_save({"generator": generator.state_dict(), "arch": arch, **meta}, path)


def vgg_features(weights: str | None) -> VGGFeatures:
    """L_VGG's network from ``--vgg-weights``: "imagenet", a local torchvision vgg19 state dict, or None
    (random init, tests only)."""
    if weights is None or weights == "imagenet":
        return VGGFeatures(weights)
    from lossyvision.train.models import load_checkpoint

    state = load_checkpoint(weights, "--vgg-weights")
    if not isinstance(state, dict):
        raise OptionError(f"--vgg-weights {weights} is not a state dict")
    try:
        return VGGFeatures(state)
    except RuntimeError as e:  # missing keys, shape mismatches
        from lossyvision.pipelines.stream import first_line

        raise OptionError(f"--vgg-weights {weights} does not fit VGG ({first_line(e, 200)})") from None


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def sample_metrics(image: torch.Tensor, original: torch.Tensor) -> dict[str, float | None]:
    """PSNR, SSIM, MS-SSIM and MS-SSIM in dB (Table III's columns) of uint8 1x3xHxW vs the original,
    as restore-shards measures them (`lossyvision.quality`); MS-SSIM is None under 161 pixels."""
    from lossyvision.quality import ms_ssim, ms_ssim_db, psnr, ssim

    a, b = (t.squeeze(0).permute(1, 2, 0).cpu().numpy() for t in (image, original))
    ms = ms_ssim(a, b)
    return {"psnr": psnr(a, b), "ssim": ssim(a, b), "ms_ssim": ms, "ms_ssim_db": ms_ssim_db(ms)}


def _finite(rec: dict) -> dict:
    """JSON-safe: an infinite PSNR (identical images) becomes null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in rec.items()}


def save_grid(path: Path, compressed: torch.Tensor, restored: torch.Tensor, original: torch.Tensor) -> None:
    """PNG with compressed | restored | original side by side (uint8 1x3xHxW or 3xHxW each)."""
    from PIL import Image

    panels = [t.squeeze(0).permute(1, 2, 0).cpu().numpy() for t in (compressed, restored, original)]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    grid = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


# -- training --------------------------------------------------------------------------------

def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, scaler: torch.amp.GradScaler) -> None:
    """Backward and update; a disabled scaler (bf16, fp32) passes the loss and the step through."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()



class RestorationTrainer:
    """Holds the networks, optimizers and one training step; `train_restoration` drives it.

    Precision (`lossyvision.accel`): autocast on CUDA only (``cfg.amp``), bf16 where the GPU runs
    it natively, else fp16 with one GradScaler per optimizer (G and D overflow at different scales).
    A step never syncs with the host: its losses come back as device tensors."""

    def __init__(self, cfg: RestorationConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.dtype = accel.amp_dtype(device, None if cfg.amp else False)  # None: CUDA only
        self.scalers = [accel.grad_scaler(device, self.dtype) for _ in range(2)]  # G, D
        self.objective = RECIPE_TABLE[cfg.recipe].objective
        self.G = build_restoration_net(generator_arch(cfg)).to(device)
        self.optG = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.adversarial = self.objective == "gan"
        self.D = self.optD = self.vgg = None
        if self.adversarial:
            self.D = MultiScaleDiscriminator(cfg.disc_width).to(device)
            self.optD = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
            if cfg.vgg_weight:
                weights = None if cfg.vgg_weights == "random" else cfg.vgg_weights
                if weights is None:
                    log.warning("L_VGG uses a randomly initialised VGG19 (vgg_weights='random'): tests only")
                self.vgg = vgg_features(weights).to(device)
        self.step = 0

    def lr_at(self, step: int) -> float:
        """The recipe's step schedule: lr times lr_decay for every decay step already reached."""
        return self.cfg.lr * self.cfg.lr_decay ** sum(step >= m for m in self.cfg.lr_decay_steps)

    def autocast(self):
        return accel.autocast(self.device, self.dtype)

    def train_step(self, x: torch.Tensor, xc: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """One iteration on a batch in [-1, 1]: discriminators first (GAN), then the generator.

        Returns the losses as detached 0-d device tensors (no host sync) and ``lr`` as a float."""
        cfg, dev = self.cfg, self.device
        for opt in (self.optG, self.optD):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = self.lr_at(self.step)
        if self.objective in ("mse", "msssim"):
            return self._plain_step(x, xc)
        stats: dict[str, torch.Tensor | float] = {}
        with self.autocast():
            restored = self.G(xc)
        if self.adversarial:
            self.D.requires_grad_(True)
            with self.autocast():
                real_out = self.D(xc, x)
                fake_out = self.D(xc, restored.detach())
            loss_d = sum(gan_loss(r, True) + gan_loss(f, False) for (r, _), (f, _) in zip(real_out, fake_out))
            _step(self.optD, loss_d, self.scalers[1])
            stats["loss_d"] = loss_d.detach()
            self.D.requires_grad_(False)  # generator step: no D gradients to compute
            with self.autocast():
                g_out = self.D(xc, restored)
                with torch.no_grad():
                    real_feats = [feats for _, feats in self.D(xc, x)]
            l_gan = sum(gan_loss(logits, True) for logits, _ in g_out)
            l_dist = sum(feature_l1(feats, rf) for (_, feats), rf in zip(g_out, real_feats))
        else:
            l_gan = l_dist = torch.zeros((), device=dev)
        l1 = F.l1_loss(restored.float(), x)
        l_ms = ms_ssim_loss(restored, x)
        if self.vgg is not None:
            with self.autocast():
                fake_v = self.vgg(restored)
                with torch.no_grad():
                    real_v = self.vgg(x)
            l_vgg = feature_l1(fake_v, real_v)
        else:
            l_vgg = torch.zeros((), device=dev)
        loss_g = (cfg.gan_weight * l_gan + cfg.l1_weight * l1 + cfg.vgg_weight * l_vgg
                  + cfg.msssim_weight * l_ms + cfg.dist_weight * l_dist) if self.adversarial \
            else cfg.l1_weight * l1 + cfg.msssim_weight * l_ms
        _step(self.optG, loss_g, self.scalers[0])
        self.step += 1
        stats.update({k: v.detach() for k, v in dict(
            loss_g=loss_g, l_gan=l_gan, l1=l1, l_vgg=l_vgg, l_msssim=l_ms, l_dist=l_dist).items()})
        stats["lr"] = self.lr_at(self.step - 1)
        return stats

    def _plain_step(self, x: torch.Tensor, xc: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """RDN's step: one objective, no discriminators (Appendix C)."""
        with self.autocast():
            restored = self.G(xc)
        if self.objective == "mse":
            loss = F.mse_loss(restored.float(), x)
            stats = {"loss_g": loss, "l2": loss}
        else:
            loss = ms_ssim_loss(restored, x)
            stats = {"loss_g": loss, "l_msssim": loss}
        _step(self.optG, loss, self.scalers[0])
        self.step += 1
        out: dict[str, torch.Tensor | float] = {k: v.detach() for k, v in stats.items()}
        out["lr"] = self.lr_at(self.step - 1)
        return out

    @torch.no_grad()
    def restore(self, xc: torch.Tensor) -> torch.Tensor:
        """Restore a [-1, 1] batch whose sides are multiples of 8 (no grad, generator's own mode)."""
        with self.autocast():
            return self.G(xc).float()

    def state_dict(self) -> dict:
        state = {"step": self.step, "config": self.cfg.to_dict(), "arch": generator_arch(self.cfg),
                 "generator": self.G.state_dict(), "opt_g": self.optG.state_dict(),
                 "scalers": [s.state_dict() for s in self.scalers if s.is_enabled()]}
        if self.adversarial:
            state.update(discriminator=self.D.state_dict(), opt_d=self.optD.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        if normalize_arch(state["arch"]) != generator_arch(self.cfg):
            raise ValueError(f"checkpoint generator {state['arch']} does not match the config "
                             f"{generator_arch(self.cfg)}; resume with the same --recipe and network sizes")
        self.G.load_state_dict(state["generator"])
        self.optG.load_state_dict(state["opt_g"])
        if self.adversarial:
            if "discriminator" not in state:
                raise ValueError("checkpoint has no discriminator (trained with a non-adversarial recipe)")
            self.D.load_state_dict(state["discriminator"])
            self.optD.load_state_dict(state["opt_d"])
        # fp16 runs saved [G, D]; bf16 / fp32 runs saved [] (their scalers are disabled)
        for scaler, s in zip(self.scalers, state.get("scalers", [])):
            if scaler.is_enabled() and s:
                scaler.load_state_dict(s)
        self.step = int(state["step"])


def interval_means(sums: accel.DeviceSums, steps: int, first: int, last: int) -> dict[str, float]:
    """Each loss averaged over the ``steps`` steps since the last log line (one host sync); a
    non-finite loss in the interval is an error naming it and the steps (checked here rather than
    every step, which would sync every step)."""
    means = {k: v / max(steps, 1) for k, v in sums.values().items()}
    bad = {k: v for k, v in means.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite loss between steps {first + 1} and {last} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
            "lower --lr, or rerun with --no-amp if this is an fp16 GPU")
    return means


def _device(name: str | None) -> torch.device:
    return resolve_device(name)


def train_restoration(cfg: RestorationConfig) -> dict:
    """Train the restoration generator; return a summary (paths, steps, last losses).

    Writes under ``cfg.out_dir``: config.json, train_keys.json (the keys trained on, with the
    dataset and split), log.jsonl (each loss averaged over the log interval, summed on the device and
    read back once per interval, and PSNR / SSIM / MS-SSIM / MS-SSIM dB of the fixed
    sample crop), samples/step-NNNNNNN.png, checkpoints/last.pt (everything needed to resume) and
    generator.pt (for restore-shards; it carries the training keys too).
    """
    from lossyvision.pipelines.stream import read_variant, variant_dir

    if not cfg.shards or not cfg.variant:
        raise ValueError("shards and variant are required (e.g. shards=ROOT/cityscapes, variant=bpg-qp41)")
    split_dir = storage.join(cfg.shards, cfg.split)
    vdir, odir = variant_dir(split_dir, cfg.variant), variant_dir(split_dir, cfg.orig_variant)
    out = Path(cfg.out_dir)
    from lossyvision.train.classifier import check_run_folder, clear_run, write_summary
    check_run_folder(out, ("generator.pt", "checkpoints/last.pt"), cfg.resume, cfg.overwrite)
    device = _device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite:
        clear_run(out, ("generator.pt", "checkpoints/last.pt", "log.jsonl", "summary.json", TRAIN_KEYS))
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    keys = training_keys(vdir, cfg.max_images, cfg.seed)
    train_keys = {"dataset": read_variant(vdir).manifest.get("dataset"), "split": cfg.split, "variant": cfg.variant,
                  "orig_variant": cfg.orig_variant, "limit": cfg.max_images, "seed": cfg.seed, "count": len(keys),
                  "keys": keys}
    write_train_keys(out / TRAIN_KEYS, train_keys)
    log.info("training on %d images of %s/%s%s", len(keys), train_keys["dataset"], cfg.split,
             f" (a seeded subset, seed {cfg.seed})" if cfg.max_images is not None else "")

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    backends = accel.configure_backends(device, deterministic=cfg.deterministic, fixed_shapes=True)  # fixed crops
    trainer = RestorationTrainer(cfg, device)
    log.info("precision %s, %s", str(trainer.dtype or torch.float32).replace("torch.", ""),
             " ".join(f"{k}={v}" for k, v in backends.items()))
    ckpt_path = out / "checkpoints" / "last.pt"
    if cfg.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        from lossyvision.train.models import load_checkpoint

        trainer.load_state_dict(load_checkpoint(ckpt_path, "--resume: checkpoint", weights_only=False))
        log.info("resumed from %s at step %d", ckpt_path, trainer.step)

    dataset = PatchPairs(vdir, odir, cfg.patch_size, seed=cfg.seed, buffer_size=cfg.shuffle_buffer,
                         keys=frozenset(keys) if cfg.max_images is not None else None, max_pixels=cfg.max_pixels)
    sample_x, sample_xc = fixed_pair(vdir, odir, cfg.sample_size, cfg.max_pixels)
    sample_x_dev = to_unit(sample_xc.to(device))
    sample_source = sample_metrics(sample_xc, sample_x)

    # built once: its workers persist across epochs and read the epoch through dataset's SharedEpoch
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = trainer.step  # any value that differs between resumes reshuffles differently
        while True:
            dataset.set_epoch(epoch)
            n = 0
            for x, xc in loader:
                n += 1
                yield x, xc
            if n == 0:
                raise ValueError(f"no training batches from {vdir} (fewer pairs than --batch-size "
                                 f"{cfg.batch_size}, or --limit too small)")
            epoch += 1

    t0, last, start = time.time(), {}, trainer.step
    sums, since = accel.DeviceSums(device), start  # the losses since the last log line, on the device
    logf = (out / "log.jsonl").open("a")
    it = batches()
    try:
        with progress(total=cfg.steps, initial=start, desc="train-restoration", quiet=cfg.quiet, leave=True) as bar:
            while trainer.step < cfg.steps:
                x, xc = next(it)
                stats = trainer.train_step(to_unit(x.to(device, non_blocking=True)),
                                           to_unit(xc.to(device, non_blocking=True)))
                for k, v in stats.items():
                    if k != "lr":
                        sums.add(k, v)
                step = trainer.step
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    last = interval_means(sums, step - since, since, step)  # the one host sync of the interval
                    last["lr"] = stats["lr"]
                    sums.reset()
                    since = step
                    quality = {f"sample_{k}": v for k, v in
                               sample_metrics(to_uint8(trainer.restore(sample_x_dev)).cpu(), sample_x).items()}
                    rec = {"step": step, "time_s": round(time.time() - t0, 2), **last, **quality}
                    logf.write(json.dumps(_finite(rec)) + "\n")
                    logf.flush()
                    log.info("step %d/%d %s (%s)", step, cfg.steps,
                             " ".join(f"{k}={v:.4g}" for k, v in {**last, **quality}.items() if v is not None),
                             rate_eta(step - start, time.time() - t0, cfg.steps - step))
                if step % cfg.sample_every == 0 or step == cfg.steps:
                    restored = trainer.restore(sample_x_dev)
                    save_grid(out / "samples" / f"step-{step:07d}.png", sample_xc, to_uint8(restored).cpu(), sample_x)
                if step % cfg.ckpt_every == 0 or step == cfg.steps:
                    _atomic_save(trainer.state_dict(), ckpt_path)
                    save_generator(out / "generator.pt", trainer.G, generator_arch(cfg),
                                   {"step": step, "config": cfg.to_dict(), "recipe": cfg.recipe,
                                    "train_keys": train_keys})
    finally:
        it.close()  # the persistent workers end with `loader` when this function returns
        logf.close()
    summary = {"steps": trainer.step, "out_dir": str(out), "generator": str(out / "generator.pt"),
               "recipe": cfg.recipe, "train_images": len(keys), "train_keys": str(out / TRAIN_KEYS),
               "last": last, "sample_compressed": _finite(sample_source), "seconds": round(time.time() - t0, 2)}
    write_summary(out, summary)
    return summary
