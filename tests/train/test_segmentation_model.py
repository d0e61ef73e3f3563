"""Paper 2's segmentation model (issue 13, item 2) and its Fig. 9, Fig. 10 and Table IV commands.

DeepLabv3+ at output stride 16 has ASPP rates (6, 12, 18); ImageNet encoder weights are the default
and, with neither network nor cache, fail at once in one line naming --encoder-weights PATH; local
state dicts load; label maps are resized on the image's pixel grid. Tiny encoders (resnet18, random
init) and tiny images throughout.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segmentation_models_pytorch")

from click.testing import CliRunner  # noqa: E402

from lossyvision.nets import segmentation as seg  # noqa: E402
from lossyvision.train.segmentation import SegmentationConfig, model_arch, random_scale_crop_flip  # noqa: E402

from .cityscapes_fixture import make_cityscapes_shards  # noqa: E402
from .dist_helpers import free_port  # noqa: E402

REPO = Path(__file__).parents[2]


def _aspp_dilations(model: torch.nn.Module) -> list[int]:
    """The dilation of each atrous ASPP branch, read straight off the built modules."""
    branches = list(model.decoder.aspp[0].convs)[1:4]
    return [next(m.dilation[0] for m in b.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
            for b in branches]


@pytest.mark.parametrize("stride,rates", [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_aspp_rates_are_deeplabv3plus_for_the_output_stride(stride, rates):
    model = seg.build_deeplabv3plus("resnet18", num_classes=5, output_stride=stride, encoder_weights="none").eval()
    assert _aspp_dilations(model) == rates
    assert list(seg.model_aspp_rates(model)) == rates
    with torch.no_grad():
        deepest = model.encoder(torch.zeros(1, 3, 64, 96))[-1]
    assert deepest.shape[-2:] == (64 // stride, 96 // stride)  # the output stride the rates are meant for


def test_checkpoints_record_their_rates_and_older_ones_keep_smps(tmp_path):
    arch = model_arch(SegmentationConfig(encoder="resnet18", num_classes=3, encoder_weights="none"))
    assert arch["atrous_rates"] == [6, 12, 18]
    model = seg.build_deeplabv3plus(**seg.arch_kwargs(arch))
    torch.save({"arch": arch, "model": model.state_dict()}, tmp_path / "new.pt")
    old = {k: v for k, v in arch.items() if k != "atrous_rates"}  # written before the rates were recorded
    torch.save({"arch": old, "model": model.state_dict()}, tmp_path / "old.pt")
    assert _aspp_dilations(seg.load_segmentation_model(tmp_path / "new.pt")[0]) == [6, 12, 18]
    assert _aspp_dilations(seg.load_segmentation_model(tmp_path / "old.pt")[0]) == [12, 24, 36]
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(seg.CheckpointError, match="--checkpoint .*text.pt is not a PyTorch checkpoint"):
        seg.load_segmentation_model(tmp_path / "text.pt")


# -- encoder weights -----------------------------------------------------------------------------

@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """The hub client pointed at a local port nobody listens on (a free one), with an empty cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hf-cache"


def test_hub_probe_tells_a_closed_port_from_a_server(no_hub, monkeypatch):
    from huggingface_hub import constants

    assert seg.hub_reachable(timeout=2) is False

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)  # any answer means the hub is there
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert seg.hub_reachable(timeout=5) is True
    finally:
        server.server_close()
    with seg.hub_offline():
        assert seg.hub_reachable() is False and constants.is_offline_mode()
    assert not constants.is_offline_mode()


def test_imagenet_without_network_or_cache_is_one_line_naming_the_option(no_hub):
    with pytest.raises(seg.EncoderWeightsUnavailable) as e:
        seg.build_deeplabv3plus("resnet18", encoder_weights="imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "--encoder-weights PATH" in msg and "--encoder-weights none" in msg
    assert "smp-hub/resnet18.imagenet" in msg and msg.count("model.safetensors") == 1


def test_imagenet_weights_come_from_a_warm_cache_offline(no_hub):
    """The hub's own cache layout, filled by hand: the offline attempt finds the weights there."""
    from safetensors.torch import save_file

    src = seg.imagenet_source("resnet18")
    reference = seg.build_deeplabv3plus("resnet18", encoder_weights=None)
    snap = no_hub / "models--smp-hub--resnet18.imagenet" / "snapshots" / src["revision"]
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    save_file({k: v.contiguous() for k, v in reference.encoder.state_dict().items()}, snap / "model.safetensors")
    assert seg.imagenet_cached("resnet18")
    model = seg.build_deeplabv3plus("resnet18", encoder_weights="imagenet")
    assert torch.equal(model.encoder.conv1.weight, reference.encoder.conv1.weight)
    assert torch.equal(model.encoder.layer4[1].bn2.running_var, reference.encoder.layer4[1].bn2.running_var)


def test_cli_default_weights_offline_exit_1_with_one_line(tmp_path):
    shards = make_cityscapes_shards(tmp_path, "train", n=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_CACHE": str(tmp_path / "empty-cache"),
           "HF_HUB_OFFLINE": "0"}
    env.pop("HF_HOME", None)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "lossyvision", "train-segmentation", "--shards", str(shards),
                           "--encoder", "resnet18", "--no-eval", "--out", str(out), "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "--encoder-weights PATH" in lines[0] and "resnet18" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_local_encoder_state_dicts_load(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    src = seg.build_deeplabv3plus("resnet18", encoder_weights=None)
    torch.save(src.encoder.state_dict(), tmp_path / "enc.pth")
    save_file({k: v.contiguous() for k, v in src.encoder.state_dict().items()}, tmp_path / "enc.safetensors")
    tv = torchvision.models.resnet18(weights=None)  # torchvision's layout, fc included: what its ImageNet file holds
    torch.save(tv.state_dict(), tmp_path / "torchvision.pth")
    for name, ref in (("enc.pth", src.encoder), ("enc.safetensors", src.encoder), ("torchvision.pth", tv)):
        m = seg.build_deeplabv3plus("resnet18", encoder_weights=str(tmp_path / name))
        assert torch.equal(m.encoder.conv1.weight, ref.conv1.weight), name
        assert torch.equal(m.encoder.layer3[0].downsample[1].running_mean, ref.layer3[0].downsample[1].running_mean)
    partial = {k: v for k, v in src.encoder.state_dict().items() if not k.startswith("layer4")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(seg.CheckpointError, match=r"does not fit encoder 'resnet18': \d+ of \d+ weights missing"):
        seg.build_deeplabv3plus("resnet18", encoder_weights=str(tmp_path / "partial.pth"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        seg.build_deeplabv3plus("resnet18", encoder_weights=str(tmp_path / "absent.pth"))


# -- label / image alignment ---------------------------------------------------------------------

@pytest.mark.parametrize("scale", [0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0])
@pytest.mark.parametrize("axis", [0, 1])
def test_one_pixel_label_line_stays_under_the_image_line(scale, axis):
    """A bright one-pixel line in the image and a label line at the same place: after scale, crop and
    flip, the label marks exactly the rows (columns) where the resized line is brighter than half,
    and the brightest one; where no output pixel is nearer than half a pixel to it, both fade."""
    h, w = 48, 64
    for pos in range(9, (h if axis == 0 else w) - 9, 3):
        image = torch.zeros(3, h, w, dtype=torch.uint8)
        label = torch.zeros(h, w, dtype=torch.uint8)
        if axis == 0:
            image[:, pos], label[pos] = 255, 1
        else:
            image[:, :, pos], label[:, pos] = 255, 1
        for seed in range(3):
            xa, ya = random_scale_crop_flip(image, label, crop=40, scale=(scale, scale), flip=True,
                                            rng=random.Random(seed * 100 + pos))
            prof = xa[0].float().amax(dim=1 - axis)   # the image line's brightness per row (column)
            marked = (ya == 1).any(dim=1 - axis)
            valid = (ya != 255).any(dim=1 - axis)    # outside the padding
            prof, marked = prof[valid], marked[valid]
            if not marked.any():
                assert prof.max() <= 128, (pos, seed, prof.tolist())
                continue
            assert prof[marked].max() == prof.max(), (pos, seed)
            assert torch.equal(prof > 128, marked & (prof > 128)), (pos, seed, prof.tolist(), marked.tolist())
            assert (prof[marked] >= 127).all(), (pos, seed, prof.tolist(), marked.tolist())


# -- Fig. 10, Table IV, Fig. 9 -------------------------------------------------------------------

@pytest.fixture(scope="module")
def oo_setup(tmp_path_factory):
    """Shards (orig, jpeg-q10, jpeg-q60) and a checkpoint laid out as train-segmentation writes it."""
    root = tmp_path_factory.mktemp("fig10")
    shards = make_cityscapes_shards(root, split="val", n=4, qualities=(10, 60), seed=3)
    torch.manual_seed(0)
    cfg = SegmentationConfig(encoder="resnet18", num_classes=19, encoder_weights="none")
    model = seg.build_deeplabv3plus(**seg.arch_kwargs(model_arch(cfg)))
    ckpt = root / "model.pt"
    torch.save({"arch": model_arch(cfg), "model": model.state_dict(),
                "config": {**cfg.to_dict(), "train_variant": "orig"}, "step": 0}, ckpt)
    return shards, ckpt


def test_seg_features_records_the_layers_channel_means(oo_setup, tmp_path):
    from lossyvision.cli.segmentation import seg_features
    from lossyvision.pipelines.stream import ShardStream, to_device

    shards, ckpt = oo_setup
    out = tmp_path / "f10"
    r = CliRunner().invoke(seg_features, ["--checkpoint", str(ckpt), "--shards", str(shards), "--variant", "jpeg-q10",
                                          "--variant", "jpeg-q60", "--out", str(out), "--format", "png,svg",
                                          "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "features.json").read_text())
    assert data["layer"] == "encoder.layer1" and data["channels"] == 64 and data["images"] == 4
    # independent of the hook: layer1's output is the encoder's third feature map (stride 4)
    model, _ = seg.load_segmentation_model(ckpt)
    per_image = []
    with torch.no_grad():
        for x, _, _ in ShardStream(shards / "val" / "orig"):
            per_image.append(model.encoder(to_device(x[None], "cpu"))[2].mean(dim=(0, 2, 3)))
    assert np.allclose(data["means"]["orig"], torch.stack(per_image).mean(0).numpy(), rtol=1e-4, atol=1e-6)
    al = data["alignment"]
    assert al["jpeg-q10"]["rmse"] > 0 and 0 < al["jpeg-q10"]["pearson_r"] <= 1
    assert al["jpeg-q60"]["mean_abs_dev_pct"] < al["jpeg-q10"]["mean_abs_dev_pct"]  # less distortion, less drift
    rows = (out / "features.csv").read_text().splitlines()
    assert rows[0] == "channel,orig,jpeg-q10,jpeg-q60" and len(rows) == 65
    assert (out / "feature_alignment.png").stat().st_size > 0 and (out / "feature_alignment.svg").is_file()

    r = CliRunner().invoke(seg_features, ["--checkpoint", str(ckpt), "--shards", str(shards), "--variant", "jpeg-q10",
                                          "--layer", "encoder.nope", "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert r.exit_code == 2 and "no layer 'encoder.nope'" in r.output and "encoder.layer1" in r.output, r.output


def test_seg_timing_reports_every_pipeline(oo_setup, tmp_path):
    from lossyvision.cli.segmentation import seg_timing
    from lossyvision.nets.restoration import build_restoration_net

    shards, ckpt = oo_setup
    arch = {"net": "finenet", "width": 8, "n_blocks": 1}
    gen = tmp_path / "generator.pt"
    torch.save({"arch": arch, "generator": build_restoration_net(arch).state_dict()}, gen)
    out = tmp_path / "t4"
    r = CliRunner().invoke(seg_timing, ["--checkpoint", str(ckpt), "--shards", str(shards), "--variant", "jpeg-q10",
                                        "--generator", str(gen), "--limit", "3", "--warmup", "1", "--out", str(out),
                                        "--device", "cpu", "--json", "-q"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["images"] == 3 and s["codec"] == "jpeg-q10" and s["frame_sizes"] == ["128x64"]
    assert set(s["stages"]) == {"encode", "decode", "restore", "segment"}
    assert all(st["median_ms"] > 0 and st["q1_ms"] <= st["median_ms"] <= st["q3_ms"] for st in s["stages"].values())
    pipes = {p["test_side"]: p for p in s["pipelines"]}
    assert [pipes[k]["configurations"] for k in "OCR"] == ["OO, CO, RO", "CC, OC", "OR, RR"]
    # each pipeline adds stages to the one before, image by image, so its median cannot be lower
    assert pipes["O"]["median_ms"] <= pipes["C"]["median_ms"] <= pipes["R"]["median_ms"]
    md = (out / "timing.md").read_text()
    assert "| OO, CO, RO | – | – | – |" in md and "| OR, RR |" in md
    assert "torch threads" in s["segment_device"] and s["codec_device"] in md  # the machines are named
    assert (out / "timing.csv").read_text().startswith("kind,name,configurations,median_ms")

    r = CliRunner().invoke(seg_timing, ["--checkpoint", str(ckpt), "--shards", str(shards), "--variant", "orig",
                                        "--out", str(tmp_path / "y"), "--device", "cpu", "-q"])
    assert r.exit_code == 2 and "has no codec" in r.output, r.output


def test_brisque_ranks_a_photo_above_its_heavy_jpeg():
    from PIL import Image
    from skimage import data

    from lossyvision.eval.perceptual import brisque_scorer

    score = brisque_scorer()
    photo = data.astronaut()
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=5)
    assert score(photo) < score(np.asarray(Image.open(buf).convert("RGB")))


def test_perceptual_index_scores_each_variant(oo_setup, tmp_path):
    from lossyvision.cli.segmentation import perceptual_index
    from lossyvision.eval.perceptual import brisque_scorer
    from lossyvision.pipelines.stream import ShardStream

    shards, _ = oo_setup
    out = tmp_path / "f9"
    r = CliRunner().invoke(perceptual_index, ["--shards", str(shards), "--variant", "orig", "--variant", "jpeg-q10",
                                              "--limit", "2", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    d = json.loads((out / "perceptual.json").read_text())
    assert d["index"] == "brisque" and d["images"] == 2 and list(d["variants"]) == ["orig", "jpeg-q10"]
    x, _, key = next(iter(ShardStream(shards / "val" / "jpeg-q10")))
    assert d["per_image"]["jpeg-q10"][key] == pytest.approx(brisque_scorer()(x.permute(1, 2, 0).numpy()))
    assert "| jpeg-q10 |" in (out / "perceptual.md").read_text() and (out / "perceptual_index.png").is_file()
