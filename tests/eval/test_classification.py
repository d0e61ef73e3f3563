import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ..train.classifier_shards import write_variant  # noqa: E402

from lossyvision.cli.classifier import eval_classifier, eval_matrix  # noqa: E402


class ColourNet(torch.nn.Module):
    """Logits = mean of each channel: predicts 0 for red, 1 for green, 2 for blue images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """10 pure-colour images; 7 labels agree with the colour, 3 do not: top-1 must be exactly 0.7."""
    root = tmp_path_factory.mktemp("eval")
    samples = []
    for i in range(10):
        colour = i % 3
        img = np.zeros((16, 16, 3), np.uint8)
        img[..., colour] = 255
        label = colour if i < 7 else (colour + 1) % 3
        samples.append((f"val/img{i:02d}", img, label))
    write_variant(root / "val", "orig", samples, shard_size=4, classes=["red", "green", "blue"])
    write_variant(root / "val", "jpeg-q10", samples, shard_size=4, classes=["red", "green", "blue"], spec="jpeg-q10")
    model = root / "colour.pt"
    torch.jit.script(ColourNet()).save(str(model))
    return root, model


def test_eval_classifier_gets_the_known_top1_from_a_torchscript_file(known, tmp_path):
    root, model = known
    res = CliRunner().invoke(eval_classifier, [
        "--model", str(model), "--shards", str(root), "--variant", "orig", "--variant", "jpeg-q10",
        "--batch-size", "3", "--workers", "0", "--device", "cpu", "--mean", "0,0,0", "--std", "1,1,1",
        "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["results"]
    assert [r["variant"] for r in rows] == ["orig", "jpeg-q10"]
    for r in rows:
        assert r["samples"] == 10
        assert r["top1_pct"] == pytest.approx(70.0)
        assert r["top5_pct"] == pytest.approx(100.0)  # only 3 classes: top-k is capped at the class count
    assert rows[1]["bpp"] > 0
    assert "| 70.00 |" in res.output
    assert (tmp_path / "r" / "results.csv").read_text().startswith("model,variant,spec,samples,top1_pct,top5_pct")


def test_eval_classifier_reports_missing_variant_in_one_line(known):
    root, model = known
    res = CliRunner().invoke(eval_classifier, ["--model", str(model), "--shards", str(root),
                                               "--variant", "j2k-r200", "--device", "cpu", "--quiet"])
    assert res.exit_code == 1
    assert "variant 'j2k-r200' not found" in res.output and "Traceback" not in res.output


def test_eval_matrix_writes_table_and_heatmap(known, tmp_path):
    root, model = known
    res = CliRunner().invoke(eval_matrix, [
        "--model", f"orig={model}", "--model", f"jpeg-q10={model}", "--shards", str(root),
        "--variant", "orig", "--variant", "jpeg-q10", "--out", str(tmp_path / "m"), "--workers", "0",
        "--device", "cpu", "--mean", "0,0,0", "--std", "1,1,1", "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m" / "matrix.json").read_text())
    assert m["models"] == ["orig", "jpeg-q10"] and m["variants"] == ["orig", "jpeg-q10"]
    assert np.allclose(m["top1_pct"], 70.0)
    with Image.open(tmp_path / "m" / "matrix.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100


class RandomLinear(torch.nn.Module):
    """8 seeded logits from 4x4-pooled pixels: top-5 is not capped by the class count."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 4 * 4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


@pytest.mark.parametrize("batch_size,workers,max_samples", [(4, 0, None), (5, 2, None), (5, 0, 13), (32, 0, 7)])
def test_accuracy_counts_on_the_device_like_a_per_sample_loop(tmp_path, batch_size, workers, max_samples):
    """The counts kept as device tensors (one sync) give what counting sample by sample gives."""
    from ..train.classifier_shards import toy_images
    from lossyvision.eval.classification import accuracy
    from lossyvision.pipelines.stream import IMAGENET_MEAN, IMAGENET_STD, ShardStream

    vdir = write_variant(tmp_path / "val", "orig", toy_images(23, 16, 8, 3), shard_size=6,
                         classes=[f"c{i}" for i in range(8)])
    model = RandomLinear().eval()
    m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    top1 = top5 = n = 0
    with torch.no_grad():
        for x, y, _ in list(ShardStream(vdir))[:max_samples]:
            order = model(((x.float() / 255 - m) / s)[None])[0].argsort(descending=True).tolist()
            top1 += order[0] == y
            top5 += y in order[:5]
            n += 1
    assert 0 < top5 < n  # the check below can tell top-1 from top-5
    r = accuracy(model, vdir, batch_size=batch_size, workers=workers, max_samples=max_samples)
    assert r["samples"] == n
    assert r["top1_pct"] == 100.0 * top1 / n and r["top5_pct"] == 100.0 * top5 / n


def test_accuracy_with_amp_on_cpu_uses_bf16_autocast(known):
    """amp on a CPU: autocast in accel.amp_dtype's dtype (bf16), which the model sees."""
    from lossyvision.eval.classification import accuracy

    root, _ = known
    seen = []

    class Spy(ColourNet):
        def forward(self, x):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return super().forward(x)

    r = accuracy(Spy(), root / "val" / "orig", batch_size=4, amp=True, mean=(0, 0, 0), std=(1, 1, 1))
    assert r["top1_pct"] == pytest.approx(70.0) and seen == [torch.bfloat16] * 3
    seen.clear()
    accuracy(Spy(), root / "val" / "orig", batch_size=4, mean=(0, 0, 0), std=(1, 1, 1))
    assert seen == [None] * 3


def test_one_crop_size_is_read_from_the_manifest():
    from lossyvision.eval.classification import _one_size

    assert _one_size({"crop": {"name": "center224", "resize": 256, "crop_w": 224, "crop_h": 224}})
    assert _one_size({"crop": {"name": "frame", "scale_w": 1024, "scale_h": 512}})
    assert not _one_size({"crop": {"name": "full", "resize": 0, "crop_w": 0, "scale_w": 0}})
    assert not _one_size({})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_accuracy_on_cuda_equals_cpu_and_restores_cudnn_benchmark(known):
    from lossyvision.eval.classification import accuracy

    root, _ = known
    conv = torch.nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    model = torch.nn.Sequential(conv, ColourNet())
    kw = dict(batch_size=4, workers=2, mean=(0, 0, 0), std=(1, 1, 1))
    cpu = accuracy(model, root / "val" / "jpeg-q10", **kw)
    before = torch.backends.cudnn.benchmark
    gpu = accuracy(model.cuda(), root / "val" / "jpeg-q10", device="cuda", amp=None, **kw)
    assert torch.backends.cudnn.benchmark == before
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert (gpu["samples"], gpu["top1_pct"], gpu["top5_pct"]) == (cpu["samples"], cpu["top1_pct"], cpu["top5_pct"])
