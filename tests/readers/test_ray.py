"""Ray Data opens a variant folder as it is: `ray.data.read_webdataset(folder)`, no arguments."""

from __future__ import annotations

import os

import numpy as np
import pytest

from .conftest import manifest


def test_variant_folder_holds_only_tars_and_names_readers_skip(imagenet_shards):
    """Ray Data and pyarrow list every file of a folder except names starting with '_' or '.', and read each as data."""
    for split in ("val", "train"):
        for variant in ("orig", "jpeg-q50", "bpg-qp41"):
            names = os.listdir(imagenet_shards / split / variant)
            assert "_manifest.json" in names
            assert [n for n in names if not n.endswith(".tar") and not n.startswith(("_", "."))] == []


@pytest.mark.ray
def test_read_webdataset_on_variant_folders(imagenet_shards):
    import ray
    import ray.data  # noqa: F401 - needs ray[data] (pyarrow); ray[client] alone lacks it
    if ray.is_initialized():  # an earlier in-process prepare-shards may have left its local Ray running
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for split, variant, member in (("val", "jpeg-q50", "jpg"), ("val", "orig", "png"), ("train", "orig", "npy"),
                                       ("val", "bpg-qp41", "hevc")):
            vdir = imagenet_shards / split / variant
            m = manifest(vdir)
            rows = ray.data.read_webdataset(str(vdir)).take_all()
            assert len(rows) == m["num_samples"] > 0
            keys = [r["__key__"] for r in rows]  # Ray Data does not keep file order by default: compare as sets
            assert len(set(keys)) == len(keys) and {s["first_key"] for s in m["shards"]} <= set(keys)
            for r in rows:
                assert isinstance(r["cls"], int) and 0 <= r["cls"] < len(m["classes"])  # .cls decoded by Ray's default decoder
                assert r["json"]["h"] == 224 and r["json"]["w"] == 224                  # .json decoded to a dict
                if member == "hevc":
                    assert isinstance(r["hevc"], bytes) and r["json"]["bytes"] == len(r["hevc"])
                else:  # jpg, png and npy decoded to uint8 arrays
                    img = r[member]
                    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (224, 224, 3)
                    assert img.std() > 10  # a photo, not a blank frame
    finally:
        ray.shutdown()
