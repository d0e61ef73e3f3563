"""Classifier training loop for the fine-tune / expert / stability recipes (Marie et al. 2022).

`train(TrainConfig(...))` streams `<shards>/<split>/<variant>` (and `<split>/orig` when the recipe
needs clean images), trains with Adam, cuts the learning rate on a validation-loss plateau and
stops after `max_lr_cuts` cuts or `epochs` epochs. On CUDA it uses bf16 autocast and
channels_last; under `torchrun` (WORLD_SIZE > 1) it runs DDP (NCCL on GPU, gloo on CPU).
Every epoch writes `last.pt` (everything needed to resume), `best.pt` (lowest validation loss)
and a line of `log.jsonl`; `config.json` holds the resolved config.
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
from lossyvision.pipelines.stream import (IMAGENET_MEAN, IMAGENET_STD, ShardStream, make_loader, to_device,
                                          variant_dir)
from lossyvision.train import models as model_lib
from lossyvision.train.recipes import Batch, Recipe, create_recipe

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Resolved training settings; defaults are the paper's MnasNet expert-training settings."""

    shards: str                      # ROOT/<dataset> (path or fsspec URL): holds <train_split>/ and <val_split>/ variant folders
    variant: str                     # compressed variant to train on, e.g. "j2k-r200"
    out: str                         # run folder: config.json, log.jsonl, last.pt, best.pt
    recipe: str = "expert"
    model: str = "mnasnet1_0"        # torchvision:NAME[:WEIGHTS], registered name, or checkpoint
    weights: str | None = None       # PATH to a state dict, or a weights enum name
    num_classes: int | None = None   # None: from the manifest's class list
    train_split: str = "train"
    val_split: str = "val"
    orig_variant: str = "orig"
    epochs: int = 45
    batch_size: int = 64             # paper: 320 (MnasNet), 384 (ResNet50): "as large as fits"
    lr: float = 1e-5
    betas: tuple[float, float] = (0.5, 0.99)
    alpha: float = 1e-2
    kl_reduction: str = "batchmean"  # "sum" = paper code; alpha_batchmean = alpha_sum * batch_size
    temperature: float = 1.0
    sigma: float = 4e-2              # stability: AWGN std in [0, 1] pixel units
    plateau_factor: float = 0.2      # lr / 5
    # the paper's code cuts on the 3rd epoch in a row without a new best val loss: patience 2
    plateau_patience: int = 2
    max_lr_cuts: int = 3
    reset_optimizer_on_cut: bool = False  # the paper's code rebuilt Adam (fresh moments) at each cut
    teacher_cache: str | None = "auto"    # "auto": <out>/teacher-<split>.h5; "off": online teacher; or a path
    workers: int = 4
    shuffle_buffer: int = 2000
    seed: int = 0
    amp: bool | None = None          # None: bf16 autocast on CUDA only
    channels_last: bool | None = None
    device: str | None = None        # None: cuda if available else cpu
    resume: bool = False
    max_steps_per_epoch: int | None = None  # cap for smoke tests / quick looks
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    deterministic: bool = False
    progress: bool = True

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


# Paper settings (Section IV.A and the authors' code); apply with `preset_config(name, ...)`.
PRESETS: dict[str, dict] = {
    "marie2022-mnasnet-expert": dict(recipe="expert", model="torchvision:mnasnet1_0:IMAGENET1K_V1", lr=1e-5,
                                     alpha=1e-2, kl_reduction="sum", batch_size=320, plateau_patience=2,
                                     max_lr_cuts=3, reset_optimizer_on_cut=True),
    "marie2022-mnasnet-finetune": dict(recipe="finetune", model="torchvision:mnasnet1_0:IMAGENET1K_V1", lr=1e-5,
                                       batch_size=320, plateau_patience=2, max_lr_cuts=3, reset_optimizer_on_cut=True),
    "marie2022-mnasnet-stability": dict(recipe="stability", model="torchvision:mnasnet1_0:IMAGENET1K_V1", lr=1e-6,
                                        alpha=5e-3, sigma=4e-2, kl_reduction="sum", batch_size=320,
                                        plateau_patience=3, max_lr_cuts=1, reset_optimizer_on_cut=True),
    # ResNet50: the paper reports the best of lr 1e-5, 5e-6, 1e-6; override lr to sweep
    "marie2022-resnet50-expert": dict(recipe="expert", model="torchvision:resnet50:IMAGENET1K_V1", lr=1e-5,
                                      alpha=1e-2, kl_reduction="sum", batch_size=384, plateau_patience=2,
                                      max_lr_cuts=3, reset_optimizer_on_cut=True),
    "marie2022-resnet50-finetune": dict(recipe="finetune", model="torchvision:resnet50:IMAGENET1K_V1", lr=1e-5,
                                        batch_size=384, plateau_patience=2, max_lr_cuts=3, reset_optimizer_on_cut=True),
    "marie2022-resnet50-stability": dict(recipe="stability", model="torchvision:resnet50:IMAGENET1K_V1", lr=1e-7,
                                         alpha=5e-3, sigma=5e-4, kl_reduction="sum", batch_size=384,
                                         plateau_patience=3, max_lr_cuts=1, reset_optimizer_on_cut=True),
}


def preset_config(preset: str | None, **overrides) -> TrainConfig:
    """TrainConfig from a preset plus explicit overrides (None values are dropped)."""
    base: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
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


# -- the run ---------------------------------------------------------------------------------------

class Trainer:
    """Holds the state of one run; `run()` trains to the end and returns a summary dict."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        dev = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dist = _init_distributed(torch.device(dev).type)
        if torch.device(dev).type == "cuda" and self.dist.world_size > 1:
            dev = f"cuda:{self.dist.local_rank}"
            torch.cuda.set_device(self.dist.local_rank)
        self.device = torch.device(dev)
        on_cuda = self.device.type == "cuda"
        self.amp = on_cuda if cfg.amp is None else cfg.amp
        self.channels_last = on_cuda if cfg.channels_last is None else cfg.channels_last
        self.out = Path(cfg.out)
        self.recipe: Recipe = create_recipe(cfg.recipe, alpha=cfg.alpha, kl_reduction=cfg.kl_reduction,
                                            temperature=cfg.temperature, sigma=cfg.sigma, std=cfg.std)
        # same seed on every rank while building the model, so g and f start identical everywhere
        seed_everything(cfg.seed, cfg.deterministic)

        self.dirs = {}
        for split in (cfg.train_split, cfg.val_split):
            split_dir = storage.join(cfg.shards, split)
            self.dirs[split] = {"variant": variant_dir(split_dir, cfg.variant) if self.recipe.inputs != "orig" else None,
                                "orig": variant_dir(split_dir, cfg.orig_variant) if self._needs_orig_stream() or self.recipe.uses_teacher else None}
        first = self.dirs[cfg.train_split]["variant"] or self.dirs[cfg.train_split]["orig"]
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
        self.scheduler = self._make_scheduler()
        self.ddp_model: nn.Module = model
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.ddp_model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.epoch = 0
        self.lr_cuts = 0
        self.best_val = math.inf
        self.history: list[dict] = []

    def _needs_orig_stream(self) -> bool:
        return self.recipe.inputs in ("orig", "pair")

    def _make_scheduler(self):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=self.cfg.plateau_factor, patience=self.cfg.plateau_patience,
            threshold=0.0, eps=0.0)  # any strictly lower val loss counts; cut however small lr is (paper code)

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
                tc.get_or_build(path, self.teacher, self.model_spec, orig, self.cfg.mean, self.cfg.std,
                                device=self.device, batch_size=self.cfg.batch_size, workers=self.cfg.workers,
                                autocast_dtype=torch.bfloat16 if self.amp else None, progress=self.cfg.progress)
            _barrier(self.dist)
            self.caches[split] = tc.open_cache(path, tc.expected_meta(self.model_spec, self.teacher, orig,
                                                                       self.cfg.mean, self.cfg.std))
        self.teacher = None  # logits come from the cache now; free the copy

    def _stream(self, split: str, train: bool) -> ShardStream:
        d = self.dirs[split]
        kw = dict(shuffle=train, seed=self.cfg.seed, buffer_size=self.cfg.shuffle_buffer if train else 0,
                  rank=self.dist.rank, world_size=self.dist.world_size, drop_remainder=self.dist.world_size > 1)
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
            b = Batch(y=y.to(dev), x=to_device(x, dev, **norm))
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

    # -- epochs -----------------------------------------------------------------------------------
    def _run_epoch(self, split: str, train: bool) -> dict:
        from tqdm import tqdm
        ds = self._stream(split, train)
        ds.set_epoch(self.epoch)
        loader = make_loader(ds, self.cfg.batch_size, self.cfg.workers, drop_last=False,
                             pin_memory=self.device.type == "cuda")
        total = ds.num_batches(self.cfg.batch_size, self.cfg.workers)
        if self.cfg.max_steps_per_epoch:
            total = min(total, self.cfg.max_steps_per_epoch)
        self.ddp_model.train(train)
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "correct": 0.0, "n": 0.0}
        t0 = time.perf_counter()
        bar = tqdm(loader, total=total, desc=f"epoch {self.epoch} {'train' if train else 'val'}",
                   disable=not (self.cfg.progress and self.dist.main), leave=False)
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
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        keys = list(sums)
        reduced = dict(zip(keys, _all_reduce_sum([sums[k] for k in keys], self.dist, self.device)))
        n = max(reduced["n"], 1.0)
        return {"loss": reduced["loss"] / n, "ce": reduced["ce"] / n, "kl": reduced["kl"] / n,
                "top1": reduced["correct"] / n, "samples": int(reduced["n"]),
                "seconds": time.perf_counter() - t0}

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"format": "lossyvision-classifier/1", "model": self.model.state_dict(),
                "model_spec": self.model_spec, "classes": list(self.classes) if self.classes else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch, "lr_cuts": self.lr_cuts, "best_val": self.best_val,
                "config": self.cfg.to_dict(), "history": self.history,
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
        ck = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.epoch, self.lr_cuts, self.best_val = ck["epoch"], ck["lr_cuts"], ck["best_val"]
        self.history = ck.get("history", [])
        rng = ck["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(_np_unstate(rng["numpy"]))
        random.setstate(_py_unstate(rng["python"]))
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        log.info("resumed from %s at epoch %d (%d lr cuts)", path, self.epoch, self.lr_cuts)

    def _done(self) -> bool:
        return self.epoch >= self.cfg.epochs or self.lr_cuts >= self.cfg.max_lr_cuts

    def run(self) -> dict:
        cfg = self.cfg
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        _barrier(self.dist)
        if cfg.resume:
            self._resume()
        if self._use_cache():
            self._prepare_caches()
        while not self._done():
            tr = self._run_epoch(cfg.train_split, train=True)
            with torch.no_grad():
                va = self._run_epoch(cfg.val_split, train=False)
            lr_before = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step(va["loss"])
            lr_after = self.optimizer.param_groups[0]["lr"]
            if lr_after < lr_before:
                self.lr_cuts += 1
                if cfg.reset_optimizer_on_cut:
                    self.optimizer = torch.optim.Adam(self.params, lr=lr_after, betas=tuple(cfg.betas))
                    sched_state = self.scheduler.state_dict()
                    self.scheduler = self._make_scheduler()
                    self.scheduler.load_state_dict(sched_state)
            improved = va["loss"] < self.best_val
            if improved:
                self.best_val = va["loss"]
            record = {"epoch": self.epoch, "lr": lr_before, "lr_next": lr_after, "lr_cuts": self.lr_cuts,
                      **{f"train_{k}": v for k, v in tr.items()}, **{f"val_{k}": v for k, v in va.items()}}
            self.history.append(record)
            self.epoch += 1
            self._save("last.pt")
            if improved:
                self._save("best.pt")
            if self.dist.main:
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                log.info("epoch %d: train loss %.4f, val loss %.4f, val top-1 %.4f, lr %.2e",
                         record["epoch"], tr["loss"], va["loss"], va["top1"], lr_before)
        if self.lr_cuts >= cfg.max_lr_cuts:
            log.info("stopping: learning rate cut %d times", self.lr_cuts)
        _barrier(self.dist)
        return {"out": str(self.out), "epochs": self.epoch, "lr_cuts": self.lr_cuts, "best_val_loss": self.best_val,
                "history": self.history}

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
