"""timm's wds reader opens `<split>/<variant>` of the dataset root through the generated _info.json."""

from __future__ import annotations

import json
import tarfile

import pytest
import timm.data as timm_data

from .conftest import manifest


def test_create_dataset_wds(imagenet_shards):
    info = json.loads((imagenet_shards / "_info.json").read_text())
    # labelled variants with a member Pillow opens: not the npy crops of train/orig, not the hevc bitstreams
    assert sorted(info["splits"]) == ["train/jpeg-q50", "val/jpeg-q50", "val/orig"]
    for split in ("val/jpeg-q50", "train/jpeg-q50", "val/orig"):
        m = manifest(imagenet_shards / split)
        ds = timm_data.create_dataset("wds/imagenet", root=str(imagenet_shards), split=split)
        assert len(ds) == m["num_samples"]
        samples = list(ds)
        assert len(samples) == m["num_samples"]
        img, target = samples[0]
        assert img.size == (224, 224) and img.mode == "RGB"
        with tarfile.open(imagenet_shards / split / "shard-000000.tar") as t:
            labels = [int(t.extractfile(x).read()) for x in t.getmembers() if x.name.endswith(".cls")]
        assert [s[1] for s in samples] == labels


def test_unlisted_split_is_refused(imagenet_shards):
    with pytest.raises(RuntimeError, match="not found in info"):
        timm_data.create_dataset("wds/imagenet", root=str(imagenet_shards), split="val/bpg-qp41")
