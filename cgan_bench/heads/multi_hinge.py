"""MHingeGAN, a multi-class hinge loss for conditional GANs (Kavalerov, Czaja & Chellappa, WACV 2021, arXiv:1912.04216).

Follows the WACV version and the authors' code for it (github.com/ilyakava/gan, TF-GAN fork: critic_type `acgan`,
tensorflow_gan/python/losses/losses_impl.py `achingegan_*_loss`, and the published recipe
examples/tpu/imagenet128.sh): a projection discriminator, adv = linear(phi) + <embed(y), phi> (as this project's
`projection` head: bias-free SN linear, SN embedding) trained with the run's adversarial loss, plus an SN linear
classifier with K logits on the same phi(x) trained with the Crammer-Singer multi-class hinge

    MH_m(l, y) = mean_i max(0, m + max_{k != y_i} l_ik - l_iy_i)

    D:  adversarial + d_aux_weight * (MH_1(C(x_real), y_real) + MH_1(C(x_fake), y_fake))
    G:  adversarial + g_aux_weight * MH_g_margin(C(x_fake), y_fake)

Defaults from that recipe: d_aux_weight 1.0, g_aux_weight 0.1, generator margin 1.0 (`generator_margin_size`).
The earlier arXiv version ("cGANs with Multi-Hinge Loss"; StudioGAN's MHGAN and ilyakava/BigGAN-PyTorch) is a
different model: one K+1-way classifier replaces the real/fake output, fakes are hinged towards class K+1, and G adds
feature matching; it is not this head (the training loop's generator hook sees no real batch for feature matching).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import init_xavier, sn
from .base import DiscriminatorOutput, Head
from .registry import register_head


def crammer_singer_hinge(logits: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """mean_i relu(margin + max_{k != y_i} logits[i, k] - logits[i, y_i]), in fp32."""
    logits = logits.float()
    target = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return F.relu(margin + wrong - target).mean()


@register_head("multi_hinge")
class MultiHinge(Head):
    def __init__(self, n_classes: int, feature_dim: int, n_blocks: int, d_aux_weight: float = 1.0,
                 g_aux_weight: float = 0.1, g_margin: float = 1.0):
        super().__init__(n_classes, feature_dim, n_blocks)
        if n_classes < 2:
            raise ValueError(f"head multi_hinge needs at least 2 classes, got {n_classes}")
        self.d_aux_weight, self.g_aux_weight, self.g_margin = float(d_aux_weight), float(g_aux_weight), float(g_margin)
        self.linear = sn(init_xavier(nn.Linear(feature_dim, 1, bias=False)))
        self.embed = sn(init_xavier(nn.Embedding(n_classes, feature_dim)))
        self.classifier = sn(init_xavier(nn.Linear(feature_dim, n_classes)))

    def forward(self, phi, y):
        adv = self.linear(phi).squeeze(1) + (self.embed(y) * phi).sum(dim=1)
        return DiscriminatorOutput(adv=adv, class_logits=self.classifier(phi))

    def d_aux_loss(self, real, y_real, fake, y_fake):
        return self.d_aux_weight * (crammer_singer_hinge(real.class_logits, y_real)
                                    + crammer_singer_hinge(fake.class_logits, y_fake))

    def g_aux_loss(self, fake, y_fake):
        return self.g_aux_weight * crammer_singer_hinge(fake.class_logits, y_fake, self.g_margin)
