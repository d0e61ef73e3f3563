"""A signal that lands inside compiled code must stop the job, not fail one image (kill_trials found
a SIGINT during the numba SSIM kernel listed as a bad image, and the job exited 0)."""

import json

import pytest

from lossyvision.pipelines.prepare import raise_interrupt
from lossyvision.pipelines.shards import MANIFEST


def _wrapped(inner: BaseException) -> SystemError:
    try:
        try:
            raise inner
        except BaseException as e:
            raise SystemError("CPUDispatcher(<function _sums>) returned a result with an exception set") from e
    except SystemError as outer:
        return outer


def test_an_interrupt_wrapped_in_a_system_error_is_raised_again():
    with pytest.raises(KeyboardInterrupt):
        raise_interrupt(_wrapped(KeyboardInterrupt()))
    with pytest.raises(SystemExit):
        raise_interrupt(_wrapped(SystemExit(130)))


def test_an_ordinary_error_is_left_to_the_per_image_handler():
    raise_interrupt(_wrapped(ValueError("bad image")))  # returns: the image is listed as failed
    raise_interrupt(ValueError("bad image"))


def test_a_wrapped_interrupt_during_metrics_ends_the_job_interrupted(tmp_path, monkeypatch):
    """Through the command: the interrupt, wrapped the way numba wraps it, lands on the third image's
    metrics. Before the fix the image was listed as failed and the command exited 0."""
    from click.testing import CliRunner

    import lossyvision.quality as quality
    from lossyvision.cli import main
    from tests.pipelines.test_faults import _photos_folder

    src = _photos_folder(str(tmp_path / "src"), 4)
    real, calls = quality.psnr, []

    def psnr(a, b):
        calls.append(1)
        if len(calls) == 3:
            raise _wrapped(KeyboardInterrupt())
        return real(a, b)

    monkeypatch.setattr(quality, "psnr", psnr)
    out = tmp_path / "out"
    args = ["prepare-shards", "--dataset", "folder", "--src", src, "--out", str(out), "--shard-size", "2",
            "--codec", "jpeg", "--quality", "10", "--executor", "local", "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 130 and "interrupted" in r.output, r.output
    assert "bad image" not in r.output and "failed" not in r.output.lower(), r.output
    monkeypatch.setattr(quality, "psnr", real)
    assert CliRunner().invoke(main, args).exit_code == 0  # the rerun resumes and finishes
    manifests = [json.loads(p.read_text()) for p in out.rglob(MANIFEST)]
    assert len(manifests) == 2 and all(m["complete"] for m in manifests)  # orig and jpeg-q10
    assert [f for m in manifests for f in m["failures"]] == []
