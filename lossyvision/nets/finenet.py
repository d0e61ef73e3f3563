"""Restoration GAN of Katakol et al. 2021, Appendix B (FineNet of Akbari et al., after pix2pixHD).

Generator ``c64, d128, d256, d512, 9 x r512, u256, u128, u64, o3`` with instance norm and
reflection padding; its tanh output is a *residual* added to the compressed image, all
images in [-1, 1]. Two patch discriminators ``C64, C128, C256, C512, O1`` conditioned on the
compressed image, at full and 1/4 resolution, return their intermediate features for the
feature-distillation loss ``L_DIST``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

#: Spatial sizes the generator input must be a multiple of (three stride-2 convolutions).
GENERATOR_STRIDE = 8


def _norm(channels: int, norm: str, affine: bool = False) -> nn.Module:
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=affine)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of instance, none")


class ResidualBlock(nn.Module):
    """r_k: two 3x3 convs with reflection padding and instance norm, identity skip."""

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels, norm), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels, norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """Residual restoration generator: ``restored = compressed + G(compressed)``, NCHW in [-1, 1].

    ``width`` is the channel count of c64 (the paper's 64); ``norm="none"`` exists for exact
    tiled-inference checks, since instance norm makes every tile see its own statistics.
    """

    stride = GENERATOR_STRIDE  # input sides must be multiples of this (restore_tensor pads to it)

    def __init__(self, width: int = 64, n_blocks: int = 9, norm: str = "instance",
                 zero_init_residual: bool = True) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, w, 7), _norm(w, norm), nn.ReLU(True)]
        for mult in (1, 2, 4):  # d128, d256, d512
            layers += [nn.Conv2d(w * mult, w * mult * 2, 3, stride=2, padding=1), _norm(w * mult * 2, norm),
                       nn.ReLU(True)]
        layers += [ResidualBlock(w * 8, norm) for _ in range(n_blocks)]
        for mult in (8, 4, 2):  # u256, u128, u64
            layers += [nn.ConvTranspose2d(w * mult, w * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       _norm(w * mult // 2, norm), nn.ReLU(True)]
        self.body = nn.Sequential(*layers)
        # o3 keeps the paper's instance norm before tanh; its affine scale lets the residual be
        # small (a non-affine norm would force unit variance on every residual channel).
        self.out_conv = nn.Conv2d(w, 3, 7)
        self.out_norm = _norm(3, norm, affine=True)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), self.out_conv, self.out_norm, nn.Tanh())
        if zero_init_residual:
            self.zero_init_residual()

    def zero_init_residual(self) -> None:
        """Make the residual exactly zero, so the untrained generator is the identity."""
        last = self.out_norm if isinstance(self.out_norm, nn.InstanceNorm2d) else self.out_conv
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % GENERATOR_STRIDE or x.shape[-2] % GENERATOR_STRIDE:
            raise ValueError(f"generator input {tuple(x.shape[-2:])} must be a multiple of {GENERATOR_STRIDE}; "
                             "use restore_tensor() to pad")
        return x + self.residual(x)


class PatchDiscriminator(nn.Module):
    """Conditional patch discriminator ``C64, C128, C256, C512, O1`` on ``cat(compressed, image)``."""

    def __init__(self, width: int = 64, norm: str = "instance") -> None:
        super().__init__()
        chans = [6, width, width * 2, width * 4, width * 8]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1), _norm(cout, norm),
                          nn.LeakyReLU(0.2, True))
            for cin, cout in zip(chans[:-1], chans[1:])
        )
        self.out = nn.Conv2d(chans[-1], 1, 1)

    def forward(self, compressed: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return (patch logits N1hw, [features of C64..C512])."""
        h = torch.cat([compressed, image], dim=1)
        feats = []
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        return self.out(h), feats


class MultiScaleDiscriminator(nn.Module):
    """Two discriminators: full resolution and 1/4 resolution (area average of 4x4 blocks)."""

    def __init__(self, width: int = 64, norm: str = "instance", scales: tuple[int, ...] = (1, 4)) -> None:
        super().__init__()
        self.scales = scales
        self.nets = nn.ModuleList(PatchDiscriminator(width, norm) for _ in scales)

    def forward(self, compressed: torch.Tensor, image: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        outs = []
        for scale, net in zip(self.scales, self.nets):
            if scale == 1:
                outs.append(net(compressed, image))
            else:
                outs.append(net(F.avg_pool2d(compressed, scale), F.avg_pool2d(image, scale)))
        return outs


class VGGFeatures(nn.Module):
    """VGG19 outputs of the 5 conv blocks (relu1_2, relu2_2, relu3_4, relu4_4, relu5_4), frozen.

    Input in [-1, 1]; ImageNet normalisation is applied inside.
    """

    BLOCK_ENDS = (4, 9, 18, 27, 36)  # slice ends in torchvision's vgg19().features

    def __init__(self, weights: str | Mapping[str, torch.Tensor] | None = "imagenet") -> None:
        """``weights``: "imagenet" (torchvision's enum, downloaded or cached), a torchvision vgg19
        state dict (load a file with ``lossyvision.train.restoration.vgg_features``), or None for
        random init (tests only: the loss is meaningless)."""
        super().__init__()
        from torchvision.models import VGG19_Weights, vgg19

        if isinstance(weights, str) and weights != "imagenet":
            raise ValueError(f"weights {weights!r}: pass 'imagenet', a state dict or None")
        if weights == "imagenet":
            try:
                model = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
            except Exception as exc:  # offline: urllib/OSError/RuntimeError depending on the failure
                raise RuntimeError(
                    "cannot load VGG19 ImageNet weights for L_VGG (" + str(exc).splitlines()[0][:200] + "); "
                    "run once online so torchvision caches them, or pass a local torchvision vgg19 state "
                    "dict with --vgg-weights PATH (e.g. vgg19-dcbb9e9d.pth)") from exc
        else:
            model = vgg19(weights=None)
            if weights is not None:
                model.load_state_dict(weights, strict=True)  # a misfit raises RuntimeError
        features = model.features[: self.BLOCK_ENDS[-1]]
        starts = (0,) + self.BLOCK_ENDS[:-1]
        self.blocks = nn.ModuleList(features[a:b] for a, b in zip(starts, self.BLOCK_ENDS))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always frozen

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x + 1) / 2 - self.mean) / self.std
        feats = []
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        return feats
