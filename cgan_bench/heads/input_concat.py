"""(a) Input concat: one-hot label maps concatenated to the image channels."""
import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import init_xavier, sn
from .base import DiscriminatorOutput, Head
from .registry import register_head


@register_head("input_concat")
class InputConcat(Head):
    def __init__(self, n_classes: int, feature_dim: int, n_blocks: int):
        super().__init__(n_classes, feature_dim, n_blocks)
        self.input_channels = n_classes
        self.linear = sn(init_xavier(nn.Linear(feature_dim, 1)))

    def at_input(self, x, y):
        maps = F.one_hot(y, self.n_classes).to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return torch.cat([x, maps], dim=1)

    def forward(self, phi, y):
        return DiscriminatorOutput(adv=self.linear(phi).squeeze(1))
