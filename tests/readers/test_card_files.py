"""The dataset card and timm's _info.json across jobs, a README.md lossyvision did not write, and folders
written under the manifest's earlier name."""

from __future__ import annotations

import json
import os
import shutil

from .conftest import prepare


def test_card_and_info_list_every_complete_variant(imagenet_shards, samples_shards):
    card = (imagenet_shards / "README.md").read_text()
    assert card.startswith("---\n") and "lossyvision dataset card" in card
    for split in ("train", "val"):
        for variant in ("orig", "jpeg-q50", "bpg-qp41"):
            assert f'path: "{split}/{variant}/shard-*.tar"' in card
    info = json.loads((imagenet_shards / "_info.json").read_text())
    entry = info["splits"]["val/jpeg-q50"]
    assert entry["filenames"] == ["val/jpeg-q50/shard-000000.tar"] and entry["shard_lengths"] == [entry["num_samples"]]
    assert (imagenet_shards / entry["filenames"][0]).is_file()
    assert not (samples_shards / "_info.json").exists()  # no labels: nothing for timm's classification reader


def test_foreign_readme_kept_and_legacy_manifest_renamed(tmp_path):
    out = tmp_path / "shards"
    args = ("--dataset", "samples", "--out", str(out), "--limit", "2", "--codec", "jpeg", "--quality", "50")
    prepare(*args)
    root, vdir = out / "samples", out / "samples" / "all" / "jpeg-q50"
    os.rename(vdir / "_manifest.json", vdir / "manifest.json")  # a folder written by an earlier version
    shard_mtime = os.stat(vdir / "shard-000000.tar").st_mtime_ns
    (root / "README.md").write_text("# my notes\n")
    r = prepare(*args)
    assert sorted(os.listdir(vdir)) == ["_manifest.json", "shard-000000.tar"]
    assert os.stat(vdir / "shard-000000.tar").st_mtime_ns == shard_mtime  # read as it was: nothing rebuilt
    assert (root / "README.md").read_text() == "# my notes\n"
    assert "README.md was not written by lossyvision" in r.stderr
    shutil.rmtree(out / "samples" / "all" / "orig")  # a variant removed: the card follows the folder
    (root / "README.md").unlink()
    prepare(*args[:-4], "--no-orig", *args[-4:])
    card = (root / "README.md").read_text()
    assert 'config_name: "jpeg-q50"' in card and 'config_name: "orig"' not in card
