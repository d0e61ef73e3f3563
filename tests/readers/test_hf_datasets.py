"""Hugging Face datasets opens the dataset root through the generated card: one config per variant,
one split per split folder, ClassLabel names, image columns decoded."""

from __future__ import annotations

import io
import json
import tarfile

import datasets
import numpy as np

from .conftest import manifest


def _first_member(tar_path, ext: str) -> bytes:
    with tarfile.open(tar_path) as t:
        m = next(m for m in t.getmembers() if m.name.endswith("." + ext))
        return t.extractfile(m).read()


def test_one_config_per_variant_with_class_labels(imagenet_shards, tmp_path):
    root = str(imagenet_shards)
    assert sorted(datasets.get_dataset_config_names(root)) == ["bpg-qp41", "jpeg-q50", "orig"]
    classes = manifest(imagenet_shards / "val" / "orig")["classes"]
    for variant in ("jpeg-q50", "bpg-qp41", "orig"):
        dd = datasets.load_dataset(root, variant, cache_dir=str(tmp_path / "hf"))
        assert sorted(dd) == ["train", "val"]  # the second job's split was merged into the card
        for split, ds in dd.items():
            m = manifest(imagenet_shards / split / variant)
            assert len(ds) == m["num_samples"]
            assert ds.features["cls"].names == classes
            first = ds[0]
            assert first["__key__"] == m["shards"][0]["first_key"]
            assert first["json"]["h"] == 224 and first["json"]["bytes"] > 0
            tar = imagenet_shards / split / variant / "shard-000000.tar"
            assert first["cls"] == int(_first_member(tar, "cls"))
            if variant == "jpeg-q50":
                img = first["jpg"]
                assert img.size == (224, 224) and np.asarray(img.convert("RGB")).std() > 10
                assert first["json"]["spec"] == "jpeg-q50" and first["json"]["q"] == 50
            elif variant == "bpg-qp41":
                assert first["hevc"] == _first_member(tar, "hevc")  # a binary column, the bitstream as written
            elif split == "val":
                assert first["png"].size == (224, 224) and first["npy"] is None
            else:
                arr = ds.with_format("numpy", columns=["npy"], dtype="uint8")[0]["npy"]
                assert arr.dtype == np.uint8 and arr.shape == (224, 224, 3)
                assert np.array_equal(arr, np.load(io.BytesIO(_first_member(tar, "npy"))))
                assert first["png"] is None


def test_default_config_and_split_names(imagenet_shards, samples_shards, tmp_path):
    ds = datasets.load_dataset(str(imagenet_shards), split="val", cache_dir=str(tmp_path / "hf"))
    assert "png" in ds.column_names  # orig is the default config
    # the folder split "all" is "full": "all" means every split to datasets
    ds = datasets.load_dataset(str(samples_shards), "jpeg-q50", split="full", cache_dir=str(tmp_path / "hf"))
    m = json.loads((samples_shards / "all" / "jpeg-q50" / "_manifest.json").read_text())
    assert len(ds) == m["num_samples"] and "cls" not in ds.column_names and ds[0]["jpg"].mode == "RGB"
