"""Which exceptions are a user's mistake (exit 2) and which a failure while running (exit 1), per
kind of command: the offline ones (codecs, encode, prepare-shards, rate-report) never import torch,
the model ones (training, evaluation, restoration) do. The policy itself is common.user_errors."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from .common import user_errors


def _offline_usage() -> tuple[type, ...]:
    from ..codecs import CodecError
    from ..eval.rates import ResultsError
    from ..names import NameError_
    from ..pipelines.crops import CropError
    from ..pipelines.imageio import SourceError
    from ..pipelines.prepare import PrepareError

    return (PrepareError, CodecError, CropError, SourceError, NameError_, ResultsError)


def _offline_failures() -> tuple[type, ...]:
    from ..pipelines.joblock import JobLockError
    from ..pipelines.prepare import OutputNotSharedError
    from ..pipelines.shards import ManifestError
    from ..storage import StorageError

    return (FileNotFoundError, StorageError, JobLockError, OutputNotSharedError, ManifestError)


_offline = user_errors(_offline_usage, _offline_failures,
                       interrupted="interrupted; rerun the same command to resume (finished shards are kept)",
                       memory_hint="lower --max-pixels or --workers, or use a machine with more memory")


def offline_errors(f: Callable) -> Callable:
    """One-line errors for the offline commands; a Ray address nobody answers is named as such."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ConnectionError as e:  # ray.init with an address nobody answers
            raise click.ClickException(f"cannot reach the Ray cluster: {e}; check --address / RAY_ADDRESS") from None

    return _offline(wrapper)


def _model_usage() -> tuple[type, ...]:
    from lossyvision.names import NameError_
    from lossyvision.nets.segmentation import CheckpointError
    from lossyvision.pipelines.stream import OptionError

    return (OptionError, NameError_, CheckpointError)


def _model_failures() -> tuple[type, ...]:
    from lossyvision.pipelines.imageio import SourceError
    from lossyvision.pipelines.stream import ShardError
    from lossyvision.nets.segmentation import EncoderWeightsUnavailable
    from lossyvision.train.models import WeightsUnavailable

    return (ShardError, WeightsUnavailable, EncoderWeightsUnavailable, SourceError, FileNotFoundError, KeyError,
            FloatingPointError, ImportError)


# exit 2 for a bad option value, 1 for a failure while running (a bad shard, a missing variant)
model_errors = user_errors(_model_usage, _model_failures,
                           interrupted="interrupted; rerun the command (a training one with --resume) to continue",
                           memory_hint="lower --batch-size, --workers or --max-pixels")


def finite(what: str, text: str) -> float:
    """A finite number from an option value, or a one-line usage error naming the option."""
    try:
        v = float(text)
    except ValueError:
        raise click.UsageError(f"{what} value '{text}' is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise click.UsageError(f"{what} value '{text}' must be a finite number")
    return v


def drop_none(**kwargs: Any) -> dict:
    """Options left unset on the command line fall through to the library defaults."""
    return {k: v for k, v in kwargs.items() if v is not None}


def config(cls: type, **kwargs: Any) -> Any:
    """A library config from the options given; its checks of option values (ValueError) exit 2."""
    try:
        return cls(**drop_none(**kwargs))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
