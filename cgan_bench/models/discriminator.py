"""The shared SNGAN ResNet discriminator trunk; the conditioning head is plugged in by name.

Trunk at 32x32: OptimizedBlock(down) -> Block(down) -> Block -> Block -> ReLU -> global sum pooling.
Other resolutions keep the same shape: enough down-sampling blocks to reach 8x8, then two plain blocks.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..heads.base import DiscriminatorOutput, Head
from .layers import init_xavier, sn


def trunk_depth(resolution: int) -> tuple[int, int]:
    """(number of blocks, number of down-sampling blocks) of the trunk for a square input size."""
    n_down = int(math.log2(resolution)) - 3
    if resolution < 16 or 2 ** (n_down + 3) != resolution:
        raise ValueError(f"resolution must be a power of two >= 16, got {resolution}")
    return n_down + 2, n_down


class OptimizedBlock(nn.Module):
    """First block: conv3x3 -> ReLU -> conv3x3 -> avgpool, shortcut avgpool -> conv1x1 (no pre-activation on pixels)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = sn(init_xavier(nn.Conv2d(in_ch, out_ch, 3, padding=1), math.sqrt(2)))
        self.conv2 = sn(init_xavier(nn.Conv2d(out_ch, out_ch, 3, padding=1), math.sqrt(2)))
        self.shortcut = sn(init_xavier(nn.Conv2d(in_ch, out_ch, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(x))), 2)
        return h + self.shortcut(F.avg_pool2d(x, 2))


class DiscriminatorBlock(nn.Module):
    """ReLU -> conv3x3 -> ReLU -> conv3x3 [-> avgpool], shortcut conv1x1 [-> avgpool] when shapes change."""

    def __init__(self, in_ch: int, out_ch: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv1 = sn(init_xavier(nn.Conv2d(in_ch, in_ch, 3, padding=1), math.sqrt(2)))
        self.conv2 = sn(init_xavier(nn.Conv2d(in_ch, out_ch, 3, padding=1), math.sqrt(2)))
        self.shortcut = sn(init_xavier(nn.Conv2d(in_ch, out_ch, 1))) if (in_ch != out_ch or downsample) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        s = x if self.shortcut is None else self.shortcut(x)
        if self.downsample:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return h + s


class Discriminator(nn.Module):
    """Trunk + head. The head decides where labels enter and what is computed from the pooled features."""

    def __init__(self, head: Head, resolution: int = 32, ch: int = 128, in_ch: int = 3):
        super().__init__()
        n_blocks, n_down = trunk_depth(resolution)
        self.head = head
        blocks = [OptimizedBlock(in_ch + head.input_channels, ch)]
        for i in range(1, n_blocks):
            extra = head.stage_channels if head.stage == i else 0
            blocks.append(DiscriminatorBlock(ch + extra, ch, downsample=i < n_down))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> DiscriminatorOutput:
        h = self.head.at_input(x, y)
        for i, block in enumerate(self.blocks):
            if self.head.stage == i:
                h = self.head.at_stage(h, y)
            h = block(h)
        phi = F.relu(h).sum(dim=(2, 3))  # global sum pooling
        return self.head(phi, y)
