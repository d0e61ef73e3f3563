"""The public data API (lossyvision.data): datasets, the transform hook, len() against what an epoch
yields, the lazy top-level exports, and the README's "Python API" code run as it is written."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from .train.classifier_shards import make_dataset, toy_images

import lossyvision
from lossyvision.data import (NO_LABEL, PairedShardDataset, ShardDataset, ShardError, make_loader, to_device,
                              variant_dir)

REPO = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    # 25 training samples in shards of 10, 10 and 5: uneven, as a real split's last shard is
    return make_dataset(tmp_path_factory.mktemp("shards"), n_train=25, n_val=7, shard_size=10)


# module level, so the spawn start method can pickle them into the workers
def crop_to_float(sample: tuple, size: int) -> tuple:
    """A transform: centre crop, float in [0, 1], and which worker ran it."""
    *images, y, key = sample
    h, w = images[0].shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    out = [im[:, top:top + size, left:left + size].float() / 255 for im in images]
    worker = torch.utils.data.get_worker_info()
    return (*out, y, key, -1 if worker is None else worker.id)


def odd_size_for_one_key(sample: tuple) -> tuple:
    image, y, key = sample
    return (image[:, :-1] if key.endswith("0003") else image), y, key


def test_datasets_yield_what_the_docs_say(toy):
    expected = {k.replace("train", "val"): (img, y) for k, img, y in toy_images(7, 32, 4, 1)}
    single = list(ShardDataset(variant_dir(toy, "orig", split="val")))
    assert len(single) == 7 and {key for *_, key in single} == set(expected)
    for image, y, key in single:
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
        assert torch.equal(image, torch.from_numpy(expected[key][0]).permute(2, 0, 1)) and y == expected[key][1]
    paired = PairedShardDataset(variant_dir(toy / "val", "jpeg-q10"), variant_dir(toy / "val", "orig"))
    assert paired.paired and paired.classes == ("c0", "c1", "c2", "c3")
    for x, x_tilde, y, key in paired:
        assert torch.equal(x, torch.from_numpy(expected[key][0]).permute(2, 0, 1))
        assert x_tilde.shape == x.shape and not torch.equal(x_tilde, x) and y == expected[key][1]
    batch = next(iter(make_loader(paired, 4)))
    assert [type(v) for v in batch] == [torch.Tensor, torch.Tensor, torch.Tensor, list]
    assert batch[0].shape == (4, 3, 32, 32) and batch[0].dtype == torch.uint8
    normalised = to_device(batch[0], "cpu", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert normalised.dtype == torch.float32 and torch.allclose(normalised, batch[0].float() / 127.5 - 1)


def test_unlabelled_samples_carry_no_label(tmp_path):
    from .train.classifier_shards import write_variant

    samples = [(key, img, None) for key, img, _ in toy_images(3, 16, 2, 0)]  # as --dataset samples writes them
    ds = ShardDataset(write_variant(tmp_path / "all", "orig", samples, shard_size=2, classes=None))
    assert ds.classes is None and len(ds) == 3 and [y for _, y, _ in ds] == [NO_LABEL] * 3


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("paired", [False, True])
def test_len_is_the_number_of_samples_an_epoch_yields(toy, workers, world, paired):
    split = toy / "train"
    seen = []
    for rank in range(world):
        kw = dict(shuffle=True, seed=4, buffer_size=6, rank=rank, world_size=world)
        ds = (PairedShardDataset(split / "jpeg-q10", split / "orig", **kw) if paired
              else ShardDataset(split / "jpeg-q10", **kw))
        per_rank = 25 // world
        assert len(ds) == per_rank
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            # sample by sample through a plain DataLoader, and in batches through make_loader
            samples = [s[-1] for s in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)]
            assert len(samples) == len(ds) == len(set(samples))
            keys = [k for *_, batch_keys in make_loader(ds, 4, workers) for k in batch_keys]
            assert sorted(keys) == sorted(samples)
            loader = make_loader(ds, 4, workers, drop_last=True)
            sizes = [len(batch_keys) for *_, batch_keys in loader]
            assert len(sizes) == len(loader) == ds.num_batches(4, drop_last=True) == per_rank // 4
            assert set(sizes) == {4}  # training: whole batches only, the ragged tail dropped
        seen.append(set(samples))
    if world == 2:
        assert not seen[0] & seen[1]


@pytest.mark.parametrize("workers,context", [(0, None), (2, None), (1, "spawn")])
def test_transform_runs_in_the_workers_and_keeps_len(toy, workers, context):
    ds = PairedShardDataset(toy / "train" / "jpeg-q10", toy / "train" / "orig", shuffle=True, buffer_size=5,
                            transform=functools.partial(crop_to_float, size=24))
    loader = make_loader(ds, 5, workers, multiprocessing_context=context)
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    keys, workers_seen = [], set()
    for x, x_tilde, y, batch_keys, worker in batches:
        assert x.dtype == x_tilde.dtype == torch.float32 and x.shape == x_tilde.shape == (5, 3, 24, 24)
        assert 0 <= x.min() and x.max() <= 1 and y.shape == (5,)
        keys += batch_keys
        workers_seen |= set(worker.tolist())
    assert len(keys) == len(set(keys)) == len(ds) == 25
    assert workers_seen == ({-1} if workers == 0 else set(range(workers)))
    # sample by sample too: the transform's output is what iteration yields
    x, x_tilde, y, key, worker = next(iter(ds))
    assert x.shape == (3, 24, 24) and isinstance(key, str) and worker == -1


def test_set_epoch_reaches_the_persistent_workers_of_a_paired_dataset(toy):
    """Built once, the loader's workers persist; each epoch (also going back to one) is what fresh workers give."""
    def dataset():
        return PairedShardDataset(toy / "train" / "jpeg-q10", toy / "train" / "orig", shuffle=True, seed=7,
                                  buffer_size=5, transform=functools.partial(crop_to_float, size=24))

    def epoch_of(loader):
        out = []
        for x, x_tilde, y, keys, worker in loader:
            out += [(k, int(w), x[i].sum().item(), x_tilde[i].sum().item()) for i, (k, w) in enumerate(zip(keys, worker))]
        return out

    ds = dataset()
    loader = make_loader(ds, 5, 2, drop_last=True)
    assert loader.persistent_workers and len(loader) == 5
    got = {}
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        run = epoch_of(loader)
        assert len(run) == 25 and {w for _, w, _, _ in run} == {0, 1}
        assert got.setdefault(epoch, run) == run
        fresh = dataset()
        fresh.set_epoch(epoch)
        assert run == epoch_of(make_loader(fresh, 5, 2, drop_last=True, persistent_workers=False))
    assert [k for k, *_ in got[0]] != [k for k, *_ in got[1]]


def test_a_transform_that_changes_one_sample_size_names_it(toy):
    ds = ShardDataset(toy / "train" / "jpeg-q10", transform=odd_size_for_one_key)
    with pytest.raises(ShardError, match=r"sample 'train/img0003' is 32x31 but sample .* of the same batch is 32x32"):
        list(make_loader(ds, 25))
    assert len(list(make_loader(ds, 1))) == 25  # one sample per batch: any sizes
    with pytest.raises(TypeError, match="transform must be callable"):
        ShardDataset(toy / "train" / "jpeg-q10", transform="crop")


def test_variant_dir_with_a_split_and_its_error(toy):
    assert variant_dir(toy, "orig", split="train") == variant_dir(toy / "train", "orig")
    with pytest.raises(FileNotFoundError, match=r"variant 'jpeg-q5' not found under .*train; available: jpeg-q10, orig"):
        variant_dir(toy, "jpeg-q5", split="train")


def test_top_level_exports_are_lazy():
    code = ("import sys, lossyvision\n"
            "assert 'torch' not in sys.modules, 'import lossyvision imported torch'\n"
            "from lossyvision import ShardDataset, PairedShardDataset, make_loader, to_device, variant_dir\n"
            "import lossyvision.data\n"
            "assert ShardDataset is lossyvision.data.ShardDataset and 'torch' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert {"ShardDataset", "PairedShardDataset", "make_loader", "to_device", "variant_dir", "data"} <= set(dir(lossyvision))
    with pytest.raises(AttributeError, match="no attribute 'ShardDatasett'"):
        lossyvision.ShardDatasett  # noqa: B018


# -- the README's "Python API" section, run as it is written ----------------------------------------

def _readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Python API' section"
    return re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)


def test_readme_has_the_loop_and_the_lightning_example():
    blocks = _readme_python_blocks()
    assert len(blocks) == 2
    loop = [line for line in blocks[0].splitlines() if line.strip() and not line.startswith(("import", "from"))]
    assert len(loop) <= 12, loop
    assert "LightningDataModule" in blocks[1]


def test_readme_pytorch_loop_runs_on_the_demo_shards(tmp_path, monkeypatch, capsys):
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    monkeypatch.chdir(tmp_path)
    # what `make demo` writes (its other codecs left out): demo-out/samples/all/{orig,jpeg-q10}
    prepare_shards(PrepareConfig(dataset="samples", out="demo-out", codecs=[CodecSetting("jpeg", 10)], limit=12,
                                 shard_size=6, executor="local", ms_ssim=False, progress=False))
    exec(compile(_readme_python_blocks()[0], "README.md (Python API loop)", "exec"), {"__name__": "readme"})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(re.fullmatch(r"epoch \d: 2 batches, L1 \d\.\d{4}", line) for line in lines), lines


def test_readme_lightning_datamodule(toy, monkeypatch):
    try:
        import lightning  # noqa: F401  (pyflakes: only whether it imports matters)
    except ImportError:
        # Lightning is not a dependency and is not installed here: a stand-in for the base class, which
        # is all the example uses of it (LightningDataModule.__init__ and its `trainer`, None until
        # a Trainer attaches it). With Lightning installed the real class is used.
        class LightningDataModule:
            def __init__(self) -> None:
                self.trainer = None

        monkeypatch.setitem(sys.modules, "lightning", types.SimpleNamespace(LightningDataModule=LightningDataModule))
    ns: dict = {"__name__": "readme"}
    exec(compile(_readme_python_blocks()[1], "README.md (Lightning example)", "exec"), ns)
    dm = ns["ShardDataModule"](str(toy), "jpeg-q10", batch_size=4, num_workers=2)
    dm.setup("fit")
    assert dm.num_classes == 4
    train = dm.train_dataloader()
    batches = list(train)
    assert len(batches) == len(train) == 25 // 4 and all(len(b[-1]) == 4 for b in batches)
    x, y, keys = dm.on_after_batch_transfer(batches[0], 0)
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32) and x.min() < 0 < x.max()
    val_keys = [k for *_, ks in dm.val_dataloader() for k in ks]
    assert sorted(val_keys) == sorted(f"val/img{i:04d}" for i in range(7))  # validation sees every sample once
