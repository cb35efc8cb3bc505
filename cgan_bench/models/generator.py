"""SNGAN ResNet generator with categorical conditional BatchNorm (no spectral norm in G)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import CategoricalConditionalBatchNorm2d, init_xavier


class GeneratorBlock(nn.Module):
    """CBN -> ReLU -> 2x nearest upsample -> conv3x3 -> CBN -> ReLU -> conv3x3, plus upsample -> conv1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, n_classes: int):
        super().__init__()
        self.bn1 = CategoricalConditionalBatchNorm2d(in_ch, n_classes)
        self.conv1 = init_xavier(nn.Conv2d(in_ch, out_ch, 3, padding=1), math.sqrt(2))
        self.bn2 = CategoricalConditionalBatchNorm2d(out_ch, n_classes)
        self.conv2 = init_xavier(nn.Conv2d(out_ch, out_ch, 3, padding=1), math.sqrt(2))
        self.shortcut = init_xavier(nn.Conv2d(in_ch, out_ch, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(nn.Module):
    """z (B, z_dim) and labels -> images in [-1, 1] of size `resolution` (4x4 base, one up-block per doubling)."""

    def __init__(self, n_classes: int, resolution: int = 32, ch: int = 256, z_dim: int = 128, bottom_width: int = 4):
        super().__init__()
        n_up = int(math.log2(resolution // bottom_width))
        if bottom_width * 2**n_up != resolution:
            raise ValueError(f"resolution {resolution} is not bottom_width {bottom_width} times a power of 2")
        self.n_classes, self.z_dim, self.ch, self.bottom_width = n_classes, z_dim, ch, bottom_width
        self.linear = init_xavier(nn.Linear(z_dim, bottom_width * bottom_width * ch))
        self.blocks = nn.ModuleList(GeneratorBlock(ch, ch, n_classes) for _ in range(n_up))
        self.bn = nn.BatchNorm2d(ch, eps=2e-5)  # final BN is unconditional
        self.to_rgb = init_xavier(nn.Conv2d(ch, 3, 3, padding=1))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.linear(z).view(z.shape[0], self.ch, self.bottom_width, self.bottom_width)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.to_rgb(F.relu(self.bn(h))))
