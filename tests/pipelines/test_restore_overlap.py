"""restore-shards overlapped (issue 15, item 7): decode ahead, restore, encode and measure behind,
with the same shards as the serial path, a bounded number of images in flight, and tiling only
when asked or after running out of memory."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ..train.cityscapes_fixture import make_cityscapes_shards

from lossyvision.cli import main
from lossyvision.nets.restoration import build_restoration_net
from lossyvision.pipelines.restore import (Marker, RestoreConfig, oom_tile, ordered_map, prefetch, restore_frame,
                                           restore_image, restore_shards)
from lossyvision.pipelines.stream import ShardError
from lossyvision.train.restoration import save_generator

ARCH = {"net": "finenet", "width": 4, "n_blocks": 1, "norm": "instance"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """7 images of 176x192 (MS-SSIM exists) in shards of 3, 3 and 1."""
    return make_cityscapes_shards(tmp_path_factory.mktemp("cs"), split="val", n=7, h=176, w=192, shard_size=3)


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    g = build_restoration_net(ARCH)
    with torch.no_grad():  # a visible residual, so restored images differ from the source
        g.out_norm.weight.fill_(0.5)
    path = tmp_path_factory.mktemp("gen") / "generator.pt"
    save_generator(path, g, ARCH, {"step": 1, "train_keys": {"split": "train_extra", "keys": []}})
    return path


def _run(root: Path, generator: Path, out: str, **kw) -> dict:
    return restore_shards(RestoreConfig(shards=str(root), split="val", variant="jpeg-q10", generator=str(generator),
                                        out_variant=out, device="cpu", quiet=True, **kw))


TIMINGS = ("enc_ms", "dec_ms")


def _rows(m: dict) -> tuple:
    shards = [{k: v for k, v in s.items() if k not in TIMINGS} for s in m["shards"]]
    means = {k: v for k, v in m["means"].items() if k not in TIMINGS}
    return shards, means, m["num_samples"], m["totals"], m["restored_from"]["tiled_after_oom"]


def test_overlapped_shards_are_byte_identical_to_the_serial_path(root, generator):
    serial = _run(root, generator, "serial", workers=0)
    out = root / "val"
    want = {p.name: p.read_bytes() for p in sorted((out / "serial").glob("shard-*.tar"))}
    assert len(want) == 3 and serial["num_samples"] == 7 and serial["means"]["ms_ssim"] is not None
    for name, kw in {"pool": dict(workers=2, in_flight=2), "one": dict(workers=1, in_flight=1),
                     "wide": dict(workers=3, in_flight=8)}.items():
        m = _run(root, generator, name, **kw)
        got = {p.name: p.read_bytes() for p in sorted((out / name).glob("shard-*.tar"))}
        assert got == want, name
        assert _rows(m) == _rows(serial), name
        assert m["config"]["workers"] == kw["workers"]
    # the restoration did something (the comparison above is not between two copies of the source)
    assert serial["means"]["psnr"] != serial["means"]["source_psnr"]


def test_a_decode_error_in_the_decode_thread_is_one_line_and_leaves_no_shard(root, generator):
    with pytest.raises(ShardError, match=r"sample '.+' does not decode") as e:
        _run(root, generator, "bomb", workers=2, max_pixels=1000)
    assert "\n" not in str(e.value)
    assert not list((root / "val" / "bomb").glob("shard-*.tar"))
    assert not [t for t in threading.enumerate() if t.name == "restore-decode"]


def test_ordered_map_keeps_order_and_bounds_the_items_in_flight():
    pulled = []

    def items():
        for i in range(40):
            pulled.append(i)
            yield Marker(i) if i % 7 == 6 else i

    def slow_square(i: int) -> int:
        time.sleep(0.002 * (3 - i % 4))  # later items often finish first
        return i * i

    out = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for r in ordered_map(slow_square, items(), pool, max_in_flight=3):
            assert len(pulled) - len(out) <= 3  # taken from items and not yet handed on
            out.append(r)
    assert [r.value if isinstance(r, Marker) else r for r in out] == \
        [i if i % 7 == 6 else i * i for i in range(40)]


def test_prefetch_runs_at_most_depth_ahead_and_raises_in_order():
    pulled = []

    def items():
        for i in range(10):
            pulled.append(i)
            if i == 6:
                raise ValueError("bad item 6")
            yield i

    got = []
    with pytest.raises(ValueError, match="bad item 6"):
        for i in prefetch(items(), depth=2):
            time.sleep(0.01)  # let the producer run ahead as far as it may
            # the queue holds <= 2, plus the one the producer is blocked on putting
            assert len(pulled) <= len(got) + 1 + 2 + 1
            got.append(i)
    assert got == [0, 1, 2, 3, 4, 5]

    # closing early stops the producer thread
    gen = prefetch(iter(range(1000)), depth=2)
    assert next(gen) == 0
    gen.close()
    assert not [t for t in threading.enumerate() if t.name == "restore-decode"]


class RunsOutOfMemory(torch.nn.Module):
    """A real generator that raises the CUDA allocator's error for inputs over ``limit`` pixels."""

    def __init__(self, net: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.net, self.limit, self.stride = net, limit, net.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.00 GiB")
        return self.net(x)


def test_out_of_memory_retries_the_frame_tiled_once(caplog):
    torch.manual_seed(0)
    net = build_restoration_net(ARCH).eval()
    rgb = (torch.rand(176, 192, 3) * 255).to(torch.uint8).numpy()
    whole, tiled = restore_frame(net, rgb, torch.device("cpu"))
    assert tiled == 0 and (whole == restore_image(net, rgb, torch.device("cpu"))).all()

    small = RunsOutOfMemory(net, limit=150 * 150)
    with caplog.at_level(logging.WARNING, logger="lossyvision.pipelines.restore"):
        out, tiled = restore_frame(small, rgb, torch.device("cpu"), overlap=32, key="val/a")
    assert tiled == oom_tile(176, 192) == 96
    assert (out == restore_image(net, rgb, torch.device("cpu"), tile=96, overlap=32)).all()
    assert "val/a" in caplog.text and "96-pixel tiles" in caplog.text
    # a frame already tiled (--tile) that runs out of memory is the user's to fix: no second guess
    with pytest.raises(torch.OutOfMemoryError):
        restore_frame(RunsOutOfMemory(net, limit=10), rgb, torch.device("cpu"), tile=64, overlap=32)


def test_oom_tile_sizes():
    assert oom_tile(1024, 2048) == 1024  # a Cityscapes frame: two 1024 tiles
    assert oom_tile(4000, 6000) == 1024
    assert oom_tile(100, 33) == 56 and oom_tile(5, 5) == 8


def test_worker_options_are_checked():
    from lossyvision.pipelines.stream import OptionError

    with pytest.raises(OptionError, match="--workers must be an integer >= 0"):
        RestoreConfig(workers=-1)
    with pytest.raises(OptionError, match="--in-flight must be an integer >= 1"):
        RestoreConfig(in_flight=0)
    assert RestoreConfig(workers=3).resolved_workers() == (3, 6)
    assert RestoreConfig(workers=0).resolved_workers() == (0, 1)


def _cli(root: Path, generator: Path, out: str, *args: str):
    return CliRunner().invoke(main, ["restore-shards", "--shards", str(root), "--split", "val", "--variant", "jpeg-q10",
                                     "--generator", str(generator), "--out-variant", out, "--device", "cpu", "-q",
                                     *args])


@pytest.mark.parametrize("args,words", [
    (["-j", "-1"], ["'-j' / '--workers'", "-1 is not in the range x>=0"]),
    (["--workers", "two"], ["'-j' / '--workers'", "'two'"]),
    (["--in-flight", "0"], ["'--in-flight'", "0 is not in the range x>=1"]),
    (["-j", "2", "--in-flight", "-3"], ["'--in-flight'", "-3 is not in the range x>=1"]),
], ids=["workers-negative", "workers-word", "in-flight-0", "in-flight-negative"])
def test_a_bad_workers_or_in_flight_option_is_one_line_exit_2(root, generator, args, words):
    r = _cli(root, generator, "refused", *args)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert all(w in lines[0] for w in words), lines[0]
    assert not (root / "val" / "refused").exists()


def test_cli_workers_and_in_flight_give_the_serial_shards(root, generator):
    serial = _cli(root, generator, "cli-serial", "-j", "0")
    pooled = _cli(root, generator, "cli-pool", "-j", "2", "--in-flight", "3")
    assert serial.exit_code == 0 and pooled.exit_code == 0, serial.output + pooled.output
    out = root / "val"
    want = {p.name: p.read_bytes() for p in sorted((out / "cli-serial").glob("shard-*.tar"))}
    got = {p.name: p.read_bytes() for p in sorted((out / "cli-pool").glob("shard-*.tar"))}
    assert len(want) == 3 and got == want
    manifests = [json.loads((out / v / "_manifest.json").read_text()) for v in ("cli-serial", "cli-pool")]
    assert [(m["config"]["workers"], m["config"]["in_flight"]) for m in manifests] == [(0, None), (2, 3)]
    assert _rows(manifests[1]) == _rows(manifests[0])
    assert json.loads(pooled.stdout)["num_samples"] == json.loads(serial.stdout)["num_samples"] == 7
