"""(b) Hidden concat: a learned (SN) label embedding, broadcast over space and concatenated to a trunk feature map.

The paper's code concatenates after block 3 of 6 at 128px; no 32px code was published, so the
stage is a config value (default: the middle of the trunk).
"""
import torch
from torch import nn

from ..models.layers import init_xavier, sn
from .base import DiscriminatorOutput, Head
from .registry import register_head


@register_head("concat")
class HiddenConcat(Head):
    def __init__(self, n_classes: int, feature_dim: int, n_blocks: int, embed_dim: int = 128, stage: int | None = None):
        super().__init__(n_classes, feature_dim, n_blocks)
        self.stage = n_blocks // 2 if stage is None else int(stage)
        if not 1 <= self.stage < n_blocks:
            raise ValueError(f"head.stage={stage} is not allowed: an integer in 1..{n_blocks - 1} for this "
                             f"{n_blocks}-block trunk, or null for the middle")
        self.stage_channels = embed_dim
        self.embed = sn(init_xavier(nn.Embedding(n_classes, embed_dim)))
        self.linear = sn(init_xavier(nn.Linear(feature_dim, 1)))

    def at_stage(self, h, y):
        e = self.embed(y)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        return torch.cat([h, e], dim=1)

    def forward(self, phi, y):
        return DiscriminatorOutput(adv=self.linear(phi).squeeze(1))
