"""Classifier training loop for the fine-tune / expert / stability recipes (Marie et al. 2022).

`train(TrainConfig(...))` streams `<shards>/<split>/<variant>` (or a mixture of several variants: a
universal expert), and `<split>/orig` when the recipe needs clean images, trains with Adam, cuts the
learning rate on a validation-loss plateau exactly as the authors' code did (best loss seeded from the
pretrained model's, epoch 0 left out, lr/5 on the third epoch in a row without a new best, Adam
rebuilt, stop once lr <= lr0 / 5**3 in their float arithmetic) or after `epochs` epochs. On CUDA it
uses bf16 autocast and channels_last (`amp=False`: fp32 with TF32 off, as the paper trained); under
`torchrun` (WORLD_SIZE > 1) it runs DDP (NCCL on GPU, gloo on CPU). Every epoch writes `last.pt`
(everything needed to resume), `best.pt` (lowest validation loss, the pretrained model included) and
a line of `log.jsonl`; `config.json` holds the resolved config. docs/classifier.md maps every setting
to the paper and the authors' code.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lossyvision import storage
from lossyvision.names import check_name
from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS
from lossyvision.pipelines.shards import write_json_atomic
from lossyvision.pipelines.stream import (IMAGENET_MEAN, IMAGENET_STD, OptionError, ShardStream, check_limits,
                                          make_loader, resolve_device, to_device, variant_dir)
from lossyvision.progress import progress, rate_eta
from lossyvision.train import models as model_lib
from lossyvision.train.recipes import PAPER_ALPHA_BATCHMEAN, Batch, Recipe, create_recipe

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Resolved training settings; defaults are the paper's MnasNet expert-training settings."""

    shards: str                      # ROOT/<dataset> (path or fsspec URL): holds <train_split>/ and <val_split>/ variant folders
    variant: str | list[str]         # compressed variant to train on, e.g. "j2k-r200"; several: their mixture
    out: str                         # run folder: config.json, log.jsonl, last.pt, best.pt
    recipe: str = "expert"
    model: str = "mnasnet1_0"        # torchvision:NAME[:WEIGHTS], registered name, or checkpoint
    weights: str | None = None       # PATH to a state dict, or a weights enum name
    num_classes: int | None = None   # None: from the manifest's class list
    train_split: str = "train"
    val_split: str = "val"
    orig_variant: str = "orig"
    epochs: int = 45
    batch_size: int = 320            # per process; paper: 320 (MnasNet), 384 (ResNet50)
    lr: float = 1e-5
    betas: tuple[float, float] = (0.5, 0.99)
    # batchmean alpha 3.2 = the paper's alpha 1e-2 with KLDivLoss(reduction='sum') at B = 320, at any batch size
    alpha: float = PAPER_ALPHA_BATCHMEAN
    kl_reduction: str = "batchmean"  # "sum" = paper code's form; alpha_batchmean = alpha_sum * batch_size
    temperature: float = 1.0
    sigma: float = 4e-2              # stability: noise std (x 256 levels for "uint8", [0, 1] units for "gaussian")
    stability_noise: str = "uint8"   # "uint8": the authors' clipped, truncated pixel noise; "gaussian": unclipped, normalised
    plateau_factor: float = 0.2      # lr / 5
    # the paper's code cuts on the 3rd epoch in a row without a new best val loss: patience 2
    plateau_patience: int = 2
    max_lr_cuts: int = 3
    # "authors": stop at the cut where lr <= lr0 * (1/5**max_lr_cuts), in the code's float arithmetic (a
    # rounding quirk makes that the 4th cut for lr0 1e-5 and 5e-6, the 3rd for 1e-6); "cuts": after max_lr_cuts cuts
    stop_rule: str = "authors"
    reset_optimizer_on_cut: bool = True   # the paper's code rebuilt Adam (fresh moments) at each cut
    seed_best_from_initial: bool = True   # the code's epoch -1: the pretrained model's val loss is the first best
    plateau_skip_first_epoch: bool = True  # the code leaves epoch 0's val loss out of the plateau rule
    teacher_cache: str | None = "auto"    # "auto": <out>/teacher-<split>.h5; "off": online teacher; or a path
    workers: int = 4
    shuffle_buffer: int = 2000
    seed: int = 0
    amp: bool | None = None          # None: bf16 autocast on CUDA only; False: fp32, TF32 off (the paper)
    channels_last: bool | None = None
    device: str | None = None        # None: cuda if available else cpu
    resume: bool = False
    max_steps_per_epoch: int | None = None  # cap for smoke tests / quick looks
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    deterministic: bool = False
    progress: bool = True            # False: no progress bars (the older spelling of quiet=True)
    quiet: bool = False              # no progress bars (they are off anyway when stderr is not a terminal)
    log_every: int = 100             # an INFO line every N training steps (loss, lr, rate, ETA), besides each epoch's
    overwrite: bool = False          # replace a run already in `out` (else it is refused without `resume`)
    max_pixels: int = DEFAULT_MAX_PIXELS  # images in shards over this many pixels are refused before decoding

    def __post_init__(self) -> None:
        check_limits(epochs=self.epochs, batch_size=self.batch_size, num_classes=self.num_classes,
                     workers=(self.workers, 0), max_steps_per_epoch=self.max_steps_per_epoch, log_every=self.log_every,
                     max_pixels=self.max_pixels, patience=(self.plateau_patience, 0), max_lr_cuts=self.max_lr_cuts)
        for what, name in (("--train-split", self.train_split), ("--val-split", self.val_split),
                           ("orig_variant", self.orig_variant)):
            check_name(what, name)
        for v in [self.variant] if isinstance(self.variant, str) else self.variant:
            check_name("--variant", v)
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise OptionError(f"--lr must be a positive number, got {self.lr!r}")
        if self.resume and self.overwrite:
            raise OptionError("--resume continues a run and --overwrite replaces it; give one of them")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        d = dict(d)
        for k in ("betas", "mean", "std"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)


# Paper settings (Section IV.A and the authors' code, albmarie/expert_training); apply with
# `preset_config(name, ...)`. Alphas are the paper's (used with KLDivLoss(reduction='sum')) times the
# paper's batch, so with `batchmean` they keep the paper's strength at any batch size.
_MODELS = {"mnasnet": ("torchvision:mnasnet1_0:IMAGENET1K_V1", 320), "resnet50": ("torchvision:resnet50:IMAGENET1K_V1", 384)}
# Table I's cells as the variants prepare-shards writes for them (J2K without MCT: Pillow's default,
# which the authors' code used), and the lossless row, trained on `orig`.
TABLE1_CELLS = ("orig", "jpeg-q75", "jpeg-q10", "jpeg-q5", "j2k-r75-nomct", "j2k-r200-nomct", "j2k-r400-nomct",
                "bpg-qp41", "bpg-qp46", "bpg-qp51")
# ResNet50, per cell, as the authors ran it (python/expert_training.py, the calls at the end):
# expert (lr, alpha with 'sum') and fine-tune lr. MnasNet: lr 1e-5, alpha 1e-2 everywhere.
_RESNET50_CELLS = {
    "orig": (1e-6, 1e-3, 1e-6), "jpeg-q75": (5e-6, 5e-3, 5e-6), "jpeg-q10": (1e-5, 1e-2, 1e-5),
    "jpeg-q5": (5e-6, 1e-2, 5e-6), "j2k-r75-nomct": (5e-6, 1e-2, 5e-6), "j2k-r200-nomct": (1e-5, 1e-2, 5e-6),
    "j2k-r400-nomct": (1e-5, 1e-2, 5e-6), "bpg-qp41": (5e-6, 1e-2, 5e-6), "bpg-qp46": (5e-6, 1e-2, 5e-6),
    "bpg-qp51": (5e-6, 1e-2, 5e-6),
}
_COMMON = dict(kl_reduction="batchmean", plateau_patience=2, max_lr_cuts=3, stop_rule="authors",
               reset_optimizer_on_cut=True, seed_best_from_initial=True, plateau_skip_first_epoch=True, epochs=45)
# stability: patience 3, stop at the first cut, no epoch -1 seeding (python/stability_training.py)
_STABILITY = dict(recipe="stability", kl_reduction="batchmean", plateau_patience=3, max_lr_cuts=1, stop_rule="authors",
                  reset_optimizer_on_cut=True, seed_best_from_initial=False, plateau_skip_first_epoch=False,
                  stability_noise="uint8", epochs=45)


def _build_presets() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for m, (ref, b) in _MODELS.items():
        base = dict(model=ref, batch_size=b, **_COMMON)
        # generic: the paper's text (lr 1e-5, alpha 1e-2); the variant comes from --variant
        out[f"marie2022-{m}-expert"] = dict(recipe="expert", lr=1e-5, alpha=1e-2 * b, **base)
        out[f"marie2022-{m}-finetune"] = dict(recipe="finetune", lr=1e-5, **base)
        for cell in TABLE1_CELLS:
            lr_e, a_e, lr_f = _RESNET50_CELLS[cell] if m == "resnet50" else (1e-5, 1e-2, 1e-5)
            out[f"marie2022-{m}-expert-{cell}"] = dict(recipe="expert", variant=cell, lr=lr_e, alpha=a_e * b, **base)
            out[f"marie2022-{m}-finetune-{cell}"] = dict(recipe="finetune", variant=cell, lr=lr_f, **base)
    out["marie2022-mnasnet-stability"] = dict(model=_MODELS["mnasnet"][0], batch_size=320, lr=1e-6, alpha=5e-3 * 320,
                                              sigma=4e-2, **_STABILITY)
    out["marie2022-resnet50-stability"] = dict(model=_MODELS["resnet50"][0], batch_size=384, lr=1e-7, alpha=5e-3 * 384,
                                               sigma=5e-4, **_STABILITY)
    return out


PRESETS: dict[str, dict] = _build_presets()


def list_presets(pattern: str = "*") -> list[str]:
    import fnmatch
    return sorted(n for n in PRESETS if fnmatch.fnmatch(n, pattern))


def preset_config(preset: str | None, **overrides) -> TrainConfig:
    """TrainConfig from a preset plus explicit overrides (None values are dropped)."""
    base: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))} "
                             "(or a wildcard listing: lossyvision.train.classifier.list_presets('marie2022-resnet50-*'))")
        base = dict(PRESETS[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(base)


# -- distributed helpers ---------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_type: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        here = True
    else:
        here = False
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), here)


def _all_reduce_sum(values: list[float], dist_info: DistInfo, device: torch.device) -> list[float]:
    if dist_info.world_size == 1:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _barrier(dist_info: DistInfo) -> None:
    if dist_info.world_size > 1:
        import torch.distributed as dist
        dist.barrier()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


# -- the run folder --------------------------------------------------------------------------------

SUMMARY = "summary.json"  # written when a run ends: its presence marks a finished run


def check_run_folder(out: Path, checkpoints: tuple[str, ...], resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over a finished (or an interrupted) one unless `resume` or `overwrite`."""
    if resume or overwrite:
        return
    if (out / SUMMARY).is_file():
        raise OptionError(f"{out} holds a finished run; pass --resume to continue it or --overwrite to replace it")
    found = [c for c in checkpoints if (out / c).is_file()]
    if found:
        raise OptionError(f"{out} holds an unfinished run ({found[0]}); pass --resume to continue it or --overwrite "
                          "to replace it")


def clear_run(out: Path, names: tuple[str, ...]) -> None:
    """--overwrite: remove the previous run's own files (only these names, only inside `out`)."""
    for n in names:
        p = out / n
        if p.is_file() or p.is_symlink():
            p.unlink()


def write_summary(out: Path, summary: dict) -> None:
    write_json_atomic(str(out / SUMMARY), summary, default=str)


# -- the run ---------------------------------------------------------------------------------------

class Trainer:
    """Holds the state of one run; `run()` trains to the end and returns a summary dict."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        dev = str(resolve_device(cfg.device))
        self.dist = _init_distributed(torch.device(dev).type)
        if torch.device(dev).type == "cuda" and self.dist.world_size > 1:
            dev = f"cuda:{self.dist.local_rank}"
            torch.cuda.set_device(self.dist.local_rank)
        self.device = torch.device(dev)
        on_cuda = self.device.type == "cuda"
        self.amp = on_cuda if cfg.amp is None else cfg.amp
        if on_cuda and not self.amp:  # fp32 as the paper trained: no TF32 in convolutions or matmuls either
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.channels_last = on_cuda if cfg.channels_last is None else cfg.channels_last
        self.out = Path(cfg.out)
        if cfg.stop_rule not in ("authors", "cuts"):
            raise ValueError(f"stop_rule must be 'authors' or 'cuts', got {cfg.stop_rule!r}")
        self.recipe: Recipe = create_recipe(cfg.recipe, alpha=cfg.alpha, kl_reduction=cfg.kl_reduction,
                                            temperature=cfg.temperature, sigma=cfg.sigma, std=cfg.std, mean=cfg.mean,
                                            noise=cfg.stability_noise)
        self.variants = [cfg.variant] if isinstance(cfg.variant, str) else list(cfg.variant)
        if not self.variants:
            raise ValueError("give at least one variant to train on")
        # same seed on every rank while building the model, so g and f start identical everywhere
        seed_everything(cfg.seed, cfg.deterministic)

        self.dirs = {}
        for split in (cfg.train_split, cfg.val_split):
            split_dir = storage.join(cfg.shards, split)
            vdirs = [variant_dir(split_dir, v) for v in self.variants] if self.recipe.inputs != "orig" else None
            self.dirs[split] = {"variant": (vdirs[0] if len(vdirs) == 1 else vdirs) if vdirs else None,
                                "orig": variant_dir(split_dir, cfg.orig_variant) if self._needs_orig_stream() or self.recipe.uses_teacher else None}
        first = self.dirs[cfg.train_split]["orig"] if self.recipe.inputs == "orig" else (
            self.dirs[cfg.train_split]["variant"] if len(self.variants) == 1 else self.dirs[cfg.train_split]["variant"][0])
        from lossyvision.pipelines.stream import read_variant
        info = read_variant(first)
        if info.task not in ("classification", "none"):
            raise ValueError(f"{first}: task is {info.task!r}, not classification")
        num_classes = cfg.num_classes or (len(info.classes) if info.classes else None)
        self.classes = info.classes

        self.model_spec = model_lib.model_spec_of(cfg.model, num_classes)
        model = model_lib.create_model(cfg.model, weights=cfg.weights, num_classes=num_classes)
        self.teacher: nn.Module | None = None
        self.caches: dict = {}
        if self.recipe.uses_teacher:
            # g is a frozen copy of the *initial* model: keep it before any training step
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
            self.teacher = teacher.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)  # per-rank dropout / noise streams
        params = self.recipe.trainable_parameters(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))
        # the authors' plateau rule: best val loss so far, epochs without beating it, the current lr
        self.plateau = {"best": math.inf, "counter": 0, "lr": cfg.lr}
        self.ddp_model: nn.Module = model
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.ddp_model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.epoch = 0
        self.lr_cuts = 0
        self.stopped = False
        self.best_val = math.inf
        self.history: list[dict] = []

    def _needs_orig_stream(self) -> bool:
        return self.recipe.inputs in ("orig", "pair")

    def _plateau_step(self, val_loss: float) -> bool:
        """The authors' rule (python/expert_training.py); returns True when training must stop.

        A strictly lower val loss resets the counter; otherwise, once the counter has reached
        `plateau_patience`, lr is divided by 5 (Adam rebuilt with fresh moments) and training stops
        if lr <= lr0 * (1/5**max_lr_cuts), computed in floats as the code does (stop_rule "authors"),
        or once `max_lr_cuts` cuts were made (stop_rule "cuts")."""
        cfg, p = self.cfg, self.plateau
        if val_loss < p["best"]:
            p["best"], p["counter"] = val_loss, 0
            return False
        if p["counter"] != cfg.plateau_patience:
            p["counter"] += 1
            return False
        divisor = round(1.0 / cfg.plateau_factor, 12)
        p["counter"] = 0
        p["lr"] = p["lr"] / divisor
        self.lr_cuts += 1
        if cfg.stop_rule == "authors":
            stop = p["lr"] <= (1 / divisor ** cfg.max_lr_cuts) * cfg.lr
        else:
            stop = self.lr_cuts >= cfg.max_lr_cuts
        if stop:
            return True
        if cfg.reset_optimizer_on_cut:
            self.optimizer = torch.optim.Adam(self.params, lr=p["lr"], betas=tuple(cfg.betas))
        else:
            for g in self.optimizer.param_groups:
                g["lr"] = p["lr"]
        return False

    # -- data -------------------------------------------------------------------------------------
    def _use_cache(self) -> bool:
        return self.recipe.uses_teacher and (self.cfg.teacher_cache or "off") not in ("off", "none")

    def _cache_path(self, split: str) -> Path:
        tc = self.cfg.teacher_cache
        if tc == "auto":
            return self.out / f"teacher-{split}.h5"
        p = Path(tc)
        return p / f"teacher-{split}.h5" if p.suffix not in (".h5", ".hdf5") else p.with_name(f"{p.stem}-{split}{p.suffix}")

    def _prepare_caches(self) -> None:
        from lossyvision.train import teacher_cache as tc
        for split in (self.cfg.train_split, self.cfg.val_split):
            path = self._cache_path(split)
            orig = self.dirs[split]["orig"]
            if self.dist.main:
                # the teacher runs once per image here, so it runs in fp32 whatever the student's precision
                tc.get_or_build(path, self.teacher, self.model_spec, orig, self.cfg.mean, self.cfg.std,
                                device=self.device, batch_size=self.cfg.batch_size, workers=self.cfg.workers,
                                progress=self._bars(), max_pixels=self.cfg.max_pixels)
            _barrier(self.dist)
            self.caches[split] = tc.open_cache(path, tc.expected_meta(self.model_spec, self.teacher, orig,
                                                                       self.cfg.mean, self.cfg.std))
        self.teacher = None  # logits come from the cache now; free the copy

    def _stream(self, split: str, train: bool) -> ShardStream:
        d = self.dirs[split]
        kw = dict(shuffle=train, seed=self.cfg.seed, buffer_size=self.cfg.shuffle_buffer if train else 0,
                  rank=self.dist.rank, world_size=self.dist.world_size, drop_remainder=self.dist.world_size > 1,
                  max_pixels=self.cfg.max_pixels)
        if self.recipe.inputs == "orig":
            return ShardStream(d["orig"], **kw)
        if self.recipe.inputs == "pair" and not self.caches:
            return ShardStream(d["variant"], d["orig"], **kw)
        return ShardStream(d["variant"], **kw)

    def _batch(self, items: tuple, split: str) -> Batch:
        cfg, dev = self.cfg, self.device
        norm = dict(mean=cfg.mean, std=cfg.std, channels_last=self.channels_last)
        if len(items) == 4:
            x, xt, y, keys = items
            b = Batch(y=y.to(dev), x=to_device(x, dev, **norm), x_tilde=to_device(xt, dev, **norm))
        elif self.recipe.inputs == "orig":
            x, y, keys = items
            b = Batch(y=y.to(dev), x=to_device(x, dev, **norm), x_uint8=x.to(dev, non_blocking=True))
        else:
            xt, y, keys = items
            b = Batch(y=y.to(dev), x_tilde=to_device(xt, dev, **norm))
        if self.recipe.uses_teacher:
            if self.caches:
                b.teacher = self.caches[split].lookup(keys).to(dev)
            else:
                with torch.no_grad(), self._autocast():
                    b.teacher = self.teacher(b.x).float()
        return b

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _bars(self) -> bool:
        return self.cfg.progress and not self.cfg.quiet and self.dist.main

    # -- epochs -----------------------------------------------------------------------------------
    def _run_epoch(self, split: str, train: bool) -> dict:
        ds = self._stream(split, train)
        ds.set_epoch(self.epoch)
        # training drops the ragged tail (a short batch skews BatchNorm; a size-1 batch breaks it), as
        # drop_last=True would; validation sees every sample
        loader = make_loader(ds, self.cfg.batch_size, self.cfg.workers, drop_last=train,
                             pin_memory=self.device.type == "cuda")
        total = len(loader)
        if train and total == 0:
            raise ValueError(f"{split}: {len(ds)} training samples on this rank give no full batch of "
                             f"{self.cfg.batch_size}; lower --batch-size")
        if self.cfg.max_steps_per_epoch:
            total = min(total, self.cfg.max_steps_per_epoch)
        self.ddp_model.train(train)
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "correct": 0.0, "n": 0.0}
        t0 = time.perf_counter()
        what = "train" if train else "val"
        with progress(loader, total=total, desc=f"epoch {self.epoch} {what}", quiet=not self._bars()) as bar:
            for step, items in enumerate(bar):
                if step >= total:
                    break  # max_steps_per_epoch; equal on every rank, so DDP stays in step
                batch = self._batch(items, split)
                with torch.set_grad_enabled(train), self._autocast():
                    loss, parts = self.recipe.loss(self.ddp_model, batch)
                if train:
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                n = batch.y.shape[0]
                sums["loss"] += loss.item() * n
                sums["ce"] += parts["ce"].item() * n
                sums["kl"] += parts["kl"].item() * n if "kl" in parts else 0.0
                sums["correct"] += (parts["logits"].argmax(1) == batch.y).sum().item()
                sums["n"] += n
                if train and self.dist.main:
                    lr = self.optimizer.param_groups[0]["lr"]
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
                    if (step + 1) % self.cfg.log_every == 0 and step + 1 < total:
                        log.info("epoch %d step %d/%d: loss %.4f, lr %.2e (%s)", self.epoch, step + 1, total,
                                 loss.item(), lr, rate_eta(step + 1, time.perf_counter() - t0, total - step - 1))
        keys = list(sums)
        reduced = dict(zip(keys, _all_reduce_sum([sums[k] for k in keys], self.dist, self.device)))
        n = max(reduced["n"], 1.0)
        return {"loss": reduced["loss"] / n, "ce": reduced["ce"] / n, "kl": reduced["kl"] / n,
                "top1_pct": 100.0 * reduced["correct"] / n, "samples": int(reduced["n"]),
                "seconds": time.perf_counter() - t0}

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"format": "lossyvision-classifier/1", "model": self.model.state_dict(),
                "model_spec": self.model_spec, "classes": list(self.classes) if self.classes else None,
                "optimizer": self.optimizer.state_dict(), "plateau": dict(self.plateau),
                "epoch": self.epoch, "lr_cuts": self.lr_cuts, "best_val": self.best_val,
                "config": self.cfg.to_dict(), "history": self.history, "stopped": self.stopped,
                "rng": {"torch": torch.get_rng_state(), "numpy": _np_state(), "python": _py_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def _save(self, name: str) -> None:
        if not self.dist.main:
            return
        tmp = self.out / f".{name}.tmp"
        torch.save(self.state(), tmp)
        tmp.replace(self.out / name)

    def _resume(self) -> None:
        path = self.out / "last.pt"
        if not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {path}")
        ck = model_lib.load_checkpoint(path, "--resume: checkpoint", weights_only=False)
        if not isinstance(ck, dict) or "model" not in ck:
            raise ValueError(f"{path} is not a train-classifier checkpoint; start a new --out or pass --overwrite")
        self.model.load_state_dict(ck["model"])
        if "plateau" not in ck:
            raise ValueError(f"{path} was written by an older lossyvision (no plateau state); start a new --out")
        self.plateau = dict(ck["plateau"])
        for g in self.optimizer.param_groups:
            g["lr"] = self.plateau["lr"]
        self.optimizer.load_state_dict(ck["optimizer"])
        self.epoch, self.lr_cuts, self.best_val = ck["epoch"], ck["lr_cuts"], ck["best_val"]
        self.stopped = ck.get("stopped", False)
        self.history = ck.get("history", [])
        rng = ck["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(_np_unstate(rng["numpy"]))
        random.setstate(_py_unstate(rng["python"]))
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        log.info("resumed from %s at epoch %d (%d lr cuts)", path, self.epoch, self.lr_cuts)

    def _done(self) -> bool:
        return self.epoch >= self.cfg.epochs or self.stopped

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.dist.main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def run(self) -> dict:
        cfg = self.cfg
        # after the inputs and the model were checked, so their errors come first
        check_run_folder(self.out, ("last.pt",), cfg.resume, cfg.overwrite)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite:
                clear_run(self.out, ("last.pt", "best.pt", "log.jsonl", SUMMARY))
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        _barrier(self.dist)
        if cfg.resume:
            self._resume()
        if self._use_cache():
            self._prepare_caches()
        if self.epoch == 0 and not self.history and cfg.seed_best_from_initial:
            # the authors' epoch -1: the pretrained model on the (compressed) val split seeds the best loss
            with torch.no_grad():
                va = self._run_epoch(cfg.val_split, train=False)
            self.plateau["best"] = self.best_val = va["loss"]
            self._log({"epoch": -1, "lr": cfg.lr, "lr_next": cfg.lr, "lr_cuts": 0, **{f"val_{k}": v for k, v in va.items()}})
            self._save("best.pt")
            log.info("epoch -1 (initial model): val loss %.4f, val top-1 %.2f %%", va["loss"], va["top1_pct"])
        while not self._done():
            tr = self._run_epoch(cfg.train_split, train=True)
            with torch.no_grad():
                va = self._run_epoch(cfg.val_split, train=False)
            lr_before = self.plateau["lr"]
            if not (cfg.plateau_skip_first_epoch and self.epoch == 0):
                self.stopped = self._plateau_step(va["loss"])
            improved = va["loss"] < self.best_val
            if improved:
                self.best_val = va["loss"]
            record = {"epoch": self.epoch, "lr": lr_before, "lr_next": self.plateau["lr"], "lr_cuts": self.lr_cuts,
                      **{f"train_{k}": v for k, v in tr.items()}, **{f"val_{k}": v for k, v in va.items()}}
            self.epoch += 1
            self._log(record)
            self._save("last.pt")
            if improved:
                self._save("best.pt")
            log.info("epoch %d: train loss %.4f, val loss %.4f, val top-1 %.2f %%, lr %.2e",
                     record["epoch"], tr["loss"], va["loss"], va["top1_pct"], lr_before)
        if self.stopped:
            log.info("stopping: learning rate cut %d times (lr %.3g)", self.lr_cuts, self.plateau["lr"])
        summary = {"out": str(self.out), "epochs": self.epoch, "lr_cuts": self.lr_cuts, "best_val_loss": self.best_val,
                   "stopped": self.stopped}
        if self.dist.main:
            write_summary(self.out, summary)
        _barrier(self.dist)
        return {**summary, "history": self.history}

    def close(self) -> None:
        if self.dist.initialized_here:
            import torch.distributed as dist
            dist.destroy_process_group()


def train(cfg: TrainConfig) -> dict:
    """Train to completion (or resume) and return a summary; see TrainConfig for the knobs."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.close()


# rng states as plain lists, so checkpoints load with torch.load(weights_only=True) elsewhere
def _np_state() -> list:
    s = np.random.get_state()
    return [s[0], torch.from_numpy(s[1].astype(np.int64)), s[2], s[3], s[4]]


def _np_unstate(s: list) -> tuple:
    return (s[0], s[1].numpy().astype(np.uint32), s[2], s[3], s[4])


def _py_state() -> list:
    v, state, gauss = random.getstate()
    return [v, list(state), gauss]


def _py_unstate(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])
