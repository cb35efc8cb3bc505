"""(unconditional baseline) D never sees the label: adversarial logit = linear(phi)."""
from torch import nn

from ..models.layers import init_xavier, sn
from .base import DiscriminatorOutput, Head
from .registry import register_head


@register_head("none")
class NoConditioning(Head):
    def __init__(self, n_classes: int, feature_dim: int, n_blocks: int):
        super().__init__(n_classes, feature_dim, n_blocks)
        self.linear = sn(init_xavier(nn.Linear(feature_dim, 1)))

    def forward(self, phi, y):
        return DiscriminatorOutput(adv=self.linear(phi).squeeze(1))
