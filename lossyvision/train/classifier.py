"""Classifier training loop for the fine-tune / expert / stability recipes (Marie et al. 2022).

`train(TrainConfig(...))` streams `<shards>/<split>/<variant>` (or a mixture of several variants: a
universal expert), and `<split>/orig` when the recipe needs clean images, trains with Adam, cuts the
learning rate on a validation-loss plateau exactly as the authors' code did (best loss seeded from the
pretrained model's, epoch 0 left out, lr/5 on the third epoch in a row without a new best, Adam
rebuilt, stop once lr <= lr0 / 5**3 in their float arithmetic) or after `epochs` epochs. On CUDA it
uses mixed precision (`accel.amp_dtype`: bf16 where the GPU runs it natively, else fp16 with a
GradScaler) and channels_last (`amp=False`: fp32 with TF32 off, as the paper trained); under
`torchrun` (WORLD_SIZE > 1) it runs DDP (NCCL on GPU, gloo on CPU; `lossyvision.train.distributed`:
a process-group timeout, per-rank RNG states, `global_batch` split over the processes). The step
never waits for the device: metrics are summed on it and read once per `log_every` steps and once
per epoch. Every epoch writes `last.pt` (everything needed to resume), `best.pt` (lowest validation
loss, the pretrained model included) and a line of `log.jsonl`; `config.json` holds the resolved
config (plus the world size and the per-process batch). docs/classifier.md maps every setting to the
paper and the authors' code.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lossyvision import accel, storage
from lossyvision.names import check_name
from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS
from lossyvision.pipelines.shards import write_json_atomic
from lossyvision.pipelines.stream import (IMAGENET_MEAN, IMAGENET_STD, OptionError, ShardStream, check_limits,
                                          make_loader, resolve_device, to_device, variant_dir)
from lossyvision.progress import progress, rate_eta
from lossyvision.train import distributed
from lossyvision.train import models as model_lib
from lossyvision.train.distributed import DistInfo
from lossyvision.train.recipes import PAPER_ALPHA_BATCHMEAN, Batch, Recipe, create_recipe

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "lossyvision-classifier/2"  # 2: RNG states per rank ("rng": {"ranks": [...]}), scaler


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
    batch_size: int = 320            # per process (without global_batch); paper: 320 (MnasNet), 384 (ResNet50)
    # over all processes: each of WORLD_SIZE processes takes global_batch / WORLD_SIZE (must divide) and
    # batch_size is ignored. The paper's batches are global; lr is not rescaled for another global batch
    global_batch: int | None = None
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
        check_limits(epochs=self.epochs, batch_size=self.batch_size, global_batch=self.global_batch,
                     num_classes=self.num_classes,
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
        d = {k: v for k, v in d.items() if k not in RESOLVED_KEYS}  # config.json's derived values
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        d = dict(d)
        for k in ("betas", "mean", "std"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)


# what config.json adds to TrainConfig's fields (Trainer.resolved): not settings, dropped by from_dict
RESOLVED_KEYS = ("world_size", "per_process_batch", "global_batch_effective", "amp_dtype", "backends", "dist_timeout_s")


# Paper settings (Section IV.A and the authors' code, albmarie/expert_training); apply with
# `preset_config(name, ...)`. Alphas are the paper's (used with KLDivLoss(reduction='sum')) times the
# paper's batch, so with `batchmean` they keep the paper's strength at any batch size. A preset's
# batch_size is the paper's *global* batch: launch with global_batch (--global-batch) to keep it on N GPUs.
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
        # read (and checked) on every run, so a bad $LOSSYVISION_DIST_TIMEOUT_S fails on one process too
        self.dist_timeout_s = distributed.timeout_seconds()
        self.dist: DistInfo = distributed.init_distributed(torch.device(dev).type, self.dist_timeout_s)
        self._loaders: dict[tuple[str, bool], tuple[ShardStream, Any]] = {}
        try:
            self._setup(dev)
        except BaseException:
            distributed.destroy(self.dist)  # every rank fails the same check: leave the group together
            raise

    def _setup(self, dev: str) -> None:
        cfg = self.cfg
        if torch.device(dev).type == "cuda" and self.dist.distributed:
            dev = f"cuda:{self.dist.local_rank}"
            torch.cuda.set_device(self.dist.local_rank)
        self.device = torch.device(dev)
        on_cuda = self.device.type == "cuda"
        # the per-process batch: --global-batch split over the processes, else --batch-size as given
        self.batch_size = (distributed.per_process_batch(cfg.global_batch, self.dist.world_size)
                           if cfg.global_batch is not None else cfg.batch_size)
        self.amp_dtype = accel.amp_dtype(self.device, cfg.amp)
        self.amp = self.amp_dtype is not None
        # fp32 as the paper trained: no TF32 in convolutions or matmuls either
        self.backends = accel.configure_backends(self.device, deterministic=cfg.deterministic, fixed_shapes=True,
                                                 tf32=False if on_cuda and not self.amp else None)
        self.scaler = accel.grad_scaler(self.device, self.amp_dtype)  # enabled for fp16 only
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
        # the same seed on every rank while building the model, so g and f start identical everywhere
        # (DDP broadcasts rank 0's weights anyway); the data order is ShardStream's (cfg.seed, epoch)
        distributed.seed_rank(cfg.seed, 0)

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
        # pretrained weights: one download per node (local rank 0), the other ranks read its copy
        with distributed.local_rank_zero_first(self.dist):
            model = model_lib.create_model(cfg.model, weights=cfg.weights, num_classes=num_classes)
        self.teacher: nn.Module | None = None
        self.caches: dict = {}
        if self.recipe.uses_teacher:
            # g is a frozen copy of the *initial* model: keep it before any training step
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
            self.teacher = teacher.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        # from here on each rank draws its own stability noise and dropout masks (rank 0 keeps cfg.seed)
        distributed.seed_rank(cfg.seed, self.dist.rank)
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
        if self.dist.distributed:
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
            # every rank computes its share of a missing cache (no rank-0-only phase behind a barrier);
            # the teacher runs once per image here, so it runs in fp32 whatever the student's precision
            self.caches[split] = tc.get_or_build(
                self._cache_path(split), self.teacher, self.model_spec, self.dirs[split]["orig"], self.cfg.mean,
                self.cfg.std, dist_info=self.dist, device=self.device, batch_size=self.batch_size,
                workers=self.cfg.workers, progress=self._bars(), max_pixels=self.cfg.max_pixels)
        self.teacher = None  # logits come from the cache now; free the copy

    def _stream(self, split: str, train: bool) -> ShardStream:
        d = self.dirs[split]
        kw = dict(shuffle=train, seed=self.cfg.seed, buffer_size=self.cfg.shuffle_buffer if train else 0,
                  # validation: every sample exactly once over the ranks (unequal counts are fine there:
                  # it runs the unwrapped model, so no DDP collective waits for a rank with fewer batches)
                  rank=self.dist.rank, world_size=self.dist.world_size, drop_remainder=train and self.dist.world_size > 1,
                  max_pixels=self.cfg.max_pixels)
        if self.recipe.inputs == "orig":
            return ShardStream(d["orig"], **kw)
        if self.recipe.inputs == "pair" and not self.caches:
            return ShardStream(d["variant"], d["orig"], **kw)
        return ShardStream(d["variant"], **kw)

    def _loader(self, split: str, train: bool) -> tuple[ShardStream, Any]:
        """This split's stream and DataLoader, set to the current epoch. Built once per run: with
        workers, they are persistent and read the epoch from the stream's shared counter."""
        key = (split, train)
        if key in self._loaders:
            ds, loader = self._loaders[key]
            ds.set_epoch(self.epoch)
            return ds, loader
        ds = self._stream(split, train)
        ds.set_epoch(self.epoch)
        # training drops the ragged tail (a short batch skews BatchNorm; a size-1 batch breaks it), as
        # drop_last=True would; validation sees every sample
        kw = dict(drop_last=train, pin_memory=self.device.type == "cuda")
        loader = make_loader(ds, self.batch_size, self.cfg.workers, persistent_workers=self.cfg.workers > 0, **kw)
        self._loaders[key] = (ds, loader)
        return ds, loader

    def _batch(self, items: tuple, split: str) -> Batch:
        cfg, dev = self.cfg, self.device
        norm = dict(mean=cfg.mean, std=cfg.std, channels_last=self.channels_last)
        if len(items) == 4:
            x, xt, y, keys = items
            b = Batch(y=y.to(dev, non_blocking=True), x=to_device(x, dev, **norm), x_tilde=to_device(xt, dev, **norm))
        elif self.recipe.inputs == "orig":
            x, y, keys = items
            b = Batch(y=y.to(dev, non_blocking=True), x=to_device(x, dev, **norm), x_uint8=x.to(dev, non_blocking=True))
        else:
            xt, y, keys = items
            b = Batch(y=y.to(dev, non_blocking=True), x_tilde=to_device(xt, dev, **norm))
        if self.recipe.uses_teacher:
            if self.caches:
                on_cuda = dev.type == "cuda"
                b.teacher = self.caches[split].lookup(keys, pin=on_cuda).to(dev, non_blocking=on_cuda)
            else:
                with torch.no_grad(), self._autocast():
                    b.teacher = self.teacher(b.x).float()
        return b

    def _autocast(self):
        return accel.autocast(self.device, self.amp_dtype)

    def _bars(self) -> bool:
        return self.cfg.progress and not self.cfg.quiet and self.dist.main

    # -- epochs -----------------------------------------------------------------------------------
    def step(self, batch: Batch, train: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward (and, training, backward + optimiser step): no host sync (fp32 / bf16; fp16's
        GradScaler checks for inf gradients on the host once per step)."""
        with torch.set_grad_enabled(train), self._autocast():
            loss, parts = self.recipe.loss(self.ddp_model if train else self.model, batch)
        if train:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss, parts

    def _run_epoch(self, split: str, train: bool) -> dict:
        ds, loader = self._loader(split, train)
        total = len(loader)
        if train and total == 0:
            raise ValueError(f"{split}: {len(ds)} training samples on this rank give no full batch of "
                             f"{self.batch_size}; lower --batch-size / --global-batch")
        if self.cfg.max_steps_per_epoch:
            total = min(total, self.cfg.max_steps_per_epoch)
        self.ddp_model.train(train)
        # running sums stay on the device: one host sync per log interval and one at the end, each
        # after an all_reduce, so every rank sees the same numbers and takes the same decisions
        sums = accel.DeviceSums(self.device)
        names = ["loss", "ce", "kl", "correct", "n"]
        t0 = time.perf_counter()
        what = "train" if train else "val"
        with progress(loader, total=total, desc=f"epoch {self.epoch} {what}", quiet=not self._bars()) as bar:
            for step, items in enumerate(bar):
                if step >= total:
                    break  # max_steps_per_epoch; equal on every rank, so DDP stays in step
                batch = self._batch(items, split)
                loss, parts = self.step(batch, train)
                n = batch.y.shape[0]
                sums.add("loss", loss, weight=n)
                sums.add("ce", parts["ce"], weight=n)
                if "kl" in parts:
                    sums.add("kl", parts["kl"], weight=n)
                sums.add("correct", (parts["logits"].argmax(1) == batch.y).sum())
                sums.add("n", n)
                if train and (step + 1) % self.cfg.log_every == 0 and step + 1 < total:
                    so_far = distributed.all_reduce_sum(sums.tensor(names), self.dist).tolist()
                    self._log_interval(dict(zip(names, so_far)), step + 1, total, t0, bar)
        reduced = dict(zip(names, distributed.all_reduce_sum(sums.tensor(names), self.dist).tolist()))
        n = max(reduced["n"], 1.0)
        out = {"loss": reduced["loss"] / n, "ce": reduced["ce"] / n, "kl": reduced["kl"] / n,
               "top1_pct": 100.0 * reduced["correct"] / n, "samples": int(reduced["n"]),
               "seconds": time.perf_counter() - t0}
        if train and not math.isfinite(out["loss"]):
            raise FloatingPointError(f"epoch {self.epoch} {what}: the loss is {out['loss']}; lower --lr "
                                     "(or try --amp off)")
        return out

    def _log_interval(self, v: dict[str, float], done: int, total: int, t0: float, bar) -> None:
        """The sync point of a log interval: the loss logged is the mean over the epoch so far, all ranks
        (checked for inf/NaN here, not per step: the same verdict on every rank), then the log line and
        the bar's postfix."""
        loss = v["loss"] / max(v["n"], 1.0)
        if not math.isfinite(loss):
            raise FloatingPointError(f"epoch {self.epoch} step {done}: the training loss is {loss}; lower --lr "
                                     "(or try --amp off)")
        if self.dist.main:
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            log.info("epoch %d step %d/%d: loss %.4f, lr %.2e (%s)", self.epoch, done, total, loss,
                     lr, rate_eta(done, time.perf_counter() - t0, total - done))

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self, rng_states: list[dict] | None = None) -> dict:
        """The checkpoint; `rng_states`: every rank's RNG states in rank order (`gather_rng_states`)."""
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "model_spec": self.model_spec, "classes": list(self.classes) if self.classes else None,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "plateau": dict(self.plateau), "epoch": self.epoch, "lr_cuts": self.lr_cuts, "best_val": self.best_val,
                "config": self.cfg.to_dict(), "world_size": self.dist.world_size, "batch_size": self.batch_size,
                "history": self.history, "stopped": self.stopped,
                "rng": {"ranks": rng_states if rng_states is not None else [distributed.rng_state()]}}

    def _save(self, *names: str) -> None:
        """Write checkpoints `names` on rank 0 (a collective: call it on every rank)."""
        states = distributed.gather_rng_states(self.dist)
        if not self.dist.main:
            return
        state = self.state(states)
        for name in names:
            tmp = self.out / f".{name}.tmp"
            torch.save(state, tmp)
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
        if ck.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.lr_cuts, self.best_val = ck["epoch"], ck["lr_cuts"], ck["best_val"]
        self.stopped = ck.get("stopped", False)
        self.history = ck.get("history", [])
        line = distributed.restore_rng_states(_rank_states(ck.get("rng")), self.dist, self.cfg.seed, self.epoch)
        log.log(logging.INFO if self.dist.main else logging.DEBUG, "resume: %s", line)
        log.info("resumed from %s at epoch %d (%d lr cuts)", path, self.epoch, self.lr_cuts)

    def _done(self) -> bool:
        return self.epoch >= self.cfg.epochs or self.stopped

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.dist.main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def resolved(self) -> dict:
        """What this run derived from its config and launch: written beside the config and in the summary."""
        return {"world_size": self.dist.world_size, "per_process_batch": self.batch_size,
                "global_batch_effective": self.batch_size * self.dist.world_size,
                "amp_dtype": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None,
                "backends": self.backends, "dist_timeout_s": self.dist_timeout_s if self.dist.distributed else None}

    def run(self) -> dict:
        cfg = self.cfg
        # after the inputs and the model were checked, so their errors come first
        check_run_folder(self.out, ("last.pt",), cfg.resume, cfg.overwrite)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite:
                clear_run(self.out, ("last.pt", "best.pt", "log.jsonl", SUMMARY))
            (self.out / "config.json").write_text(json.dumps({**cfg.to_dict(), **self.resolved()}, indent=2) + "\n")
        distributed.barrier(self.dist)
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
            self._save("last.pt", *(["best.pt"] if improved else []))
            log.info("epoch %d: train loss %.4f, val loss %.4f, val top-1 %.2f %%, lr %.2e",
                     record["epoch"], tr["loss"], va["loss"], va["top1_pct"], lr_before)
        if self.stopped:
            log.info("stopping: learning rate cut %d times (lr %.3g)", self.lr_cuts, self.plateau["lr"])
        summary = {"out": str(self.out), "epochs": self.epoch, "lr_cuts": self.lr_cuts, "best_val_loss": self.best_val,
                   "stopped": self.stopped, "world_size": self.dist.world_size, "per_process_batch": self.batch_size,
                   "global_batch": self.batch_size * self.dist.world_size}
        if self.dist.main:
            write_summary(self.out, summary)
        distributed.barrier(self.dist)
        return {**summary, "history": self.history}

    def close(self) -> None:
        """Stop the persistent loader workers and leave the process group (if this run joined it)."""
        self._loaders.clear()
        distributed.destroy(self.dist)


def train(cfg: TrainConfig) -> dict:
    """Train to completion (or resume) and return a summary; see TrainConfig for the knobs."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.close()


def _rank_states(rng: dict | None) -> list[dict] | None:
    """The per-rank RNG states of a checkpoint; one written before they were per rank holds rank 0's only."""
    if not rng:
        return None
    if "ranks" in rng:
        return list(rng["ranks"])
    cuda = rng.get("cuda") or []
    return [{"python": rng["python"], "numpy": rng["numpy"], "torch": rng["torch"], "cuda": cuda[0] if cuda else None}]
