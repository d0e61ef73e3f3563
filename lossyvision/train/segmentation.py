"""DeepLabv3+ (output stride 16) on Cityscapes shards, for paper 2's train/test configurations.

The model is segmentation-models-pytorch's DeepLabV3Plus. Training follows the usual Cityscapes
recipe: random scale (0.5-2.0), random crop (768), horizontal flip, applied identically to
image and label map (bilinear for the image, nearest for the labels, both on the same half-pixel
grid; label padding 255), cross entropy ignoring 255, SGD with poly learning rate. AMP on CUDA, DDP under torchrun (SyncBN),
checkpoints and resume. At the end the model is evaluated on the test variant.
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
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from lossyvision import storage
from lossyvision.pipelines.classlists import IGNORE_INDEX, variant_class_list
from lossyvision.names import check_name
from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS
from lossyvision.pipelines.stream import OptionError, check_limits, resolve_device
from lossyvision.progress import progress, rate_eta

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
    batch_size: int = 8              # per process
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
        check_limits(crop_size=self.crop_size, batch_size=self.batch_size, steps=self.steps,
                     num_workers=(self.num_workers, 0), log_every=self.log_every, ckpt_every=self.ckpt_every,
                     max_eval_images=self.max_eval_images, max_pixels=self.max_pixels, num_classes=self.num_classes)
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

def random_scale_crop_flip(image: torch.Tensor, label: torch.Tensor, crop: int, scale: tuple[float, float],
                           flip: bool, rng: random.Random,
                           ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale, pad, crop and flip a uint8 3xHxW image and uint8 HxW train-id map identically.

    The image is resized bilinearly, the labels with nearest neighbour (so no new ids appear), both
    with half-pixel centres, so a label stays under the image pixels it marked;
    padding is 0 for the image and 255 (ignore) for the labels. Returns uint8 3xcxc, uint8 cxc.
    """
    h, w = label.shape
    s = rng.uniform(*scale)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
        image = image.round().clamp(0, 255).to(torch.uint8)
        # nearest-exact samples at (i + 0.5) * in/out, the pixel centres bilinear uses (align_corners=False);
        # plain "nearest" floors i * in/out and shifts the labels up to half a pixel against the image
        label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0].to(torch.uint8)
    ph, pw = max(crop - nh, 0), max(crop - nw, 0)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0)
        label = F.pad(label, (0, pw, 0, ph), value=ignore_index)
    top, left = rng.randrange(label.shape[0] - crop + 1), rng.randrange(label.shape[1] - crop + 1)
    image, label = image[:, top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]
    if flip and rng.random() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.contiguous()


class SegmentationCrops(IterableDataset):
    """Augmented (uint8 3xcxc image, uint8 cxc labels) from one variant, split over ranks and workers."""

    def __init__(self, variant_dir: str, cfg: SegmentationConfig, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        from lossyvision.pipelines.stream import ShardStream

        self.stream = ShardStream(variant_dir, shuffle=True, seed=cfg.seed, buffer_size=cfg.shuffle_buffer,
                                  max_pixels=cfg.max_pixels)
        self.crop, self.scale, self.flip, self.seed = cfg.crop_size, (cfg.scale_min, cfg.scale_max), cfg.flip, cfg.seed
        self.ignore_index = ignore_index
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        rng = random.Random(hash((self.seed, self.epoch, self.stream.rank, info.id if info else 0)))
        for x, y, key in self.stream:
            if not isinstance(y, torch.Tensor):
                raise ValueError(f"sample {key!r} has no seg.png label map (is this a segmentation variant?)")
            yield random_scale_crop_flip(x, y, self.crop, self.scale, self.flip, rng, self.ignore_index)


# -- training ------------------------------------------------------------------------------------

def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    return base * (1 - min(step, total) / total) ** power


def _dist_setup(cfg: SegmentationConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    if cfg.device and cfg.device != "auto":
        device = resolve_device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_segmentation(cfg: SegmentationConfig) -> dict:
    """Train DeepLabv3+ on ``train_variant``; evaluate on ``test_variant``; return a summary.

    Writes under ``cfg.out_dir``: config.json, log.jsonl, checkpoints/last.pt (resume),
    model.pt (for eval-segmentation) and, when evaluating, results/<train>__<test>.json plus
    results.{csv,json,md} and miou_vs_bpp.png.
    """
    from lossyvision.eval.segmentation import EvalConfig, evaluate_checkpoint
    from lossyvision.pipelines.stream import to_device, variant_dir

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
    rank, world, device = _dist_setup(cfg)
    out = Path(cfg.out_dir)
    from lossyvision.train.classifier import check_run_folder, clear_run, write_summary
    check_run_folder(out, ("model.pt", "checkpoints/last.pt"), cfg.resume, cfg.overwrite)
    from lossyvision.nets.segmentation import check_encoder_weights

    encoder_weights = None if cfg.resume else cfg.encoder_weights  # a resumed run has its weights
    check_encoder_weights(cfg.encoder, encoder_weights)  # offline without them: one line now, before any output
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite:
            clear_run(out, ("model.pt", "checkpoints/last.pt", "log.jsonl", "summary.json"))
        (out / "config.json").write_text(json.dumps({**cfg.to_dict(), "world_size": world}, indent=2) + "\n")
    random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)

    model = build_model(cfg.encoder, cfg.num_classes, cfg.output_stride, encoder_weights).to(device)
    if world > 1 and cfg.sync_bn and device.type == "cuda":  # SyncBatchNorm has no CPU kernel
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    step = 0
    ckpt_path = out / "checkpoints" / "last.pt"
    if cfg.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        from lossyvision.train.models import load_checkpoint

        state = load_checkpoint(ckpt_path, "--resume: checkpoint", weights_only=False)
        if state["arch"] != model_arch(cfg):
            raise ValueError(f"checkpoint model {state['arch']} does not match the config {model_arch(cfg)}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        log.info("resumed from %s at step %d", ckpt_path, step)

    dataset = SegmentationCrops(vdir, cfg, classes.ignore_index)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=classes.ignore_index)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = step
        while True:
            dataset.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, drop_last=True,
                pin_memory=device.type == "cuda", persistent_workers=False)
            n = 0
            for batch in loader:
                n += 1
                yield batch
            if n == 0:
                raise ValueError(f"no training batches from {vdir}: fewer samples per rank than "
                                 f"batch size {cfg.batch_size}")
            epoch += 1

    def save(path: Path, full: bool) -> None:
        state = {"arch": model_arch(cfg), "model": model.state_dict(), "config": cfg.to_dict(), "step": step,
                 "segmentation": classes.to_manifest()}
        if full:
            state.update(opt=opt.state_dict(), scaler=scaler.state_dict())
        _atomic_save(state, path)

    t0, loss_v, start = time.time(), float("nan"), step
    net.train()
    it = batches()
    logf = (out / "log.jsonl").open("a") if rank == 0 else None
    try:
        with progress(total=cfg.steps, initial=step, desc="train-segmentation", quiet=cfg.quiet or rank != 0,
                      leave=True) as bar:
            while step < cfg.steps:
                x, y = next(it)
                lr = poly_lr(cfg.lr, step, cfg.steps, cfg.poly_power)
                for group in opt.param_groups:
                    group["lr"] = lr
                x = to_device(x, device)
                y = y.to(device, non_blocking=True).long()
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = net(x)
                loss = criterion(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                step += 1
                bar.update(1)
                loss_v = loss.item()
                if not math.isfinite(loss_v):
                    raise FloatingPointError(f"loss is {loss_v} at step {step}; lower --lr or disable --amp")
                if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                    logf.write(json.dumps({"step": step, "loss": loss_v, "lr": lr,
                                           "time_s": round(time.time() - t0, 2)}) + "\n")
                    logf.flush()
                    log.info("step %d/%d loss %.4f lr %.3g (%s)", step, cfg.steps, loss_v, lr,
                             rate_eta(step - start, time.time() - t0, cfg.steps - step))
                if rank == 0 and (step % cfg.ckpt_every == 0 or step == cfg.steps):
                    save(ckpt_path, full=True)
    finally:
        if logf is not None:
            logf.close()
    summary = {"steps": step, "loss": loss_v, "seconds": round(time.time() - t0, 2), "out_dir": str(out)}
    if rank == 0:
        save(out / "model.pt", full=False)
        summary["model"] = str(out / "model.pt")
        if cfg.evaluate:
            records = evaluate_checkpoint(EvalConfig(
                checkpoint=str(out / "model.pt"), shards=cfg.shards, test_variants=[cfg.test_variant],
                split=cfg.test_split, out_dir=str(out), device=str(device), amp=cfg.amp,
                max_images=cfg.max_eval_images, max_pixels=cfg.max_pixels, quiet=cfg.quiet))
            summary["miou_pct"] = records[0]["miou_pct"]
            summary["configuration"] = records[0]["configuration"]
        write_summary(out, summary)
    if world > 1:
        torch.distributed.barrier()
    return summary
