"""lossyvision.accel's device policy on the CPU (issue 15): the autocast dtype for a device and a
CUDA compute capability (bf16 only where the tensor cores run it, else fp16 with a GradScaler), and
``configure_backends`` (--deterministic: deterministic algorithms, cudnn.benchmark off,
CUBLAS_WORKSPACE_CONFIG; otherwise cudnn.benchmark on for fixed shapes on CUDA), reached from the
training commands' --deterministic."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from lossyvision import accel
from lossyvision.cli import main

from .train.cityscapes_fixture import make_cityscapes_shards
from .train.classifier_shards import make_dataset

BF16, FP16 = torch.bfloat16, torch.float16


@pytest.mark.parametrize("capability,dtype", [
    ((9, 0), BF16),  # H100 / H200
    ((8, 9), BF16),  # L4, RTX 4090
    ((8, 6), BF16),  # A10, RTX 3090
    ((8, 0), BF16),  # A100
    ((7, 5), FP16),  # T4: bf16 is only emulated there
    ((7, 0), FP16),  # V100
    ((6, 1), FP16),  # P40
    (None, FP16),    # no capability known
])
def test_cuda_autocast_dtype_follows_the_compute_capability(capability, dtype):
    assert accel.amp_dtype_for("cuda", True, capability) == dtype
    assert accel.amp_dtype_for("cuda", None, capability) == dtype  # amp on by default on CUDA
    assert accel.amp_dtype_for("cuda", False, capability) is None  # --no-amp: fp32
    assert accel.bf16_native_on(capability) is (dtype == BF16)


def test_autocast_dtype_off_cuda_and_on_this_machine():
    assert accel.amp_dtype_for("cpu") is None and accel.amp_dtype_for("cpu", False) is None
    assert accel.amp_dtype_for("cpu", True) == BF16  # CPU autocast is bf16 only
    assert accel.amp_dtype("cpu") is None and accel.amp_dtype("cpu", True) == BF16
    assert accel.native_bf16("cpu")
    # the device's own answer is the table's for its capability (None without CUDA: fp16)
    cap = tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
    assert accel.amp_dtype("cuda") == accel.amp_dtype_for("cuda", True, cap)
    assert accel.amp_dtype("cuda", False) is None
    assert accel.native_bf16("cuda") is accel.bf16_native_on(cap)
    # a GradScaler only for fp16 on CUDA: bf16, fp32 and the CPU need none
    assert not accel.grad_scaler("cpu", BF16).is_enabled() and not accel.grad_scaler("cpu", None).is_enabled()
    if torch.cuda.is_available():
        assert accel.grad_scaler("cuda", FP16).is_enabled() and not accel.grad_scaler("cuda", BF16).is_enabled()


@pytest.fixture
def backends():
    """configure_backends sets process-wide state: start from the defaults, put it all back after."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    env = os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    torch.use_deterministic_algorithms(False)
    cudnn.deterministic = cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[2:]
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        if env is not None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = env


def _state() -> tuple:
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def test_configure_backends_switches_between_deterministic_and_benchmark(backends):
    # (torch.device("cuda") needs no GPU: these are the flags a CUDA run would get)
    rec = accel.configure_backends("cuda", deterministic=True)
    assert _state() == (True, True, False, ":4096:8") and torch.is_deterministic_algorithms_warn_only_enabled()
    assert (rec["deterministic"], rec["cudnn_benchmark"], rec["cublas_workspace_config"]) == (True, False, ":4096:8")
    # the next run of this process without --deterministic: benchmark on, deterministic kernels off again
    rec = accel.configure_backends("cuda")
    assert _state()[:3] == (False, False, True) and rec["deterministic"] is False and rec["cudnn_benchmark"] is True
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS read it already; harmless now
    assert accel.configure_backends("cuda", fixed_shapes=False)["cudnn_benchmark"] is False  # sizes vary: no autotuning
    assert accel.configure_backends("cpu")["cudnn_benchmark"] is False  # no cuDNN on a CPU


def test_configure_backends_keeps_the_users_cublas_setting_and_sets_tf32(backends):
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    rec = accel.configure_backends("cuda", deterministic=True, tf32=False)
    assert rec["cublas_workspace_config"] == os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert rec["tf32"] is False and not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert accel.configure_backends("cuda", tf32=True)["tf32"] is True and torch.backends.cudnn.allow_tf32


def _cli(args: list[str]):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return r


def test_deterministic_reaches_the_classifier_run(backends, tmp_path):
    toy = make_dataset(tmp_path / "shards", n_train=8, n_val=4, shard_size=4)
    base = ["train-classifier", "--shards", str(toy), "--variant", "jpeg-q10", "--model", "small_cnn", "--epochs", "1",
            "-b", "4", "--workers", "0", "--device", "cpu", "--quiet"]
    _cli([*base, "--out", str(tmp_path / "det"), "--deterministic"])
    assert _state()[:3] == (True, True, False)
    det = json.loads((tmp_path / "det" / "config.json").read_text())
    assert det["deterministic"] is True
    assert det["backends"]["deterministic"] is True and det["backends"]["cublas_workspace_config"] == ":4096:8"
    _cli([*base, "--out", str(tmp_path / "default")])
    assert _state()[:2] == (False, False)
    default = json.loads((tmp_path / "default" / "config.json").read_text())
    assert default["deterministic"] is False and default["backends"]["deterministic"] is False


def test_deterministic_reaches_the_restoration_run(backends, tmp_path):
    shards = make_cityscapes_shards(tmp_path, split="train_extra", n=2, h=128, w=192, shard_size=2, seed=5)
    base = ["train-restoration", "--shards", str(shards), "--variant", "jpeg-q10", "--recipe", "rdn-psnr",
            "--rdn-blocks", "1", "--rdn-layers", "1", "--rdn-growth", "4", "--steps", "1", "--patch-size", "32",
            "--workers", "0", "--device", "cpu"]
    r = _cli([*base, "--out", str(tmp_path / "det"), "--deterministic"])
    assert _state()[:3] == (True, True, False)
    assert "cudnn_benchmark=False deterministic=True cublas_workspace_config=:4096:8" in r.stderr  # the run's log
    assert json.loads((tmp_path / "det" / "config.json").read_text())["deterministic"] is True
    r = _cli([*base, "--out", str(tmp_path / "default")])
    assert _state()[:2] == (False, False) and "deterministic=False" in r.stderr
    assert json.loads((tmp_path / "default" / "config.json").read_text())["deterministic"] is False


def test_deterministic_reaches_the_segmentation_config():
    from lossyvision.cli.segmentation import segmentation_config, train_segmentation

    def cfg(*args: str):
        with train_segmentation.make_context("train-segmentation", ["--shards", "s", *args]) as ctx:
            return segmentation_config(**ctx.params)

    assert cfg("--deterministic").deterministic is True and cfg().deterministic is False
