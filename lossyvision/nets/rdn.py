"""Residual dense network (Zhang et al., CVPR 2018 / TPAMI 2020) for compression artifact removal.

Katakol et al. 2021, Appendix C, use it as the non-adversarial restoration baseline of Table III
with 16 global layers (residual dense blocks, D), 6 local layers (convolutions per block, C) and
growth rate 32 (G). Layout, as in RDN:

- shallow features: two 3x3 convolutions to ``features`` (G0 = 64) channels, F_-1 and F_0;
- D residual dense blocks: C densely connected 3x3 convolution + ReLU layers adding G channels
  each, local feature fusion (1x1 convolution back to G0), local residual;
- global feature fusion: the D block outputs concatenated, 1x1 then 3x3 convolution, plus F_-1
  (global residual learning);
- no upsampler: artifact removal keeps the input size, so the super-resolution UPNet is replaced
  by one 3x3 convolution to RGB, and the network predicts a residual added to its input (RDN's
  image-restoration variant). Images in [-1, 1], like the restoration GAN's.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseLayer(nn.Module):
    """3x3 convolution + ReLU whose G output channels are concatenated to its input."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.act(self.conv(x))], dim=1)


class ResidualDenseBlock(nn.Module):
    """C dense layers, local feature fusion (1x1 to G0) and local residual learning."""

    def __init__(self, features: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(DenseLayer(features + i * growth, growth) for i in range(layers)))
        self.fusion = nn.Conv2d(features + layers * growth, features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fusion(self.layers(x))


class RDN(nn.Module):
    """``restored = compressed + RDN(compressed)``, NCHW in [-1, 1], any height and width."""

    stride = 1  # fully convolutional at full resolution: no input-size constraint

    def __init__(self, blocks: int = 16, layers: int = 6, growth: int = 32, features: int = 64,
                 channels: int = 3) -> None:
        super().__init__()
        self.sfe1 = nn.Conv2d(channels, features, 3, padding=1)
        self.sfe2 = nn.Conv2d(features, features, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualDenseBlock(features, growth, layers) for _ in range(blocks))
        self.gff = nn.Sequential(nn.Conv2d(blocks * features, features, 1), nn.Conv2d(features, features, 3, padding=1))
        self.tail = nn.Conv2d(features, channels, 3, padding=1)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        f_1 = self.sfe1(x)
        h = self.sfe2(f_1)
        outs = []
        for block in self.blocks:
            h = block(h)
            outs.append(h)
        return self.tail(self.gff(torch.cat(outs, dim=1)) + f_1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)
