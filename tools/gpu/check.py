"""The prepared GPU check: every CUDA path of lossyvision's GPU stages, in about 8 minutes on one GPU.

    python tools/gpu/check.py --out gpu-report.json            # on a GPU machine (full sizes)
    python tools/gpu/check.py --smoke --out smoke.json         # anywhere: tiny sizes, CPU if no CUDA (CI)
    python tools/gpu/check.py --only msh,deeplab_step          # some checks
    python tools/gpu/check.py --pytest                         # also run `pytest -m gpu` and record its summary

Each check runs in this process, on its own, and records ``status`` (ok / failed / skipped with a
reason) and its numbers; a failed check does not stop the others. The report is one JSON file and
a Markdown table on stdout. Exit status: 0 when no check failed, 1 otherwise, 2 for bad options
(full sizes without CUDA: use --smoke).

Checks (full size / --smoke size):
- ``env``: torch, CUDA, the device, compute capability, native bf16, the autocast dtype chosen.
- ``msh``: MSH (mbt2018_mean, untrained weights: the plumbing, not the rates) encoded with the
  transforms on CUDA, decoded on the CPU in-process and in a forked DataLoader worker: the pixels
  must be bit-identical (entropy coding and hyper-synthesis are CPU fp32 by design).
- ``classifier_syncs``: the real classifier training epoch (Trainer._run_epoch on generated
  ImageNet-layout shards) under ``torch.cuda.set_sync_debug_mode("warn")``: host syncs per step.
- ``classifier_throughput``: img/s of a training step (fwd + bwd + Adam, autocast) with and
  without cudnn.benchmark and channels_last.
- ``deeplab_step``: DeepLabv3+ R101 OS16, 768x768, batch 8, autocast: s/step and peak memory.
- ``gan_step``: the restoration GAN's real train_step (RestorationTrainer) at 256x256: s/step, memory.
- ``restore_whole_frame``: the generator on one 1024x2048 frame, no tiling: seconds, peak memory.
- ``fp16_scaler``: the fp16 + GradScaler branch (what pre-Ampere GPUs use): finite losses, the
  scale, the loss going down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CHECKS: dict[str, Callable[["Ctx"], dict]] = {}


def check(fn: Callable[["Ctx"], dict]) -> Callable[["Ctx"], dict]:
    CHECKS[fn.__name__] = fn
    return fn


class Skip(Exception):
    """A check that cannot run here (no CUDA, an optional package missing): reported, not failed."""


def _need(module: str, extra: str, what: str) -> None:
    """Skip (not fail) a check whose optional package is not installed."""
    from lossyvision.extras import require

    try:
        require(module, extra, what)
    except Exception as e:
        raise Skip(str(e).splitlines()[0]) from None


class Ctx:
    def __init__(self, smoke: bool, device: torch.device, workdir: Path) -> None:
        self.smoke, self.device, self.workdir = smoke, device, workdir

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def size(self, full, smoke):
        return smoke if self.smoke else full

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def peak_memory(self, out: dict, key: str = "peak_mem_gib"):
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        if self.cuda:
            self.sync()
            out[key] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)

    def timed(self, fn: Callable[[], object], warmup: int, iters: int) -> float:
        """Median seconds of ``fn`` over ``iters`` runs after ``warmup`` runs (device synchronised)."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))


# -- checks ------------------------------------------------------------------------------------

@check
def env(ctx: Ctx) -> dict:
    from lossyvision import accel

    out = {"torch": torch.__version__, "python": platform.python_version(), "device": str(ctx.device),
           "cuda_available": torch.cuda.is_available()}
    if ctx.cuda:
        out.update(name=torch.cuda.get_device_name(ctx.device), capability=".".join(map(str, torch.cuda.get_device_capability(ctx.device))),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   memory_gib=round(torch.cuda.get_device_properties(ctx.device).total_memory / 2**30, 1))
    out["native_bf16"] = accel.native_bf16(ctx.device)
    out["amp_dtype"] = str(accel.amp_dtype(ctx.device, True)).replace("torch.", "")
    return out


def _photo(h: int, w: int) -> np.ndarray:
    import skimage.data
    from PIL import Image

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((w, h), Image.BICUBIC))


class _DecodeInWorker(torch.utils.data.Dataset):
    def __init__(self, spec_options: dict, data: bytes) -> None:
        self.opts, self.data = spec_options, data

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        from lossyvision.codecs import create

        return torch.from_numpy(create("msh", **self.opts).decode(self.data).copy())


@check
def msh(ctx: Ctx) -> dict:
    from lossyvision.codecs import create

    _need("compressai", "msh", "the MSH check")
    h, w = ctx.size((512, 768), (64, 96))
    rgb = _photo(h, w)
    enc = create("msh", 3, weights="untrained", device=str(ctx.device))
    t0 = time.perf_counter()
    data = enc.encode(rgb)
    encode_s = time.perf_counter() - t0
    cpu = create("msh", 3, weights="untrained", device="cpu")
    t0 = time.perf_counter()
    here = cpu.decode(data)
    decode_s = time.perf_counter() - t0
    loader = torch.utils.data.DataLoader(_DecodeInWorker({"q": 3, "weights": "untrained"}, data), batch_size=None,
                                         num_workers=1, multiprocessing_context="fork")
    forked = next(iter(loader)).numpy()
    out = {"size": f"{w}x{h}", "bytes": len(data), "bpp": round(len(data) * 8 / (h * w), 4),
           "encode_s": round(encode_s, 4), "decode_cpu_s": round(decode_s, 4),
           "forked_equal_inprocess": bool(np.array_equal(forked, here))}
    if ctx.cuda:
        on_gpu = create("msh", 3, weights="untrained", device=str(ctx.device)).decode(data)
        out["cuda_synthesis_max_abs_diff"] = int(np.abs(on_gpu.astype(int) - here.astype(int)).max())
    if not out["forked_equal_inprocess"]:
        raise AssertionError(f"decode in a forked worker differs from the in-process decode: {out}")
    return out


def _imagenet_shards(ctx: Ctx, n_per_class: int, classes: int, side: int) -> Path:
    """A tiny ImageNet-layout tree (train/val in wnid folders) through the real prepare-shards."""
    from PIL import Image

    root = ctx.workdir / "imagenet"
    src, out = root / "src", root / "shards"
    if (out / "imagenet" / "val" / "orig" / "_manifest.json").exists():
        return out / "imagenet"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = src / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                img = rng.integers(0, 90, (side, side, 3), dtype=np.uint8)
                img[: side // 2, : side // 2, c % 3] = 230
                Image.fromarray(img).save(d / f"n{c:08d}_{i}.JPEG", quality=95)
    for split in ("train", "val"):
        cmd = [sys.executable, "-m", "lossyvision", "prepare-shards", "--dataset", "imagenet", "--src", str(src),
               "--split", split, "--out", str(out), "--codec", "jpeg", "--quality", "75", "--shard-size", "32",
               "--crop", f"scale:{side}x{side}", "-q"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out / "imagenet"


@check
def classifier_syncs(ctx: Ctx) -> dict:
    from lossyvision.train.classifier import TrainConfig, Trainer

    side, batch = ctx.size((224, 64), (64, 8))
    shards = _imagenet_shards(ctx, n_per_class=ctx.size(128, 8), classes=4, side=side)
    steps = ctx.size(8, 2)
    cfg = TrainConfig(shards=str(shards), variant="jpeg-q75", out=str(ctx.workdir / "run-classifier"),
                      recipe="finetune", model=ctx.size("torchvision:mnasnet1_0", "torchvision:resnet18"),
                      num_classes=4, batch_size=batch, workers=2, teacher_cache="off", max_steps_per_epoch=steps,
                      log_every=10_000, device=str(ctx.device), overwrite=True, quiet=True, epochs=1)
    trainer = Trainer(cfg)
    try:
        if not ctx.cuda:
            t0 = time.perf_counter()
            r = trainer._run_epoch(cfg.train_split, train=True)
            return {"steps": steps, "syncs_per_step": None, "note": "sync counting needs CUDA",
                    "s_per_step": round((time.perf_counter() - t0) / steps, 4), "loss": round(r["loss"], 4)}
        trainer._run_epoch(cfg.train_split, train=True)  # warm-up: workers, cudnn autotuning, allocator
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                t0 = time.perf_counter()
                trainer._run_epoch(cfg.train_split, train=True)
                seconds = time.perf_counter() - t0
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        return {"steps": steps, "syncs": len(syncs), "syncs_per_step": round(len(syncs) / steps, 2),
                "s_per_step": round(seconds / steps, 4), "first_sync": syncs[0] if syncs else None}
    finally:
        trainer.close()


@check
def classifier_throughput(ctx: Ctx) -> dict:
    import torchvision

    from lossyvision import accel

    name, side, batch = ctx.size(("resnet50", 224, 128), ("resnet18", 32, 4))
    dtype = accel.amp_dtype(ctx.device, True if ctx.cuda else False)
    out: dict = {"model": name, "batch": batch, "side": side, "dtype": str(dtype).replace("torch.", "")}
    for bench in (False, True):
        for cl in (False, True):
            torch.backends.cudnn.benchmark = bench and ctx.cuda
            model = torchvision.models.get_model(name, weights=None).to(ctx.device)
            opt = torch.optim.Adam(model.parameters(), 1e-4)
            mf = torch.channels_last if cl else torch.contiguous_format
            model = model.to(memory_format=mf)
            x = torch.randn(batch, 3, side, side, device=ctx.device).contiguous(memory_format=mf)
            y = torch.randint(0, 1000, (batch,), device=ctx.device)

            def step() -> None:
                with accel.autocast(ctx.device, dtype):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            s = ctx.timed(step, warmup=ctx.size(5, 1), iters=ctx.size(15, 1))
            out[f"img_s{'_benchmark' if bench else ''}{'_channels_last' if cl else ''}"] = round(batch / s, 1)
    torch.backends.cudnn.benchmark = False
    return out


@check
def deeplab_step(ctx: Ctx) -> dict:
    from lossyvision import accel

    _need("segmentation_models_pytorch", "segmentation", "the DeepLabv3+ check")
    from lossyvision.train.segmentation import build_model

    encoder, side, batch = ctx.size(("resnet101", 768, 8), ("resnet18", 64, 2))
    model = build_model(encoder, 19, 16, None).to(ctx.device)
    mf = torch.channels_last if ctx.cuda else torch.contiguous_format
    model = model.to(memory_format=mf).train()
    dtype = accel.amp_dtype(ctx.device, True if ctx.cuda else False)
    scaler = accel.grad_scaler(ctx.device, dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, side, side, device=ctx.device).contiguous(memory_format=mf)
    y = torch.randint(0, 19, (batch, side, side), device=ctx.device)
    torch.backends.cudnn.benchmark = ctx.cuda

    def step() -> None:
        with accel.autocast(ctx.device, dtype):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    out = {"encoder": encoder, "side": side, "batch": batch, "dtype": str(dtype).replace("torch.", "")}
    with ctx.peak_memory(out):
        out["s_per_step"] = round(ctx.timed(step, warmup=ctx.size(3, 1), iters=ctx.size(10, 1)), 4)
    torch.backends.cudnn.benchmark = False
    return out


@check
def gan_step(ctx: Ctx) -> dict:
    from lossyvision.train.restoration import RestorationConfig, RestorationTrainer

    side, width = ctx.size((256, 64), (128, 8))  # the 1/4-scale discriminator needs sides >= 128
    cfg = RestorationConfig(shards="unused", variant="bpg-qp41", recipe="gan", width=width, disc_width=width,
                            n_blocks=ctx.size(9, 1), patch_size=side, vgg_weights="random", steps=10)
    trainer = RestorationTrainer(cfg, ctx.device)
    x = torch.rand(1, 3, side, side, device=ctx.device) * 2 - 1
    xc = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    out = {"side": side, "width": width}
    with ctx.peak_memory(out):
        out["s_per_step"] = round(ctx.timed(lambda: trainer.train_step(x, xc), warmup=ctx.size(3, 1),
                                            iters=ctx.size(10, 1)), 4)
    return out


@check
def restore_whole_frame(ctx: Ctx) -> dict:
    from lossyvision import accel
    from lossyvision.nets.restoration import build_restoration_net

    h, w = ctx.size((1024, 2048), (64, 128))
    net = build_restoration_net({"net": "finenet", "width": ctx.size(64, 8), "n_blocks": ctx.size(9, 1)})
    net = net.to(ctx.device).eval()
    dtype = accel.amp_dtype(ctx.device, True if ctx.cuda else False)
    x = torch.rand(1, 3, h, w, device=ctx.device) * 2 - 1
    out = {"frame": f"{w}x{h}", "dtype": str(dtype).replace("torch.", "")}

    def run() -> None:
        with torch.no_grad(), accel.autocast(ctx.device, dtype):
            net(x)

    with ctx.peak_memory(out):
        out["s_per_frame"] = round(ctx.timed(run, warmup=1, iters=ctx.size(3, 1)), 4)
    return out


@check
def fp16_scaler(ctx: Ctx) -> dict:
    from lossyvision import accel

    if not ctx.cuda:
        raise Skip("fp16 autocast with GradScaler is a CUDA path")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(32, 4)).to(ctx.device)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    scaler = accel.grad_scaler(ctx.device, torch.float16)
    x = torch.randn(64, 3, 32, 32, device=ctx.device)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0].mean((1, 2)) > 0).long()
    losses = []
    for _ in range(ctx.size(60, 10)):
        with accel.autocast(ctx.device, torch.float16):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach())
    values = torch.stack(losses).float().cpu().tolist()
    out = {"scaler_enabled": scaler.is_enabled(), "scale": scaler.get_scale(), "loss_first": round(values[0], 4),
           "loss_last": round(values[-1], 4), "all_finite": bool(np.isfinite(values).all())}
    if not (out["scaler_enabled"] and out["all_finite"] and values[-1] < values[0]):
        raise AssertionError(f"fp16 + GradScaler did not train: {out}")
    return out


def run_pytest_gpu() -> dict:
    p = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
                       cwd=REPO, capture_output=True, text=True)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    return {"status": "ok" if p.returncode in (0, 5) else "failed", "returncode": p.returncode,
            "summary": lines[-1] if lines else p.stderr[-300:]}


# -- driver ------------------------------------------------------------------------------------

def run_checks(names: list[str], ctx: Ctx) -> dict:
    results = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            rec = {"status": "ok", **CHECKS[name](ctx)}
        except Skip as e:
            rec = {"status": "skipped", "reason": str(e)}
        except Exception as e:
            rec = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   "traceback": traceback.format_exc(limit=8)}
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        results[name] = rec
        print(f"{name}: {rec['status']} ({rec['seconds']} s)", file=sys.stderr, flush=True)
    return results


def markdown(report: dict) -> str:
    rows = ["| check | status | s | numbers |", "| --- | --- | ---: | --- |"]
    for name, rec in report["checks"].items():
        nums = ", ".join(f"{k}={v}" for k, v in rec.items() if k not in ("status", "seconds", "traceback"))
        rows.append(f"| {name} | {rec['status']} | {rec['seconds']} | {nums} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-report.json", help="the JSON report (default: gpu-report.json)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; runs on the CPU when there is no CUDA (CI)")
    ap.add_argument("--only", default="", help=f"comma-separated checks, of: {', '.join(CHECKS)}")
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    ap.add_argument("--pytest", action="store_true", help="also run `pytest -m gpu` and record its summary line")
    ap.add_argument("--workdir", default=None, help="scratch folder for generated shards (default: a temp folder)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"error: unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but this machine has no CUDA device; use --smoke (CPU) here", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.smoke:
        print("error: the full-size check needs a CUDA device; use --smoke for the reduced CPU mode", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lossyvision-gpu-check-") as tmp:
        ctx = Ctx(args.smoke, device, Path(args.workdir or tmp))
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        report = {"mode": "smoke" if args.smoke else "full", "device": str(device),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checks": run_checks(names, ctx)}
        if args.pytest:
            report["pytest_gpu"] = run_pytest_gpu()
        report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(markdown(report))
    failed = [n for n, r in report["checks"].items() if r["status"] == "failed"]
    if args.pytest and report["pytest_gpu"]["status"] == "failed":
        failed.append("pytest_gpu")
    if failed:
        print(f"failed: {', '.join(failed)} (details in {args.out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
