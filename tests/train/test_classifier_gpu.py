"""The classifier's CUDA paths: bf16 autocast, channels_last, fp32 without TF32, the teacher cache on CUDA,
DDP over NCCL at world size 1. Skipped without a GPU (`pytest -m gpu` on a GPU machine)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .classifier_shards import make_dataset
from lossyvision.train.classifier import Trainer, TrainConfig, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shards"), n_train=64, n_val=16, shard_size=16, size=64)


def _cfg(toy, out, **kw):
    base = dict(shards=str(toy), variant="jpeg-q10", out=str(out), model="torchvision:mnasnet0_5", recipe="expert",
                epochs=1, batch_size=16, workers=2, progress=False, device="cuda", num_classes=4)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("amp", [None, False])
def test_expert_on_cuda_amp_and_fp32(toy, tmp_path, amp):
    tr = Trainer(_cfg(toy, tmp_path, amp=amp))
    assert tr.amp is (amp is None) and tr.channels_last
    if amp is False:
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    out = tr.run()
    assert out["epochs"] == 1 and all(torch.isfinite(torch.tensor(r["val_loss"])) for r in out["history"])
    import h5py
    with h5py.File(tmp_path / "teacher-train.h5") as f:  # built on CUDA, stored in fp32
        assert f["logits"].dtype == "float32" and f["logits"].shape == (64, 4)


def test_cuda_teacher_cache_matches_cpu(toy, tmp_path):
    from lossyvision.train import teacher_cache as tc
    from lossyvision.train.models import create_model

    torch.manual_seed(0)
    teacher = create_model("torchvision:mnasnet0_5", num_classes=4).eval()
    spec = {"name": "mnasnet0_5", "weights": None, "num_classes": 4}
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cpu = tc.build_cache(tmp_path / "cpu.h5", teacher, toy / "val" / "orig", tc.expected_meta(spec, teacher, toy / "val" / "orig", mean, std))
    gpu = tc.build_cache(tmp_path / "gpu.h5", teacher.cuda(), toy / "val" / "orig",
                         tc.expected_meta(spec, teacher, toy / "val" / "orig", mean, std), device="cuda")
    assert torch.allclose(cpu.logits, gpu.logits, atol=1e-3)


def test_ddp_nccl_world_size_one(toy, tmp_path):
    script = (
        "from lossyvision.train.classifier import TrainConfig, train\n"
        f"train(TrainConfig(shards={str(toy)!r}, variant='jpeg-q10', out={str(tmp_path / 'ddp')!r}, model='small_cnn',"
        " recipe='expert', epochs=1, batch_size=8, workers=1, progress=False, device='cuda', num_classes=4))\n")
    (tmp_path / "ddp.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29531",
                           str(tmp_path / "ddp.py")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()[-1])
    assert rec["train_samples"] == 64


@pytest.mark.parametrize("amp", [None, False])
def test_a_training_step_never_waits_for_the_device(toy, tmp_path, amp):
    """Batch to the device (pinned, non_blocking, cached logits included), forward, backward, Adam and
    the running sums: no host sync (torch raises on one in sync-debug mode "error")."""
    from lossyvision import accel

    tr = Trainer(_cfg(toy, tmp_path, amp=amp, teacher_cache="auto"))
    tr.out.mkdir(parents=True, exist_ok=True)
    tr._prepare_caches()
    _, loader = tr._loader(tr.cfg.train_split, True)
    tr.ddp_model.train(True)
    sums = accel.DeviceSums(tr.device)
    it = iter(loader)
    for i in range(3):  # two warm-up steps (cuDNN autotuning), then the checked one
        items = next(it)
        torch.cuda.set_sync_debug_mode("error" if i == 2 else 0)
        try:
            batch = tr._batch(items, tr.cfg.train_split)
            loss, parts = tr.step(batch, train=True)
            sums.add("loss", loss, weight=batch.y.shape[0])
            sums.add("correct", (parts["logits"].argmax(1) == batch.y).sum())
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert sums.values()["loss"] > 0
    tr.close()
