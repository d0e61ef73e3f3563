
import numpy as np
import pytest
import torch

from ..train.classifier_shards import make_dataset, toy_images, write_variant  # noqa: E402

from lossyvision.codecs import from_spec  # noqa: E402
from lossyvision.pipelines.stream import ShardError, ShardStream, make_loader, to_device  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shards"), n_train=25, n_val=5, shard_size=10)


def test_paired_stream_aligns_keys_and_decodes_bitstream(toy):
    ds = ShardStream(toy / "train" / "jpeg-q10", toy / "train" / "orig")
    items = list(ds)
    assert len(items) == len(ds) == 25
    expected = {k: (img, y) for k, img, y in toy_images(25, 32, 4, 0)}
    codec = from_spec("jpeg-q10")
    for x, xt, y, key in items:
        img, label = expected[key]
        assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)
        assert torch.equal(x, torch.from_numpy(img).permute(2, 0, 1))
        assert torch.equal(xt, torch.from_numpy(codec.decode(codec.encode(img))).permute(2, 0, 1))
        assert y == label
    assert [k for *_, k in items] == sorted(expected)


def test_decoded_png_is_preferred_when_stored(tmp_path):
    samples = toy_images(6, 16, 2, 1)
    write_variant(tmp_path / "val", "jpeg-q10", samples, shard_size=4, classes=["a", "b"], spec="jpeg-q10",
                  store_decoded=True, decoded_override=lambda img: 255 - img)
    by_key = {k: img for k, img, _ in samples}
    for xt, y, key in ShardStream(tmp_path / "val" / "jpeg-q10"):
        assert torch.equal(xt, torch.from_numpy(255 - by_key[key]).permute(2, 0, 1))


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_split_evenly_without_overlap(toy, workers):
    seen, batches = [], []
    for rank in range(2):
        ds = ShardStream(toy / "train" / "jpeg-q10", shuffle=True, seed=3, buffer_size=4, rank=rank, world_size=2)
        ds.set_epoch(1)
        keys = [k for _, _, batch_keys in make_loader(ds, 4, workers) for k in batch_keys]
        assert len(keys) == len(ds) == 12  # 25 // 2, remainder dropped on every rank
        seen.append(set(keys))
        batches.append(sum(1 for _ in make_loader(ds, 4, workers)))
        assert batches[-1] == ds.num_batches(4, workers)
    assert not seen[0] & seen[1]
    assert batches[0] == batches[1]


def test_shuffle_is_seeded_and_changes_every_epoch(toy):
    def order(seed, epoch):
        ds = ShardStream(toy / "train" / "jpeg-q10", shuffle=True, seed=seed, buffer_size=8)
        ds.set_epoch(epoch)
        return [k for *_, k in ds]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert sorted(order(0, 1)) == sorted(order(0, 0))


def test_truncated_shard_fails_with_its_name(tmp_path):
    samples = toy_images(12, 16, 2, 2)
    vdir = write_variant(tmp_path / "train", "jpeg-q10", samples, shard_size=6, classes=["a", "b"], spec="jpeg-q10")
    shard = vdir / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(ShardError, match="shard-000001.tar"):
        list(ShardStream(vdir))


def test_key_mismatch_between_orig_and_variant_fails_with_shard_name(tmp_path):
    samples = toy_images(8, 16, 2, 3)
    write_variant(tmp_path / "train", "orig", samples, shard_size=4, classes=["a", "b"])
    renamed = [(k.replace("img0005", "img0005x"), img, y) for k, img, y in samples]
    write_variant(tmp_path / "train", "jpeg-q10", renamed, shard_size=4, classes=["a", "b"], spec="jpeg-q10")
    with pytest.raises(ShardError, match=r"shard-000001.tar: key mismatch"):
        list(ShardStream(tmp_path / "train" / "jpeg-q10", tmp_path / "train" / "orig"))


def test_segmentation_labels_and_device_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    samples = [(f"val/s{i}", rng.integers(0, 255, (8, 12, 3), dtype=np.uint8),
                rng.integers(0, 19, (8, 12), dtype=np.uint8)) for i in range(3)]
    write_variant(tmp_path / "val", "orig", samples, shard_size=2, classes=None, task="segmentation")
    x, y, keys = next(iter(make_loader(ShardStream(tmp_path / "val" / "orig"), 3)))
    assert y.dtype == torch.uint8 and y.shape == (3, 8, 12)
    assert torch.equal(y[0], torch.from_numpy(samples[0][2]))
    z = to_device(x, "cpu", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert z.dtype == torch.float32 and z.min() >= -1 and z.max() <= 1
    assert torch.allclose(z, x.float() / 127.5 - 1, atol=1e-6)


def test_qoi_orig_from_prepare_shards_streams_like_png(imagenet_root, tmp_path):
    """Real prepare-shards output (PNG and QOI orig) through the paired loader: same pixels, keys, labels."""
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    got = {}
    for fmt in ("png", "qoi"):
        out = tmp_path / fmt
        prepare_shards(PrepareConfig(dataset="imagenet", src=imagenet_root, split="val", out=str(out), orig_format=fmt,
                                     codecs=[CodecSetting("jpeg", 10)], shard_size=4, executor="local", progress=False))
        base = out / "imagenet" / "val"
        got[fmt] = list(ShardStream(base / "jpeg-q10", base / "orig"))
    assert len(got["png"]) == len(got["qoi"]) == 13
    for (x1, t1, y1, k1), (x2, t2, y2, k2) in zip(got["png"], got["qoi"]):
        assert k1 == k2 and y1 == y2 and torch.equal(x1, x2) and torch.equal(t1, t2)
    import webdataset as wds

    s = next(iter(wds.WebDataset(str(tmp_path / "qoi" / "imagenet" / "val" / "orig" / "shard-000000.tar"), shardshuffle=False)))
    assert "qoi" in s and "png" not in s


def test_to_device_normalises_like_torchvision():
    from torchvision.transforms import functional as F

    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ref = torch.stack([F.normalize(F.convert_image_dtype(i, torch.float32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) for i in x])
    assert torch.allclose(to_device(x, "cpu"), ref, atol=1e-5)
