
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
        loader = make_loader(ds, 4, workers)
        batches.append(sum(1 for _ in loader))
        assert batches[-1] == len(loader) == ds.num_batches(4)
    assert not seen[0] & seen[1]
    assert batches[0] == batches[1]


@pytest.mark.parametrize("n,batch,workers,world", [(18, 4, 2, 1), (25, 4, 2, 2), (25, 3, 3, 1), (25, 5, 0, 3),
                                                   (25, 7, 4, 1), (10, 4, 3, 2)])
@pytest.mark.parametrize("drop_last", [True, False])
def test_len_of_the_loader_is_what_it_yields(tmp_path, n, batch, workers, world, drop_last):
    """The issue's case: 18 samples, batch 4, 2 workers gave len 5 and yielded 6 batches (two of size 1)."""
    vdir = write_variant(tmp_path / "train", "jpeg-q10", toy_images(n, 16, 2, 5), shard_size=6,
                         classes=["a", "b"], spec="jpeg-q10")
    counts, sizes = [], []
    for rank in range(world):
        ds = ShardStream(vdir, shuffle=True, seed=1, buffer_size=5, rank=rank, world_size=world)
        loader = make_loader(ds, batch, workers, drop_last=drop_last)
        got = [len(keys) for *_, keys in loader]
        assert len(got) == len(loader)
        counts.append(len(got))
        sizes += got
    assert len(set(counts)) == 1  # equal batch counts on every rank
    per_rank = n // world if world > 1 else n
    if drop_last:
        assert set(sizes) == {batch} and counts[0] == per_rank // batch  # no short batch, ragged tail dropped
    else:
        assert sum(sizes) == per_rank * world and sizes.count(batch) >= len(sizes) - world  # one short batch per rank at most


def test_batch_count_does_not_depend_on_workers(toy):
    ds = ShardStream(toy / "train" / "jpeg-q10", shuffle=True, seed=0)
    assert {len(make_loader(ds, 4, w, drop_last=True)) for w in (0, 1, 2, 3)} == {6}
    assert {sum(1 for _ in make_loader(ds, 4, w, drop_last=True)) for w in (0, 2, 3)} == {6}


def test_mixture_draws_every_variant_aligned_with_orig(tmp_path):
    samples = toy_images(40, 16, 2, 4)
    split = tmp_path / "train"
    for v in ("jpeg-q10", "jpeg-q50"):
        write_variant(split, v, samples, shard_size=8, classes=["a", "b"], spec=v)
    write_variant(split, "orig", samples, shard_size=8, classes=["a", "b"])
    codecs = {v: from_spec(v) for v in ("jpeg-q10", "jpeg-q50")}
    by_key = {k: (img, y) for k, img, y in samples}
    decoded = {v: {k: torch.from_numpy(c.decode(c.encode(img))).permute(2, 0, 1) for k, (img, _) in by_key.items()}
               for v, c in codecs.items()}

    def draws(epoch):
        ds = ShardStream([split / "jpeg-q10", split / "jpeg-q50"], split / "orig", shuffle=True, seed=2, buffer_size=6)
        ds.set_epoch(epoch)
        out = {}
        for x, xt, y, keys in make_loader(ds, 4, 2, drop_last=True):
            for i, k in enumerate(keys):
                img, label = by_key[k]
                assert torch.equal(x[i], torch.from_numpy(img).permute(2, 0, 1)) and y[i] == label
                which = [v for v in decoded if torch.equal(xt[i], decoded[v][k])]
                assert len(which) == 1, k
                out[k] = which[0]
        return out

    e0, e0_again, e1 = draws(0), draws(0), draws(1)
    assert e0 == e0_again  # seeded
    counts = {v: list(e0.values()).count(v) for v in decoded}
    assert min(counts.values()) >= 10, counts  # every variant drawn, about half each
    assert e0 != e1  # a new draw each epoch


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


def _keys(loader) -> list[str]:
    return [k for *_, keys in loader for k in keys]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_workers_see_every_epoch(toy, context):
    """One loader whose two workers start once: each epoch's order is the one fresh workers give it."""
    def stream():
        return ShardStream(toy / "train" / "jpeg-q10", shuffle=True, seed=3, buffer_size=4)

    ds = stream()
    loader = make_loader(ds, 4, 2, multiprocessing_context=context)
    assert loader.persistent_workers and len(loader) == ds.num_batches(4) == 7
    got, iterators, batches = [], [], []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        it = iter(loader)
        iterators.append(it)
        epoch_batches = list(it)
        batches.append(len(epoch_batches))
        got.append([k for *_, keys in epoch_batches for k in keys])
    assert iterators[0] is iterators[1]  # the same worker processes served both epochs
    assert batches == [len(loader)] * 2 and ds.epoch == 1
    for epoch in (0, 1):
        ref = stream()
        ref.set_epoch(epoch)
        assert got[epoch] == _keys(make_loader(ref, 4, 2, persistent_workers=False)), epoch
    assert got[0] != got[1] and sorted(got[0]) == sorted(got[1])


def test_persistent_loader_without_workers_and_the_epoch_property(toy):
    ds = ShardStream(toy / "train" / "jpeg-q10", shuffle=True, seed=5, buffer_size=4)
    loader = make_loader(ds, 4, 0, persistent_workers=True)  # nothing to keep: no error
    assert not loader.persistent_workers and not make_loader(ds, 4, 2, persistent_workers=False).persistent_workers
    ds.epoch = 2
    assert ds.epoch == 2 and ds.shard_order() == ds.shard_order(2) != ds.shard_order(0)
    ds.set_epoch(0)
    assert _keys(loader) == [k for *_, k in ds]


@pytest.mark.parametrize("channels_last", [False, True])
def test_to_device_equals_the_per_call_formula(channels_last):
    """Cached constants, same numbers: bit-equal to the formula that built mean/std tensors per call."""
    x = torch.randint(0, 256, (4, 3, 9, 7), dtype=torch.uint8)
    for mean, std in [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,) * 3, (0.5,) * 3),
                      ([0.1, 0.2, 0.3], [0.9, 0.8, 0.7])]:
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        ref = x.float().mul_(1.0 / (255.0 * s)).sub_(m / s)
        for _ in range(2):  # the second call uses the cached constants
            got = to_device(x, "cpu", mean, std, channels_last=channels_last)
            assert got.dtype == torch.float32 and torch.equal(got, ref)
            assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_on_cuda_from_pinned_memory_equals_cpu():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8).pin_memory()
    got = to_device(x, "cuda", channels_last=True)
    assert got.device.type == "cuda" and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.cpu(), to_device(x, "cpu"))
