"""MSH decodes anywhere: entropy coding and h_s on the CPU in fp32, DataLoader workers on the CPU,
the manifest naming the weights by sha256 (untrained weights, tiny images)."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("compressai")

from lossyvision import codecs  # noqa: E402
from lossyvision.codecs import msh  # noqa: E402
from lossyvision.fingerprint import state_dict_sha256  # noqa: E402

SHAPES = [(64, 64), (50, 70)]  # a multiple of 64, and one padded to 64x128


def _images(photo) -> list[np.ndarray]:
    return [np.ascontiguousarray(photo[20 : 20 + h, 30 : 30 + w]) for h, w in SHAPES]


def _one_thread(fn):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(n)


def test_cpu_bytes_and_pixels_are_compressais_own(photo):
    from compressai.zoo import mbt2018_mean

    torch.manual_seed(msh.UNTRAINED_SEED)  # a fresh model: also checks that "untrained" is this seeded init
    ref = mbt2018_mean(quality=2, pretrained=False).eval()
    ref.update(force=True)
    c = codecs.create("msh", 2, weights="untrained", device="cpu")
    for rgb in _images(photo):
        h, w = rgb.shape[:2]
        ph, pw = (-h) % 64, (-w) % 64
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255)
        x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        with torch.no_grad():  # one thread, as msh's CPU section: conv last bits depend on the thread count
            out = _one_thread(lambda: ref.compress(x))
            x_hat = _one_thread(lambda: ref.decompress(out["strings"], out["shape"])["x_hat"])
        data = _one_thread(lambda: c.encode(rgb))
        assert data[15:] == out["strings"][0][0] + out["strings"][1][0]
        expect = x_hat[:, :, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w].mul(255).round().byte()[0].permute(1, 2, 0)
        assert np.array_equal(c.decode(data), expect.numpy())


def test_untrained_fingerprint_is_the_same_in_another_process():
    code = "from lossyvision.codecs.msh import cpu_model; print(cpu_model(2, 'untrained').sha256)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    info = codecs.create("msh", 2, weights="untrained").info()
    assert info["weights_sha256"] == other == msh.cpu_model(2, "untrained").sha256
    assert (info["weights"], info["entropy_device"]) == ("untrained", "cpu-fp32")
    from compressai.zoo import mbt2018_mean

    torch.manual_seed(msh.UNTRAINED_SEED + 1)
    assert state_dict_sha256(mbt2018_mean(quality=2, pretrained=False)) != other


class _Decodes(torch.utils.data.Dataset):
    """Decodes each bitstream where it runs (a forked DataLoader worker) and reports that process's device choice."""

    def __init__(self, streams: list[bytes], device: str | None) -> None:
        self.streams, self.device = streams, device

    def __len__(self) -> int:
        return len(self.streams)

    def __getitem__(self, i: int):
        c = codecs.create("msh", 1, weights="untrained", **({"device": self.device} if self.device else {}))
        return c.decode(self.streams[i]), msh.resolve_device(None), msh.resolve_device("cuda")


def _decode_in_worker(streams: list[bytes], device: str | None = None) -> list:
    loader = torch.utils.data.DataLoader(_Decodes(streams, device), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork")
    return [(np.asarray(a), d0, d1) for a, d0, d1 in loader]


def test_forked_worker_decodes_on_the_cpu_bit_identically(photo):
    c = codecs.create("msh", 1, weights="untrained")
    streams = [c.encode(rgb) for rgb in _images(photo)]
    here = [c.decode(s) for s in streams]
    got = _decode_in_worker(streams, device="cuda")  # an explicit cuda is not honoured inside a worker
    assert [g[1:] for g in got] == [("cpu", "cpu")] * len(streams)
    for a, (b, *_), rgb in zip(here, got, _images(photo)):
        assert a.shape == rgb.shape and np.array_equal(a, b)


def _prepare(tmp_path, weights: str) -> str:
    from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

    out = tmp_path / "shards"
    prepare_shards(PrepareConfig(dataset="samples", out=str(out), codecs=[CodecSetting("msh", 1, options={"weights": weights})],
                                 crop="scale:70x50", limit=3, shard_size=2, executor="local", workers=1, progress=False,
                                 ms_ssim=False))
    return str(out / "samples" / "all")


def _edit_manifest(vdir: str, **codec_fields) -> None:
    p = os.path.join(vdir, "_manifest.json")
    m = json.load(open(p))
    for k, v in codec_fields.items():
        if v is None:
            m["codec"].pop(k, None)
        else:
            m["codec"][k] = v
    json.dump(m, open(p, "w"))


def test_prepared_variant_decodes_in_a_worker_and_names_its_weights(tmp_path, monkeypatch, caplog):
    from compressai.zoo import mbt2018_mean

    from lossyvision.pipelines.stream import ShardError, ShardStream, make_loader

    monkeypatch.delenv(msh.WEIGHTS_ENV, raising=False)
    wdir = tmp_path / "w"
    wdir.mkdir()
    weights = wdir / "msh1.pth"
    torch.manual_seed(1)
    torch.save(mbt2018_mean(quality=1, pretrained=False).state_dict(), weights)
    base = _prepare(tmp_path, str(weights))
    vdir = os.path.join(base, "msh-q1")
    m = json.load(open(os.path.join(vdir, "_manifest.json")))["codec"]
    assert (m["weights"], m["entropy_device"]) == (str(weights), "cpu-fp32")
    assert m["weights_sha256"] == state_dict_sha256(torch.load(weights, weights_only=True))

    orig = os.path.join(base, "orig")
    here = {k: xt for x, xt, y, k in ShardStream(vdir, orig)}
    batches = list(make_loader(ShardStream(vdir, orig), 1, num_workers=1, multiprocessing_context="fork"))
    assert len(batches) == len(here) == 3
    for x, xt, y, keys in batches:
        assert xt.shape == x.shape == (1, 3, 50, 70) and torch.equal(xt[0], here[keys[0]])

    def refused() -> str:
        with pytest.raises(ShardError) as e:
            list(ShardStream(vdir))
        assert "\n" not in str(e.value)
        return str(e.value)

    moved = tmp_path / "elsewhere"
    moved.mkdir()
    os.rename(weights, moved / "msh1.pth")
    assert msh.WEIGHTS_ENV in refused() and "msh1.pth" in refused()
    monkeypatch.setenv(msh.WEIGHTS_ENV, str(moved))  # a folder holding it by basename
    assert {k: xt for xt, y, k in ShardStream(vdir)}.keys() == here.keys()
    monkeypatch.setenv(msh.WEIGHTS_ENV, str(moved / "msh1.pth"))  # the file itself
    assert all(torch.equal(xt, here[k]) for xt, y, k in ShardStream(vdir))

    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(2)
    torch.save(mbt2018_mean(quality=1, pretrained=False).state_dict(), other / "msh1.pth")
    monkeypatch.setenv(msh.WEIGHTS_ENV, str(other))
    assert "sha256" in refused() and msh.WEIGHTS_ENV in refused()

    monkeypatch.setenv(msh.WEIGHTS_ENV, str(moved))
    _edit_manifest(vdir, entropy_device="cuda")
    assert "entropy_device 'cuda'" in refused()
    _edit_manifest(vdir, entropy_device=None)
    assert "entropy_device None" in refused()

    # a manifest from before these fields: decodes, with one warning
    _edit_manifest(vdir, weights=None, weights_sha256=None)
    with caplog.at_level(logging.WARNING, logger="lossyvision.codecs.msh"):
        for _ in range(2):
            assert all(torch.equal(xt, here[k]) for xt, y, k in ShardStream(vdir))
    assert len([r for r in caplog.records if "before its manifest recorded" in r.getMessage()]) == 1


def test_fingerprint_is_teacher_caches_plus_the_dtype():
    teacher_cache = pytest.importorskip("lossyvision.train.teacher_cache")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert state_dict_sha256(net, dtypes=False) == teacher_cache.weights_fingerprint(net)
    assert state_dict_sha256(net) == state_dict_sha256(net.state_dict()) != state_dict_sha256(net, dtypes=False)
    a = {"w": torch.zeros(4, dtype=torch.float32)}
    assert state_dict_sha256(a) != state_dict_sha256({"w": torch.zeros(4, dtype=torch.int32)})


@pytest.mark.gpu
def test_encoded_on_cuda_decodes_the_same_on_the_cpu_and_in_a_forked_worker(photo):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gpu = codecs.create("msh", 1, weights="untrained", device="cuda")
    streams = [gpu.encode(rgb) for rgb in _images(photo)]  # CUDA is initialised in this process from here on
    cpu = codecs.create("msh", 1, weights="untrained", device="cpu")
    here = [cpu.decode(s) for s in streams]
    got = _decode_in_worker(streams)  # default device: the CPU in a worker, though the parent uses CUDA
    assert [g[1:] for g in got] == [("cpu", "cpu")] * len(streams)
    for a, (b, *_), g, rgb in zip(here, got, (gpu.decode(s) for s in streams), _images(photo)):
        assert np.array_equal(a, b)
        # g_s on CUDA rounds differently, but the latent is the same: only last-level differences
        assert g.shape == rgb.shape and np.abs(g.astype(int) - a).max() <= 2
