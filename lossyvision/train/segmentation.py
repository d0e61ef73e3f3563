"""DeepLabv3+ (output stride 16) on Cityscapes shards, for paper 2's train/test configurations.

The model is segmentation-models-pytorch's DeepLabV3Plus. Training follows the usual Cityscapes
recipe: random scale (0.5-2.0), random crop (768), horizontal flip, applied identically to
image and label map (bilinear for the image, nearest for the labels, both on the same half-pixel
grid; label padding 255), cross entropy ignoring 255, SGD with poly learning rate. AMP on CUDA, DDP under torchrun (SyncBN),
checkpoints and resume. At the end the model is evaluated on the test variant, the images split over the ranks.

Under torchrun every rank seeds its own generators (``distributed.seed_rank``) after the model is
built under the common seed, so ASPP dropout masks and crops differ per GPU; checkpoints hold every
rank's RNG states. The loss stays on the device between log intervals: one host sync per
``log_every`` steps (and one per checkpoint), none per step.
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

import torch
from torch.utils.data import IterableDataset

from lossyvision import storage
from lossyvision.pipelines.classlists import IGNORE_INDEX, variant_class_list
from lossyvision.names import check_name
from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS
from lossyvision.pipelines.stream import OptionError, check_limits, resolve_device
from lossyvision.progress import progress, rate_eta
from lossyvision.train.seg_augment import random_scale_crop_flip  # noqa: F401  (crop first, then resize: seg_augment.py)

log = logging.getLogger(__name__)


@dataclass
class SegmentationConfig:
    shards: str = ""                 # ROOT/cityscapes (a local path or an fsspec URL)
    train_variant: str = "orig"
    test_variant: str = "orig"
    train_split: str = "train"
    test_split: str = "val"
    out_dir: str = "runs/segmentation"
    encoder: str = "resnet101"       # any segmentation-models-pytorch encoder
    encoder_weights: str | None = "imagenet"  # ImageNet (downloaded or cached), a local state dict, or None/"none"
    output_stride: int = 16
    num_classes: int | None = None   # None: the class count of the training shards' class list
    crop_size: int = 768
    scale_min: float = 0.5
    scale_max: float = 2.0
    flip: bool = True
    batch_size: int = 8              # per process (ignored when global_batch is set)
    global_batch: int | None = None  # images per step over all processes: batch_size = global_batch // world size
    steps: int = 90_000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    num_workers: int = 4
    shuffle_buffer: int = 32
    seed: int = 0
    amp: bool = True
    sync_bn: bool = True             # under DDP: per-GPU batches of 2-4 are too small for plain BN
    device: str | None = None
    deterministic: bool = False      # deterministic kernels, no cudnn.benchmark (accel.configure_backends)
    dist_timeout_s: float | None = None  # process-group timeout; None: $LOSSYVISION_DIST_TIMEOUT_S or 1800
    log_every: int = 50              # a log.jsonl record and an INFO line (loss, lr, rate, ETA) every N steps
    ckpt_every: int = 2000
    quiet: bool = False              # no progress bars (they are off anyway when stderr is not a terminal)
    resume: bool = False
    evaluate: bool = True            # evaluate on test_variant at the end
    max_eval_images: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS  # images in shards over this many pixels are refused before decoding
    overwrite: bool = False          # replace a run already in out_dir (else it is refused without resume)

    def __post_init__(self) -> None:
        from lossyvision.nets.segmentation import weights_choice

        self.encoder_weights = weights_choice(self.encoder_weights)
        for what, name in (("--variant", self.train_variant), ("--val-variant", self.test_variant),
                           ("--train-split", self.train_split), ("--val-split", self.test_split)):
            check_name(what, name)
        check_limits(crop_size=self.crop_size, batch_size=self.batch_size, global_batch=self.global_batch,
                     steps=self.steps, num_workers=(self.num_workers, 0), log_every=self.log_every,
                     ckpt_every=self.ckpt_every, max_eval_images=self.max_eval_images, max_pixels=self.max_pixels, num_classes=self.num_classes)
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise OptionError(f"--lr must be a positive number, got {self.lr!r}")
        if self.resume and self.overwrite:
            raise OptionError("--resume continues a run and --overwrite replaces it; give one of them")
        if self.output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {self.output_stride}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")

    def to_dict(self) -> dict:
        return asdict(self)


# -- model ---------------------------------------------------------------------------------------

def model_arch(cfg: SegmentationConfig) -> dict:
    from lossyvision.nets.segmentation import aspp_rates

    return {"encoder": cfg.encoder, "output_stride": cfg.output_stride, "num_classes": cfg.num_classes,
            "atrous_rates": list(aspp_rates(cfg.output_stride))}


def build_model(encoder: str = "resnet101", num_classes: int = 19, output_stride: int = 16,
                encoder_weights: str | None = None) -> torch.nn.Module:
    """DeepLabv3+ with DeepLabv3+'s ASPP rates; ``encoder_weights``: None/'none', 'imagenet' or a path
    (:func:`lossyvision.nets.segmentation.build_deeplabv3plus`)."""
    from lossyvision.nets.segmentation import build_deeplabv3plus

    return build_deeplabv3plus(encoder, num_classes, output_stride, encoder_weights)


def load_segmentation_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A model written by train-segmentation and its checkpoint (:mod:`lossyvision.nets.segmentation`)."""
    from lossyvision.nets.segmentation import load_segmentation_model as load

    return load(path, device)


# -- data ----------------------------------------------------------------------------------------



class SegmentationCrops(IterableDataset):
    """Augmented (uint8 3xcxc image, uint8 cxc labels) from one variant, split over ranks and workers.

    Each DataLoader worker draws its crops from a generator seeded by (seed, epoch, rank, worker id)
    (:meth:`rng`). The epoch is a :class:`~lossyvision.pipelines.epoch.SharedEpoch`, so persistent
    workers, whose copies of this dataset were made when they started, see every ``set_epoch``."""

    def __init__(self, variant_dir: str, cfg: SegmentationConfig, ignore_index: int = IGNORE_INDEX,
                 rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        from lossyvision.pipelines.epoch import SharedEpoch
        from lossyvision.pipelines.stream import ShardStream

        self.stream = ShardStream(variant_dir, shuffle=True, seed=cfg.seed, buffer_size=cfg.shuffle_buffer,
                                  rank=rank, world_size=world_size, max_pixels=cfg.max_pixels)
        self.crop, self.scale, self.flip, self.seed = cfg.crop_size, (cfg.scale_min, cfg.scale_max), cfg.flip, cfg.seed
        self.ignore_index = ignore_index
        self.rank = self.stream.rank
        self._epoch = SharedEpoch()

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)
        self.stream.set_epoch(epoch)

    def rng(self, worker_id: int = 0) -> random.Random:
        """The crop generator of DataLoader worker ``worker_id`` (0 without workers) this epoch."""
        return random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker_id}")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        # in step with the stream even where its epoch is a worker's private copy
        self.stream.set_epoch(self.epoch)
        rng = self.rng(info.id if info else 0)
        for x, y, key in self.stream:
            if not isinstance(y, torch.Tensor):
                raise ValueError(f"sample {key!r} has no seg.png label map (is this a segmentation variant?)")
            yield random_scale_crop_flip(x, y, self.crop, self.scale, self.flip, rng, self.ignore_index)


# -- training ------------------------------------------------------------------------------------

def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    return base * (1 - min(step, total) / total) ** power


def process_batch(cfg: SegmentationConfig, world_size: int) -> int:
    """Crops per step on each process: ``global_batch // world_size`` when a global batch is set
    (one-line OptionError unless it divides), else ``batch_size``."""
    from lossyvision.train.distributed import per_process_batch

    return per_process_batch(cfg.global_batch, world_size) if cfg.global_batch is not None else cfg.batch_size


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_segmentation(cfg: SegmentationConfig) -> dict:
    """Train DeepLabv3+ on ``train_variant``; evaluate on ``test_variant``; return a summary.

    Writes under ``cfg.out_dir``: config.json, log.jsonl, checkpoints/last.pt (resume),
    model.pt (for eval-segmentation) and, when evaluating, results/<train>__<test>.json plus
    results.{csv,json,md} and miou_vs_bpp.png. Under torchrun (WORLD_SIZE > 1) every rank calls
    this; it joins the process group (unless the caller already did) and leaves it on return.
    """
    from lossyvision.pipelines.stream import variant_dir
    from lossyvision.train import distributed

    if not cfg.shards:
        raise ValueError("shards is required (ROOT/cityscapes)")
    vdir = variant_dir(storage.join(cfg.shards, cfg.train_split), cfg.train_variant)
    classes = variant_class_list(vdir)  # the manifest's "segmentation" block; old manifests: Cityscapes' 19
    if cfg.evaluate:  # fail before training, not after
        test_classes = variant_class_list(variant_dir(storage.join(cfg.shards, cfg.test_split), cfg.test_variant))
        if test_classes.classes != classes.classes:
            raise OptionError(f"--val-variant {cfg.test_variant} ({cfg.test_split}) has other classes than --variant "
                              f"{cfg.train_variant} ({cfg.train_split}): {test_classes.name} vs {classes.name}")
    if cfg.num_classes is None:
        cfg.num_classes = classes.num_classes
    elif cfg.num_classes != classes.num_classes:
        raise OptionError(f"num_classes {cfg.num_classes} differs from the {classes.num_classes} classes of {vdir}")
    device = resolve_device(cfg.device)
    info = distributed.init_distributed(device.type, cfg.dist_timeout_s)
    try:
        if device.type == "cuda":
            if info.distributed:
                device = torch.device("cuda", info.local_rank)
            elif device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        return _Run(cfg, info, device, vdir, classes).train()
    finally:
        distributed.destroy(info)


class _Run:
    """One run of :func:`train_segmentation` on one rank."""

    def __init__(self, cfg: SegmentationConfig, info, device: torch.device, vdir: str, classes) -> None:
        from lossyvision import accel
        from lossyvision.nets.segmentation import check_encoder_weights
        from lossyvision.train import distributed
        from lossyvision.train.classifier import check_run_folder, clear_run

        self.cfg, self.info, self.device, self.vdir, self.classes = cfg, info, device, vdir, classes
        self.batch = process_batch(cfg, info.world_size)
        self.out = out = Path(cfg.out_dir)
        check_run_folder(out, ("model.pt", "checkpoints/last.pt"), cfg.resume, cfg.overwrite)
        encoder_weights = None if cfg.resume else cfg.encoder_weights  # a resumed run has its weights
        check_encoder_weights(cfg.encoder, encoder_weights)  # offline without them: one line now, before any output
        backends = accel.configure_backends(device, deterministic=cfg.deterministic, fixed_shapes=True)  # fixed crops
        self.dtype = accel.amp_dtype(device, cfg.amp and device.type == "cuda")
        self.channels_last = device.type == "cuda"
        if info.main:
            out.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite:
                clear_run(out, ("model.pt", "checkpoints/last.pt", "log.jsonl", "summary.json"))
            # the batches as run: per process, and over all processes
            (out / "config.json").write_text(json.dumps(
                {**cfg.to_dict(), "batch_size": self.batch, "global_batch": self.batch * info.world_size,
                 "world_size": info.world_size, "amp_dtype": str(self.dtype).removeprefix("torch.") if self.dtype
                 else None, "channels_last": self.channels_last, "backends": backends}, indent=2) + "\n")
        distributed.barrier(info)  # the folder is checked and cleared before any rank writes to it

        # the same initial weights on every rank (DDP would broadcast rank 0's anyway); each rank's
        # own generators (dropout, crops) are seeded after the build
        distributed.seed_rank(cfg.seed, 0)
        with distributed.local_rank_zero_first(info):  # one ImageNet download per node
            model = build_model(cfg.encoder, cfg.num_classes, cfg.output_stride, encoder_weights)
        model = model.to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if info.distributed and cfg.sync_bn and device.type == "cuda":  # SyncBatchNorm has no CPU kernel
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None) if info.distributed else model
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scaler = accel.grad_scaler(device, self.dtype)
        self.criterion = torch.nn.CrossEntropyLoss(ignore_index=classes.ignore_index)
        self.step = 0
        self.rng_line: str | None = None
        self.ckpt_path = out / "checkpoints" / "last.pt"
        if cfg.resume:
            self._resume()
        else:
            distributed.seed_rank(cfg.seed, info.rank)

    def _resume(self) -> None:
        from lossyvision.train import distributed
        from lossyvision.train.models import load_checkpoint

        cfg = self.cfg
        if not self.ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.ckpt_path}")
        state = load_checkpoint(self.ckpt_path, "--resume: checkpoint", weights_only=False)
        if state["arch"] != model_arch(cfg):
            raise ValueError(f"checkpoint model {state['arch']} does not match the config {model_arch(cfg)}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        # checkpoints from before per-rank states hold none: every rank is re-seeded then
        self.rng_line = distributed.restore_rng_states(state.get("rng"), self.info, cfg.seed, self.step)
        if self.info.main:
            log.info("resumed from %s at step %d; %s", self.ckpt_path, self.step, self.rng_line)

    def _save(self, path: Path, full: bool) -> None:
        """Write a checkpoint from rank 0; ``full`` (resume) ones hold every rank's RNG states, a
        collective: every rank calls it."""
        from lossyvision.train import distributed

        rng = distributed.gather_rng_states(self.info) if full else None
        if not self.info.main:
            return
        state = {"arch": model_arch(self.cfg), "model": self.model.state_dict(), "config": self.cfg.to_dict(),
                 "step": self.step, "segmentation": self.classes.to_manifest()}
        if full:
            state.update(opt=self.opt.state_dict(), scaler=self.scaler.state_dict(), rng=rng,
                         world_size=self.info.world_size)
        _atomic_save(state, path)

    def _loader(self) -> torch.utils.data.DataLoader:
        dataset = SegmentationCrops(self.vdir, self.cfg, self.classes.ignore_index, self.info.rank,
                                    self.info.world_size)
        workers = self.cfg.num_workers
        # built once: persistent workers keep their decoders and shard readers across epochs
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch, num_workers=workers, drop_last=True,
                                             pin_memory=self.device.type == "cuda", persistent_workers=workers > 0)
        return loader

    def _batches(self, loader: torch.utils.data.DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.step  # a resumed run starts a fresh order
        while True:
            loader.dataset.set_epoch(epoch)
            n = 0
            for batch in loader:
                n += 1
                yield batch
            if n == 0:
                raise ValueError(f"no training batches from {self.vdir}: fewer samples per rank than "
                                 f"batch size {self.batch}")
            epoch += 1

    def _mean_loss(self, sums, steps: int) -> float:
        """The loss averaged over the last ``steps`` steps and all ranks: one all_reduce, one sync."""
        from lossyvision.train import distributed

        total = distributed.all_reduce_sum(sums.tensor(["loss"]), self.info)
        sums.reset()
        return float(total.item()) / (steps * self.info.world_size)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        """One optimiser step on a uint8 batch (pinned on CUDA); returns the loss, on the device.
        No host sync (except GradScaler's inf check on the fp16 path)."""
        from lossyvision import accel
        from lossyvision.pipelines.stream import to_device

        for group in self.opt.param_groups:
            group["lr"] = lr
        x = to_device(x, self.device, channels_last=self.channels_last)
        y = y.to(self.device, non_blocking=True).long()
        with accel.autocast(self.device, self.dtype):
            logits = self.net(x)
        loss = self.criterion(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach()

    def train(self) -> dict:
        from lossyvision import accel
        from lossyvision.eval.segmentation import EvalConfig, evaluate_checkpoint
        from lossyvision.train import distributed
        from lossyvision.train.classifier import write_summary

        cfg, info, device, out = self.cfg, self.info, self.device, self.out
        sums = accel.DeviceSums(device)
        t0, loss_v, start = time.time(), float("nan"), self.step
        logged = self.step
        self.net.train()
        loader = self._loader()
        it = self._batches(loader)
        logf = (out / "log.jsonl").open("a") if info.main else None
        try:
            with progress(total=cfg.steps, initial=self.step, desc="train-segmentation",
                          quiet=cfg.quiet or not info.main, leave=True) as bar:
                while self.step < cfg.steps:
                    x, y = next(it)
                    lr = poly_lr(cfg.lr, self.step, cfg.steps, cfg.poly_power)
                    sums.add("loss", self.train_step(x, y, lr))  # stays on the device: no sync in the step
                    self.step += 1
                    bar.update(1)
                    step = self.step
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        loss_v = self._mean_loss(sums, step - logged)  # every rank: they raise together
                        if not math.isfinite(loss_v):
                            raise FloatingPointError(f"loss is {loss_v} (mean of steps {logged + 1}-{step}); "
                                                     "lower --lr or disable --amp")
                        logged = step
                        if info.main:
                            logf.write(json.dumps({"step": step, "loss": loss_v, "lr": lr,
                                                   "time_s": round(time.time() - t0, 2)}) + "\n")
                            logf.flush()
                            log.info("step %d/%d loss %.4f lr %.3g (%s)", step, cfg.steps, loss_v, lr,
                                     rate_eta(step - start, time.time() - t0, cfg.steps - step))
                    if step % cfg.ckpt_every == 0 or step == cfg.steps:
                        self._save(self.ckpt_path, full=True)
        finally:
            if logf is not None:
                logf.close()
            it.close()
            del it, loader  # the persistent workers end here, before the evaluation
        summary = {"steps": self.step, "loss": loss_v, "seconds": round(time.time() - t0, 2), "out_dir": str(out),
                   "world_size": info.world_size, "batch_size": self.batch,
                   "global_batch": self.batch * info.world_size}
        if self.rng_line:
            summary["rng"] = self.rng_line
        self._save(out / "model.pt", full=False)
        distributed.barrier(info)  # model.pt is written before any rank reads it
        if info.main:
            summary["model"] = str(out / "model.pt")
        if cfg.evaluate:  # every rank evaluates its share of the test images
            records = evaluate_checkpoint(EvalConfig(
                checkpoint=str(out / "model.pt"), shards=cfg.shards, test_variants=[cfg.test_variant],
                split=cfg.test_split, out_dir=str(out), device=str(device), amp=cfg.amp,
                max_images=cfg.max_eval_images, max_pixels=cfg.max_pixels, quiet=cfg.quiet or not info.main),
                dist=info)
            summary["miou_pct"] = records[0]["miou_pct"]
            summary["configuration"] = records[0]["configuration"]
        if info.main:
            write_summary(out, summary)
        distributed.barrier(info)  # the run folder is complete when any rank returns
        return summary
