"""train-segmentation under DDP: 2 gloo processes on the CPU, each joining and leaving its own
process group through lossyvision.train.distributed as it would under torchrun.

One 2-rank session runs three trainer calls (a global batch that does not divide, a run with its
sharded final evaluation, a resume) and the checks compare them with single-process results."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from .cityscapes_fixture import make_cityscapes_shards
from .dist_helpers import free_port, torchrun_env

from lossyvision.eval.segmentation import (
    EvalConfig, confusion_counts, confusion_matrix, eval_share, evaluate_checkpoint)
from lossyvision.pipelines.stream import OptionError
from lossyvision.train.segmentation import SegmentationConfig, SegmentationCrops, process_batch, train_segmentation

pytest.importorskip("segmentation_models_pytorch")


def _cfg(shards: Path, out: Path, **kw) -> SegmentationConfig:
    base = dict(shards=str(shards), train_variant="orig", test_variant="orig", out_dir=str(out), encoder="resnet18",
                encoder_weights=None, crop_size=64, steps=2, num_workers=0, log_every=1, ckpt_every=1, quiet=True)
    return SegmentationConfig(**{**base, **kw})


def _rank_main(rank: int, world: int, ports: list[int], shards: str, out: str, reports: str) -> None:
    """One rank: the environment torchrun gives, then three trainer calls, each joining its own group."""
    os.environ.update(torchrun_env(rank, world))
    torch.set_num_threads(1)  # the same kernels as the single-process evaluation it is compared with
    report: dict = {}
    os.environ["MASTER_PORT"] = str(ports[0])
    try:
        train_segmentation(_cfg(Path(shards), Path(out), global_batch=3))
    except OptionError as e:
        report["odd_batch"] = str(e)
    report["left_group_after_error"] = not torch.distributed.is_initialized()
    os.environ["MASTER_PORT"] = str(ports[1])
    report["first"] = train_segmentation(_cfg(Path(shards), Path(out), global_batch=4))
    report["left_group"] = not torch.distributed.is_initialized()
    if rank == 0:  # the model the final evaluation saw (the resume below rewrites model.pt)
        shutil.copy(Path(out, "model.pt"), Path(reports, "model-step2.pt"))
    os.environ["MASTER_PORT"] = str(ports[2])
    report["resumed"] = train_segmentation(_cfg(Path(shards), Path(out), global_batch=4, steps=3, resume=True,
                                                evaluate=False))
    # eval-segmentation as torchrun runs it: each rank evaluates its share, rank 0 alone writes and prints
    from click.testing import CliRunner

    from lossyvision.cli.segmentation import eval_segmentation

    os.environ["MASTER_PORT"] = str(ports[3])
    r = CliRunner().invoke(eval_segmentation, ["--out", str(Path(reports, "cli-eval")), "--checkpoint",
                                               str(Path(out, "model.pt")), "--shards", shards, "-q"])
    report["cli_eval"] = {"exit_code": r.exit_code, "output": r.stdout, "error": r.stderr[-2000:], "left_group": not torch.distributed.is_initialized()}
    Path(reports, f"rank{rank}.json").write_text(json.dumps(report, default=str))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cs")
    make_cityscapes_shards(root, split="val", n=3, seed=1)  # 3 images: ranks get 2 and 1
    return make_cityscapes_shards(root, split="train", n=4)


@pytest.fixture(scope="module")
def two_ranks(shards, tmp_path_factory):
    import torch.multiprocessing as mp

    out, reports = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("reports")
    mp.spawn(_rank_main, args=(2, [free_port() for _ in range(4)], str(shards), str(out), str(reports)),
             nprocs=2, join=True)
    return out, [json.loads((reports / f"rank{r}.json").read_text()) for r in range(2)], reports / "model-step2.pt"


def test_global_batch_is_split_over_the_ranks_and_recorded(two_ranks):
    out, reports, _ = two_ranks
    for rep in reports:
        assert "--global-batch 3 does not divide over 2 processes" in rep["odd_batch"]
        assert "\n" not in rep["odd_batch"] and rep["left_group_after_error"] and rep["left_group"]
        assert rep["first"]["batch_size"] == 2 and rep["first"]["global_batch"] == 4
    with pytest.raises(OptionError, match="does not divide over 2"):
        process_batch(SegmentationConfig(global_batch=3), 2)
    assert process_batch(SegmentationConfig(global_batch=8, batch_size=5), 4) == 2
    assert process_batch(SegmentationConfig(batch_size=5), 4) == 5  # -b: per process
    with pytest.raises(OptionError, match="global-batch"):
        SegmentationConfig(global_batch=0)


def test_sharded_final_evaluation_equals_the_single_process_one(two_ranks, shards, tmp_path):
    out, reports, evaluated = two_ranks
    rec = json.loads((out / "results" / "orig__orig.json").read_text())
    assert rec["images"] == 3 and reports[0]["first"]["miou_pct"] == reports[1]["first"]["miou_pct"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate_checkpoint(EvalConfig(checkpoint=str(evaluated), shards=str(shards),
                                                test_variants=["orig"], out_dir=str(tmp_path), quiet=True))[0]
    finally:
        torch.set_num_threads(threads)
    assert single["confusion"] == rec["confusion"] and single["images"] == 3
    assert single["miou_pct"] == rec["miou_pct"] and single["pixels"] == rec["pixels"] > 0


def test_eval_segmentation_under_torchrun_splits_the_images_and_rank_0_reports(two_ranks, shards, tmp_path):
    out, reports, _ = two_ranks
    cli = [rep["cli_eval"] for rep in reports]
    assert all(c["exit_code"] == 0 and c["left_group"] for c in cli), cli
    assert '"miou_pct"' in cli[0]["output"] and cli[1]["output"].strip() == ""  # one report, from rank 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate_checkpoint(EvalConfig(checkpoint=str(out / "model.pt"), shards=str(shards),
                                                test_variants=["orig"], out_dir=str(tmp_path), quiet=True))[0]
    finally:
        torch.set_num_threads(threads)
    got = json.loads(cli[0]["output"])[0]
    assert got["images"] == single["images"] == 3 and got["miou_pct"] == single["miou_pct"]


def test_every_rank_has_its_own_rng_and_resume_restores_it(two_ranks):
    out, reports, _ = two_ranks
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    # distinct torch generators: distinct ASPP dropout masks per rank
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    for rep in reports:
        assert rep["resumed"]["steps"] == 3 and rep["resumed"]["rng"] == "restored the RNG state of each of 2 rank(s)"
    config = json.loads((out / "config.json").read_text())
    assert (config["world_size"], config["batch_size"], config["global_batch"]) == (2, 2, 4)


def test_resume_with_another_world_size_reseeds_and_says_so(two_ranks, shards, tmp_path):
    src = two_ranks[0]
    out = tmp_path / "one"
    shutil.copytree(src, out)
    summary = train_segmentation(_cfg(shards, out, global_batch=4, steps=4, resume=True,
                                      evaluate=False))
    assert summary["steps"] == 4 and summary["batch_size"] == 4 and summary["world_size"] == 1
    assert "holds RNG states for 2 rank(s) and this run has 1: re-seeded" in summary["rng"]
    assert len(torch.load(out / "checkpoints" / "last.pt", weights_only=False)["rng"]) == 1


# -- in one process --------------------------------------------------------------------------------

def test_device_confusion_counts_equal_the_checked_matrix():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 19, (2, 33, 40), generator=g)
    label = torch.randint(0, 19, (2, 33, 40), generator=g).to(torch.uint8)
    label[:, :5] = 255
    cm = confusion_counts(pred, label, 19)
    cm = confusion_counts(pred[:1], label[:1], 19, out=cm)  # accumulates in place
    expected = confusion_matrix(pred, label) + confusion_matrix(pred[:1], label[:1])
    assert np.array_equal(cm[:-1].reshape(19, 19).numpy(), expected)
    assert int(cm[-1]) == 3 * 5 * 40  # the ignored pixels land in the extra bin


@pytest.mark.parametrize("total,world,max_images", [(3, 2, None), (500, 8, None), (7, 3, 4), (2, 4, None)])
def test_evaluation_shares_cover_each_image_once(total, world, max_images):
    seen = []
    for r in range(world):
        first, count = eval_share(total, r, world, max_images)
        seen += range(first, first + count)
    assert seen == list(range(total if max_images is None else min(total, max_images)))


def test_crop_rng_follows_rank_and_epoch_into_persistent_workers(shards):
    cfg = _cfg(shards, Path("unused"), scale_min=0.7, scale_max=1.4, shuffle_buffer=0)
    ds = SegmentationCrops(str(shards / "train" / "orig"), cfg, rank=0, world_size=1)
    other = SegmentationCrops(str(shards / "train" / "orig"), cfg, rank=1, world_size=2)
    assert ds.rng(0).random() != other.rng(0).random()  # same seed, epoch and worker: the rank differs
    epoch0 = ds.rng(0).random()
    ds.set_epoch(1)
    assert ds.rng(0).random() != epoch0 and ds.rng(1).random() != ds.rng(0).random()

    def crops(d) -> list[torch.Tensor]:
        return [y for _, y in d]

    expected = {}
    for e in (0, 1):
        ds.set_epoch(e)
        expected[e] = crops(ds)  # in this process: worker id 0, as the single worker below
    assert any(not torch.equal(a, b) for a, b in zip(expected[0], expected[1]))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True)
    for e in (0, 1):
        ds.set_epoch(e)
        got = [y for _, y in loader]
        assert len(got) == len(expected[e]) and all(torch.equal(a, b) for a, b in zip(got, expected[e]))
    del loader


# -- CUDA (skipped without it) -----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_and_confusion_counts_never_sync(shards, tmp_path):
    from lossyvision.pipelines.classlists import variant_class_list
    from lossyvision.train.distributed import DistInfo
    from lossyvision.train.segmentation import _Run

    vdir = str(shards / "train" / "orig")
    cfg = _cfg(shards, tmp_path / "gpu", device="cuda", batch_size=2, num_classes=19)
    run = _Run(cfg, DistInfo(), torch.device("cuda", torch.cuda.current_device()), vdir, variant_class_list(vdir))
    assert run.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark  # fixed crop shapes
    x, y = next(iter(run._loader()))
    assert x.is_pinned()
    run.train_step(x, y, 0.01)  # warm-up: cudnn.benchmark picks its kernels, the allocator grows
    torch.cuda.synchronize()
    pred = torch.randint(0, 19, (1, 64, 128), device="cuda")
    label = torch.randint(0, 19, (1, 64, 128), device="cuda")
    cm = confusion_counts(pred, label, 19)
    torch.cuda.set_sync_debug_mode("error" if run.dtype == torch.bfloat16 else "warn")  # fp16: GradScaler's check
    try:
        losses = [run.train_step(x, y, 0.01) for _ in range(2)]
        confusion_counts(pred, label, 19, out=cm)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(v) for v in losses) and int(cm.sum()) == 2 * 64 * 128
