"""TAC-GAN, Twin Auxiliary Classifiers GAN (Gong, Xu, Li, Tao, Batmanghelich & Zhang, NeurIPS 2019, arXiv:1907.02690).

AC-GAN's generator term CE(C(G(z, y)), y), with the classifier C fitted to real data, makes G minimise the
conditional entropy of its own samples besides the divergence: it drifts to easily classified images. TAC adds a
twin classifier C_mi on the same phi(x), fitted to G's samples and the labels they were generated with; G *maximises*
its cross-entropy, which cancels that entropy term. Both classifiers are SN linear layers on phi(x), next to the
adversarial linear(phi) (no projection term).

Losses, as in the authors' code (batmanlab/twin-auxiliary-classifiers-gan, TAC-BigGAN/train_fns.py, loss_type
Twin_AC) and in StudioGAN (AC + aux_cls_type TAC, src/worker.py):
    D:  adversarial + cls_weight * CE(C(x_real), y_real) + twin_d_weight * CE(C_mi(x_fake), y_fake)
    G:  adversarial + cls_weight * CE(C(x_fake), y_fake) - twin_g_weight * CE(C_mi(x_fake), y_fake)
C is trained on REAL data only (TAC's form; this project's `acgan` head follows Odena et al. and trains C on real
and fake). Defaults are 1 (the authors' AC_weight 1.0 for CIFAR; StudioGAN's cond_lambda = tac_dis_lambda =
tac_gen_lambda = 1.0); the authors use one weight for all three terms, StudioGAN splits the twin weight into a D and
a G value, as here. `class_logits` holds C's logits, `twin_logits` C_mi's.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import init_xavier, sn
from .base import DiscriminatorOutput, Head
from .registry import register_head


@dataclass
class TwinOutput(DiscriminatorOutput):
    """DiscriminatorOutput plus the twin classifier's logits (B, K)."""

    twin_logits: torch.Tensor | None = None


@register_head("tac")
class TwinAuxiliaryClassifier(Head):
    def __init__(self, n_classes: int, feature_dim: int, n_blocks: int, cls_weight: float = 1.0,
                 twin_d_weight: float = 1.0, twin_g_weight: float = 1.0):
        super().__init__(n_classes, feature_dim, n_blocks)
        self.cls_weight, self.twin_d_weight, self.twin_g_weight = float(cls_weight), float(twin_d_weight), float(
            twin_g_weight)
        self.linear = sn(init_xavier(nn.Linear(feature_dim, 1)))
        self.classifier = sn(init_xavier(nn.Linear(feature_dim, n_classes)))
        self.twin = sn(init_xavier(nn.Linear(feature_dim, n_classes)))

    def forward(self, phi, y):
        return TwinOutput(adv=self.linear(phi).squeeze(1), class_logits=self.classifier(phi),
                          twin_logits=self.twin(phi))

    def d_aux_loss(self, real, y_real, fake, y_fake):
        return (self.cls_weight * F.cross_entropy(real.class_logits.float(), y_real)
                + self.twin_d_weight * F.cross_entropy(fake.twin_logits.float(), y_fake))

    def g_aux_loss(self, fake, y_fake):
        return (self.cls_weight * F.cross_entropy(fake.class_logits.float(), y_fake)
                - self.twin_g_weight * F.cross_entropy(fake.twin_logits.float(), y_fake))
