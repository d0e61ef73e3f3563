"""Deprecated re-export: the restoration GAN's networks live in `lossyvision.nets.finenet` now.

Kept for one release. ``VGGFeatures(weights)`` here still takes a state-dict *path*, as it did
(it is `lossyvision.train.restoration.vgg_features`); the class in `lossyvision.nets.finenet`
takes "imagenet", a state dict or None.
"""

from __future__ import annotations

from lossyvision.nets.finenet import (  # noqa: F401
    GENERATOR_STRIDE, Generator, MultiScaleDiscriminator, PatchDiscriminator, ResidualBlock)
from lossyvision.nets.finenet import VGGFeatures as _VGGFeatures


def VGGFeatures(weights: str | None = "imagenet") -> _VGGFeatures:  # noqa: N802  (the old class name)
    """The frozen VGG19 feature blocks of L_VGG: "imagenet", a vgg19 state-dict path, or None."""
    from lossyvision.train.restoration import vgg_features

    return vgg_features(weights)


__all__ = ["GENERATOR_STRIDE", "Generator", "MultiScaleDiscriminator", "PatchDiscriminator", "ResidualBlock",
           "VGGFeatures"]
