"""(c) AC-GAN (Odena et al. 2017): a softmax classifier on the same phi(x) next to the adversarial output.

D minimises CE on real and fake samples, G minimises CE on its fakes (both as in Odena et al.);
the paper released no AC-GAN code, so the weights are config values, default 1.
"""
import torch.nn.functional as F
from torch import nn

from ..models.layers import init_xavier, sn
from .base import DiscriminatorOutput, Head
from .registry import register_head


@register_head("acgan")
class AuxiliaryClassifier(Head):
    def __init__(self, n_classes: int, feature_dim: int, n_blocks: int,
                 d_aux_weight: float = 1.0, g_aux_weight: float = 1.0):
        super().__init__(n_classes, feature_dim, n_blocks)
        self.d_aux_weight, self.g_aux_weight = float(d_aux_weight), float(g_aux_weight)
        self.linear = sn(init_xavier(nn.Linear(feature_dim, 1)))
        self.classifier = sn(init_xavier(nn.Linear(feature_dim, n_classes)))

    def forward(self, phi, y):
        return DiscriminatorOutput(adv=self.linear(phi).squeeze(1), class_logits=self.classifier(phi))

    def d_aux_loss(self, real, y_real, fake, y_fake):
        ce = F.cross_entropy(real.class_logits.float(), y_real) + F.cross_entropy(fake.class_logits.float(), y_fake)
        return self.d_aux_weight * ce

    def g_aux_loss(self, fake, y_fake):
        return self.g_aux_weight * F.cross_entropy(fake.class_logits.float(), y_fake)
