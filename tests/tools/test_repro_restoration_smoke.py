"""tools/repro/restoration.py (paper 2's claims at CPU scale): its dataset builder, its statistics, and
the whole protocol at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).parents[2]
sys.path.insert(0, str(REPO / "tools" / "repro"))

import restoration as rp  # noqa: E402
import seg_synth  # noqa: E402

needs_fmnist = pytest.mark.skipif(
    not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")


# -- the dataset builder ---------------------------------------------------------------------------

def test_label_map_is_exactly_where_the_garment_shows():
    rng = np.random.default_rng(0)
    img = np.zeros((40, 40, 3), dtype=np.float32)
    label = np.zeros((40, 40), dtype=np.uint8)
    garment = np.zeros((28, 28), dtype=np.uint8)
    garment[5:20, 8:14] = 200  # an L-shaped garment: a flip or an offset between image and label shows
    garment[15:20, 14:24] = 200
    seg_synth.paste(img, label, garment, 7, 28, rng)
    shown = img.sum(-1) > 0
    assert shown.sum() == 15 * 6 + 5 * 10
    np.testing.assert_array_equal(label == 7, shown)


@needs_fmnist
def test_dataset_layout_groups_and_determinism(tmp_path):
    counts = {"train": 3, "train_extra": 2, "val": 2}
    cfg = seg_synth.SynthConfig(out=str(tmp_path / "a"), counts=counts, seed=5)
    seg_synth.build(cfg, quiet=True)
    root = tmp_path / "a"
    classes = json.loads((root / "classes.json").read_text())
    names = [c["name"] for c in classes["classes"]]
    assert names[0] == "background" and classes["ignore_index"] == 255
    assert {c["name"] for c in classes["classes"] if c["group"] == "small"} == set(seg_synth.DEFAULT_SMALL)
    ids = {c["label_id"] for c in classes["classes"]}
    for split, n in counts.items():
        assert len(list((root / "images" / split).glob("*.png"))) == n
    assert not (root / "labels" / "train_extra").exists()  # images only, as Cityscapes' train_extra
    for p in (root / "labels" / "train").glob("*.png"):
        lbl = np.asarray(Image.open(p))
        assert lbl.shape == (128, 128) and set(np.unique(lbl)) <= ids
        assert len(np.unique(lbl)) > 2  # background and garments
    # the same seed gives the same images; a larger split keeps the first ones
    seg_synth.build(seg_synth.SynthConfig(out=str(tmp_path / "b"), counts={**counts, "train": 5}, seed=5), quiet=True)
    for p in (root / "images" / "train").glob("*.png"):
        assert p.read_bytes() == (tmp_path / "b" / "images" / "train" / p.name).read_bytes()
    seg_synth.build(seg_synth.SynthConfig(out=str(tmp_path / "c"), counts=counts, seed=6), quiet=True)
    assert (root / "images" / "val" / "val-00000.png").read_bytes() != \
        (tmp_path / "c" / "images" / "val" / "val-00000.png").read_bytes()


@needs_fmnist
def test_small_garments_are_small_and_big_ones_big():
    images, labels = seg_synth.load_garments(None, "train")
    by_class = {seg_synth.label_id(g): images[labels == seg_synth.GARMENTS.index(g)] for g in seg_synth.DEFAULT_GARMENTS}
    textures = seg_synth.load_textures()
    small_ids = {seg_synth.label_id(g) for g in seg_synth.DEFAULT_SMALL}
    for i in range(10):
        one_small = seg_synth.SynthConfig(n_small=(1, 1), n_big=(0, 0))
        _, lbl = seg_synth.compose(np.random.default_rng(i), one_small, textures, by_class)
        ys, xs = np.nonzero(lbl)
        assert set(np.unique(lbl[lbl > 0])) <= small_ids
        assert np.ptp(ys) < one_small.small_px[1] and np.ptp(xs) < one_small.small_px[1]
        one_big = seg_synth.SynthConfig(n_small=(0, 0), n_big=(1, 1))
        _, lbl = seg_synth.compose(np.random.default_rng(i), one_big, textures, by_class)
        ys, xs = np.nonzero(lbl)
        assert not set(np.unique(lbl[lbl > 0])) & small_ids
        assert max(np.ptp(ys), np.ptp(xs)) >= one_big.big_px[0] // 2


def test_garment_pools_are_disjoint():
    spans = sorted((lo, hi) for split, lo, hi in seg_synth.POOLS.values() if split == "train")
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


# -- the statistics ----------------------------------------------------------------------------------

def _record(config: str, train: str, test: str, miou: float, small: float, big: float) -> dict:
    return {"configuration": config, "train_variant": train, "test_variant": test, "miou_pct": miou,
            "miou_small_pct": small, "miou_big_pct": big}


def test_paired_differences_and_t_interval():
    records = {}
    for seed, (co, ro, cc_small) in enumerate([(50.0, 51.0, 30.0), (52.0, 54.0, 33.0), (54.0, 57.0, 30.0)]):
        records[seed] = [_record("OO", "orig", "orig", 60, 50, 70),
                         _record("CO", "bpg-qp41", "orig", co, 40, 60),
                         _record("CC", "bpg-qp41", "bpg-qp41", co - 1, cc_small, 59),
                         _record("RO", "bpg-qp41+restored", "orig", ro, 41, 61)]
    runs = rp.collect(records)
    assert runs["OO"]["-"]["miou_pct"] == [60.0, 60.0, 60.0]
    assert runs["RO"]["bpg-qp41"]["miou_pct"] == [51.0, 54.0, 57.0]
    pairs = rp.paired(runs, ["bpg-qp41"])["bpg-qp41"]
    ro_co = pairs["RO-CO"]["miou_pct"]
    assert ro_co["values"] == [1.0, 2.0, 3.0]
    assert ro_co["mean"] == pytest.approx(2.0)
    assert ro_co["ci95"] == pytest.approx(4.303 * 1.0 / np.sqrt(3))
    assert pairs["CO-CC"]["miou_small_pct"]["values"] == [10.0, 7.0, 10.0]
    # (CO - CC) small minus (CO - CC) big: big loses 1 point each seed
    assert pairs["CO-CC small-big"]["values"] == [9.0, 6.0, 9.0]
    md = rp.markdown(rp.ExperimentConfig(seeds=(0, 1, 2)), runs, rp.paired(runs, ["bpg-qp41"]),
                     {"bpg-qp41": {"train_bpp": 0.2, "val_bpp": 0.19, "val_psnr": 29.5, "val_restored_psnr": 29.9}})
    assert "| bpg-qp41 | RO - CO | +2.00 ± 2.48 |" in md


def test_seeds_must_have_the_same_configurations():
    records = {0: [_record("CO", "bpg-qp41", "orig", 1, 1, 1), _record("CC", "bpg-qp41", "bpg-qp41", 1, 1, 1)],
               1: [_record("CO", "bpg-qp41", "orig", 1, 1, 1)]}
    with pytest.raises(ValueError, match="seed 1"):
        rp.collect(records)


# -- the whole protocol ------------------------------------------------------------------------------

@pytest.mark.slow
@needs_fmnist
def test_whole_protocol_at_tiny_size(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["--out", str(tmp_path), "--seeds", "0", "--qp", "41", "51", "--train", "6", "--train-extra", "3",
            "--val", "3", "--steps", "2", "--batch-size", "2", "--crop", "32", "--gan-steps", "2", "--gan-width", "4",
            "--gan-blocks", "1", "--pretrain-steps", "2", "--threads", "1", "-q"]
    proc = subprocess.run([sys.executable, "tools/repro/restoration.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs_pct"]) == set(rp.CONFIGS)
    for config in ("CO", "OC", "CC", "RO", "OR"):
        assert set(results["runs_pct"][config]) == {"bpg-qp41", "bpg-qp51"}
    for cell in results["runs_pct"]["OO"]["-"].values():
        assert len(cell) == 1 and 0 <= cell[0] <= 100
    assert results["rates"]["bpg-qp51"]["val_bpp"] < results["rates"]["bpg-qp41"]["val_bpp"]
    assert set(results["paired_pct"]["bpg-qp41"]) == {"RO-CO", "CO-CC", "CO-CC small-big"}
    # the GAN trained on train_extra only, and the segmentation encoder came from the pretraining
    keys = json.loads((tmp_path / "runs" / "gan-bpg-qp41" / "train_keys.json").read_text())
    assert all("train_extra" in str(k) for k in (keys["keys"] if isinstance(keys, dict) else keys))
    assert (tmp_path / "encoder-resnet18.pth").exists()
    assert "| RO | bpg-qp51 |" in (tmp_path / "results.md").read_text()
