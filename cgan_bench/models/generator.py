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


def generator_widths(resolution: int, ch: int, mult=None, bottom_width: int = 4) -> list[int]:
    """Channels of G's feature maps: the bottom_width^2 map from the linear layer, then each up-block's output.

    Each is `ch * mult[i]`; `mult=None` keeps `ch` everywhere (the 32px CIFAR SNGAN). The official ImageNet nets
    halve the width as they grow: 128px [16, 16, 8, 4, 2, 1], 64px [16, 8, 4, 2, 1] (gen_models/resnet*.py)."""
    n_up = int(math.log2(resolution // bottom_width)) if resolution >= bottom_width else -1
    if n_up < 1 or bottom_width * 2**n_up != resolution:
        raise ValueError(f"resolution {resolution} is not bottom_width {bottom_width} times a power of 2")
    mult = [1] * (n_up + 1) if mult is None else [int(m) for m in mult]
    if len(mult) != n_up + 1 or min(mult) < 1:
        raise ValueError(f"model.g_mult={mult} is not allowed with dataset.resolution={resolution}: {n_up + 1} "
                         f"integers >= 1 (the {bottom_width}x{bottom_width} input, then one per up-block to "
                         f"{resolution}x{resolution})")
    return [ch * m for m in mult]


class Generator(nn.Module):
    """z (B, z_dim) and labels -> images in [-1, 1] of size `resolution` (4x4 base, one up-block per doubling).

    `mult`: channel multipliers of the feature maps (see generator_widths); None = `ch` everywhere."""

    def __init__(self, n_classes: int, resolution: int = 32, ch: int = 256, z_dim: int = 128, bottom_width: int = 4,
                 mult=None):
        super().__init__()
        widths = generator_widths(resolution, ch, mult, bottom_width)
        self.n_classes, self.z_dim, self.ch, self.bottom_width = n_classes, z_dim, widths[0], bottom_width
        self.linear = init_xavier(nn.Linear(z_dim, bottom_width * bottom_width * widths[0]))
        self.blocks = nn.ModuleList(GeneratorBlock(c_in, c_out, n_classes) for c_in, c_out in zip(widths, widths[1:]))
        self.bn = nn.BatchNorm2d(widths[-1], eps=2e-5)  # final BN is unconditional
        self.to_rgb = init_xavier(nn.Conv2d(widths[-1], 3, 3, padding=1))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.linear(z).view(z.shape[0], self.ch, self.bottom_width, self.bottom_width)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.to_rgb(F.relu(self.bn(h))))
