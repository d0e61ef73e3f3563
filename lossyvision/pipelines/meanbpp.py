"""Dataset-level rate targets (``prepare-shards --mean-bpp``): one codec parameter for a whole split.

Paper 2 reports its points as the split's mean bpp (BPG 0.0454 ... 0.1279), as a fixed-QP experiment
lands them: every image at one parameter. The parameter is chosen before the job by bisection
(:func:`lossyvision.codecs.ratecontrol.choose_parameter`) on a seeded random sample of the split,
each probe encoding the sample's crops exactly as the job will (same source reader, crop, codec and
options), so the sample's rates are the job's own. It runs in the driver, in-process, whatever the
executor: about log2(range) probes x the sample (6 x 64 encodes for a QP), the crops kept in memory
between probes. The per-image ``--bpp`` rate control is another thing (codecs/ratecontrol.py).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..codecs import Codec, CodecError, create, get_codec_class
from ..codecs.ratecontrol import choose_parameter, parameter_ladder

log = logging.getLogger(__name__)

DEFAULT_RATE_SAMPLE = 64
#: named target lists per codec: paper 2 (Katakol et al. 2021), Table II's four rates per codec
PRESETS: dict[str, dict[str, tuple[float, ...]]] = {
    "katakol2021": {"bpg": (0.0454, 0.0674, 0.0870, 0.1279), "msh": (0.0419, 0.0613, 0.0891, 0.1279)},
}


class RateTargetError(ValueError):
    """A --mean-bpp value that is no rate, a preset without points for the codec, or a lossless codec."""


def check_target(codec: str, bpp: Any) -> float:
    """A mean-bpp target as a float in (0, 48) for a lossy codec, or RateTargetError saying why not."""
    try:
        v = float(bpp)
    except (TypeError, ValueError):
        raise RateTargetError(f"--mean-bpp for codec {codec}: {bpp!r} is not a number") from None
    if not math.isfinite(v) or not 0 < v < 48:
        raise RateTargetError(f"--mean-bpp for codec {codec}: {bpp!r} is out of range; use a rate in (0, 48) bits per "
                              "pixel, e.g. 0.1, or a preset (" + ", ".join(PRESETS) + ")")
    try:
        parameter_ladder(get_codec_class(codec))
    except CodecError as e:
        raise RateTargetError(f"--mean-bpp for codec {codec}: {e}") from None
    return v


def check_options(codec: str, options: dict) -> None:
    """Refuse codec options that hold for one parameter only: MSH's ``weights=PATH`` is one quality's
    state dict, so a search over its qualities would load it for every one of them."""
    w = options.get("weights")
    if codec == "msh" and w not in (None, "", "zoo", "untrained"):
        raise RateTargetError("--mean-bpp for codec msh searches its quality levels, but weights=PATH is one "
                              "quality's state dict; use CompressAI's zoo weights (online), or --quality with that file")


def expand_targets(codec: str, text: str) -> list[float]:
    """'0.05,0.1' or a preset name ('katakol2021'), or a mix, -> the codec's targets in bits per pixel."""
    out: list[float] = []
    for tok in (t.strip() for t in str(text).split(",")):
        if not tok:
            raise RateTargetError(f"--mean-bpp for codec {codec}: empty value in {text!r}")
        preset = PRESETS.get(tok.lower())
        if preset is not None:
            if codec not in preset:
                raise RateTargetError(f"--mean-bpp {tok}: the paper gives rate points for {', '.join(sorted(preset))}, "
                                      f"not {codec}; give {codec}'s targets as numbers, e.g. --mean-bpp 0.05,0.1")
            out.extend(preset[codec])
            continue
        try:
            float(tok)
        except ValueError:
            raise RateTargetError(f"--mean-bpp for codec {codec}: {tok!r} is neither a rate in bits per pixel nor a preset "
                                  f"({', '.join(PRESETS)})") from None
        out.append(check_target(codec, tok))
    return [check_target(codec, v) for v in out]


def sample_positions(n: int, size: int, seed: int) -> list[int]:
    """Positions of a seeded random sample of ``size`` of ``n`` key-sorted items (all when size >= n).

    The same permutation as a shuffled shard order with this seed (Python's Mersenne Twister), so for
    a shuffled training split without a limit the sample is the job's first ``size`` images."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[: max(0, size)]


@dataclass
class SampleImage:
    key: str
    rgb: np.ndarray


class SampleRates:
    """The sample's crops, and the mean bpp of one codec setting over them (encoded once per setting)."""

    def __init__(self, images: Sequence[SampleImage]):
        self.images = list(images)
        self._cache: dict[str, np.ndarray] = {}

    def per_image(self, codec: Codec) -> np.ndarray:
        """bpp of each sample image at this setting (the whole bitstream, as the job counts it)."""
        if codec.spec not in self._cache:
            bpp = []
            for im in self.images:
                try:
                    data = codec.encode(im.rgb)
                except CodecError as e:
                    raise RateTargetError(f"choosing {codec.name}'s parameter for --mean-bpp: sample image {im.key}: "
                                          f"{e}") from None
                bpp.append(len(data) * 8.0 / (im.rgb.shape[0] * im.rgb.shape[1]))
            self._cache[codec.spec] = np.asarray(bpp, dtype=np.float64)
            log.info("--mean-bpp probe %s: %.4f bpp over %d sample images", codec.spec, self._cache[codec.spec].mean(),
                     len(self.images))
        return self._cache[codec.spec]

    def mean_bpp(self, codec: Codec) -> float:
        return float(self.per_image(codec).mean())

    def sem_bpp(self, codec: Codec, population: int) -> float | None:
        """Standard error of the sample's mean bpp as an estimate of the split's (finite-population
        corrected: 0 when the sample is the whole split); None for a single image."""
        v = self.per_image(codec)
        n = len(v)
        if n >= population:
            return 0.0
        if n < 2:
            return None
        return float(v.std(ddof=1) / math.sqrt(n) * math.sqrt((population - n) / (population - 1)))


def choose(codec: str, options: dict, target: float, rates: SampleRates, seed: int, population: int) -> dict:
    """The ``rate_target`` record of one target: the parameter chosen, its sample mean and that
    mean's standard error for the ``population`` images of the split, every probe."""
    cls = get_codec_class(codec)

    def at(q: Any) -> float:
        return rates.mean_bpp(create(codec, q, **options))

    c = choose_parameter(cls, target, at)
    if not c.bracketed:
        log.warning("--mean-bpp %g for %s: out of the codec's reach on this sample; %s %s gives %.4f bpp, the closest",
                    target, codec, cls.q_name, c.q, c.mean_bpp)
    sem = rates.sem_bpp(create(codec, c.q, **options), population)
    return {"mean_bpp": target, "sample": len(rates.images), "seed": seed, "sample_mean_bpp": c.mean_bpp, "chosen": c.q,
            "sample_sem_bpp": sem, "split_images": population, "q_name": cls.q_name, "bracketed": c.bracketed, "tried": [[q, v] for q, v in c.tried],
            "sample_keys": [im.key for im in rates.images]}


def load_sample(keys_items: Sequence[Any], load: Callable[[Any], np.ndarray], key: Callable[[Any], str]) -> list[SampleImage]:
    """Load (and crop) each sample item with ``load``; an item the job would list as a failure is
    left out of the sample, as it is out of the job's means."""
    out = []
    for it in keys_items:
        try:
            out.append(SampleImage(key(it), load(it)))
        except Exception as e:  # noqa: BLE001 - the job lists such images with the reason; the sample skips them
            log.info("--mean-bpp sample: %s left out (%s)", key(it), e)
    return out
