"""(d) Projection (Miyato & Koyama 2018): D(x, y) = linear(phi) + <embed(y), phi>, SN linear and SN embedding.

The linear has no bias in the official 32px D (snresnet_32.py) and one in the ImageNet Ds (snresnet.py,
snresnet_64.py): `bias` (conf/head/projection.yaml takes it from model.projection_bias)."""
from torch import nn

from ..models.layers import init_xavier, sn
from .base import DiscriminatorOutput, Head
from .registry import register_head


@register_head("projection")
class Projection(Head):
    def __init__(self, n_classes: int, feature_dim: int, n_blocks: int, bias: bool = False):
        super().__init__(n_classes, feature_dim, n_blocks)
        self.linear = sn(init_xavier(nn.Linear(feature_dim, 1, bias=bool(bias))))
        self.embed = sn(init_xavier(nn.Embedding(n_classes, feature_dim)))

    def forward(self, phi, y):
        adv = self.linear(phi).squeeze(1) + (self.embed(y) * phi).sum(dim=1)
        return DiscriminatorOutput(adv=adv)
