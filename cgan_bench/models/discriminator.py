"""The shared SNGAN ResNet discriminator trunk; the conditioning head is plugged in by name.

Trunk at 32x32: OptimizedBlock(down) -> Block(down) -> Block -> Block -> ReLU -> global sum pooling.
Other resolutions keep the same shape: enough down-sampling blocks to reach 8x8, then two plain blocks.
The official ImageNet trunks (model=sngan_64/sngan_128) widen instead: see trunk_layout.
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


def trunk_layout(resolution: int, ch: int, mult=None, n_down=None) -> list[tuple[int, bool]]:
    """(output channels, halves the size?) of each trunk block, the OptimizedBlock first.

    mult=None: the 32px SNGAN shape at any resolution (trunk_depth), `ch` channels everywhere.
    Else block i outputs ch * mult[i] and the first `n_down` blocks halve the size (null: down to 4x4 or as far
    as the blocks go). Official ImageNet D (dis_models/snresnet*.py): 128px mult [1, 2, 4, 8, 16, 16], 5 down
    (128 -> 4x4, then one plain block); 64px [1, 2, 4, 8, 16], 5 down (64 -> 2x2, no plain block)."""
    if mult is None:
        n_blocks, n_down = trunk_depth(resolution)
        return [(ch, i < n_down) for i in range(n_blocks)]
    mult = [int(m) for m in mult]
    if not mult or min(mult) < 1:
        raise ValueError(f"model.d_mult={mult} is not allowed: a list of integers >= 1, one per D block")
    if n_down is None:
        n_down = min(len(mult), int(math.log2(resolution)) - 2)
    n_down = int(n_down)
    if not 1 <= n_down <= len(mult) or 2**n_down > resolution:
        raise ValueError(f"model.d_down={n_down} is not allowed with {len(mult)} D blocks (model.d_mult) and "
                         f"dataset.resolution={resolution}: between 1 (the first block always halves the size) and "
                         f"{min(len(mult), int(math.log2(resolution)))}")
    return [(ch * m, i < n_down) for i, m in enumerate(mult)]


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
    """Trunk + head. The head decides where labels enter and what is computed from the pooled features.

    `mult`, `n_down`: the trunk's widths and down-sampling blocks (trunk_layout); the head must be built with
    feature_dim = the last block's width and n_blocks = the number of blocks."""

    def __init__(self, head: Head, resolution: int = 32, ch: int = 128, in_ch: int = 3, mult=None, n_down=None):
        super().__init__()
        layout = trunk_layout(resolution, ch, mult, n_down)
        if head.feature_dim != layout[-1][0] or head.n_blocks != len(layout):
            raise ValueError(f"the head was built for {head.n_blocks} blocks of {head.feature_dim} features, the trunk "
                             f"has {len(layout)} blocks and ends with {layout[-1][0]} channels")
        self.head = head
        blocks = [OptimizedBlock(in_ch + head.input_channels, layout[0][0])]
        for i in range(1, len(layout)):
            extra = head.stage_channels if head.stage == i else 0
            blocks.append(DiscriminatorBlock(layout[i - 1][0] + extra, layout[i][0], downsample=layout[i][1]))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> DiscriminatorOutput:
        h = self.head.at_input(x, y)
        for i, block in enumerate(self.blocks):
            if self.head.stage == i:
                h = self.head.at_stage(h, y)
            h = block(h)
        phi = F.relu(h).sum(dim=(2, 3))  # global sum pooling
        return self.head(phi, y)
