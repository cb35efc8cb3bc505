"""ReACGAN, Rebooting ACGAN (Kang, Shim, Cho & Park, NeurIPS 2021, arXiv:2111.01118): the data-to-data cross-entropy.

D keeps the adversarial linear(phi) and replaces AC-GAN's softmax classifier by an SN linear projection of phi(x) to
an embedding f (embed_dim, with bias) and SN class proxies v_c (an embedding table); both are L2-normalised onto the
unit hypersphere (the paper's first cure). With s_ij = f_i . f_j and N(i) = {j : y_j != y_i} (the batch's samples
of other classes: i itself and same-class samples, the "false negatives", are removed), the D2D-CE loss is

    D2D-CE = mean_i -log( exp(min(f_i.v_yi - m_p, 0) / T)
                          / (exp(min(f_i.v_yi - m_p, 0) / T) + sum_{j in N(i)} exp(max(s_ij - m_n, 0) / T)) )

    D:  adversarial + d_aux_weight * D2D-CE(real batch)      (real data only, as in the paper and StudioGAN)
    G:  adversarial + g_aux_weight * D2D-CE(G's batch, by the labels it was generated with)

Defaults: StudioGAN's CIFAR-10/100 ReACGAN configs (temperature T = 0.5, m_p = 0.98, cond_lambda = 0.5 for D and G,
d_embed_dim = 512, normalize_d_embed = True); StudioGAN ties the negative margin to m_n = 1 - m_p (its code adds
m_p - 1 to s_ij), hence m_n = 0.02. Choice: this is the formula above, computed exactly (a log-sum-exp in fp32).
StudioGAN's Data2DataCrossEntropyLoss additionally subtracts each row's largest (detached) s_ij / T from the negative
terms only, "for numerical stability"; that rescales the negatives by exp(-max) and so changes the value and the
gradients, and it is not needed here (every exponent is at most (1 - m_n) / T). The loss is computed per batch: a
sample without any other-class sample in the batch contributes 0. In a multi-process run the batch is the global
batch (every rank's embeddings gathered, gradients flowing back), so N GPUs train what one trains.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import init_xavier, sn
from ..train import distributed
from .base import DiscriminatorOutput, Head
from .registry import register_head


@dataclass
class EmbeddingOutput(DiscriminatorOutput):
    """DiscriminatorOutput plus the L2-normalised sample embeddings f (B, E) and class proxies v_y (B, E), fp32."""

    embed: torch.Tensor | None = None
    proxy: torch.Tensor | None = None


def d2d_ce(embed: torch.Tensor, proxy: torch.Tensor, y: torch.Tensor, temperature: float, pos_margin: float,
           neg_margin: float, batch_embed: torch.Tensor | None = None,
           batch_y: torch.Tensor | None = None) -> torch.Tensor:
    """The data-to-data cross-entropy of unit embeddings (B, E), their class proxies (B, E) and labels (B,),
    averaged over these B samples. Negatives come from `batch_embed`/`batch_y` (default: the same samples): in a
    multi-process run, the whole global batch, so N processes compute what one process computes."""
    embed, proxy = embed.float(), proxy.float()
    batch_embed = embed if batch_embed is None else batch_embed.float()
    batch_y = y if batch_y is None else batch_y
    positive = torch.clamp((embed * proxy).sum(dim=1) - pos_margin, max=0.0) / temperature
    negative = F.relu(embed @ batch_embed.T - neg_margin) / temperature
    negative = negative.masked_fill(y[:, None] == batch_y[None, :], float("-inf"))  # i itself, same-class samples
    logits = torch.cat([positive[:, None], negative], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive).mean()


@register_head("reacgan")
class ReACGAN(Head):
    def __init__(self, n_classes: int, feature_dim: int, n_blocks: int, embed_dim: int = 512,
                 temperature: float = 0.5, pos_margin: float = 0.98, neg_margin: float = 0.02,
                 d_aux_weight: float = 0.5, g_aux_weight: float = 0.5):
        super().__init__(n_classes, feature_dim, n_blocks)
        if temperature <= 0:
            raise ValueError(f"head.temperature must be > 0, got {temperature}")
        self.temperature, self.pos_margin, self.neg_margin = float(temperature), float(pos_margin), float(neg_margin)
        self.d_aux_weight, self.g_aux_weight = float(d_aux_weight), float(g_aux_weight)
        self.linear = sn(init_xavier(nn.Linear(feature_dim, 1)))
        self.embedding = sn(init_xavier(nn.Linear(feature_dim, embed_dim)))
        self.proxies = sn(init_xavier(nn.Embedding(n_classes, embed_dim)))

    def forward(self, phi, y):
        embed = F.normalize(self.embedding(phi).float(), dim=1)
        proxy = F.normalize(self.proxies(y).float(), dim=1)
        return EmbeddingOutput(adv=self.linear(phi).squeeze(1), embed=embed, proxy=proxy)

    def loss(self, out: EmbeddingOutput, y: torch.Tensor) -> torch.Tensor:
        """This rank's samples against the negatives of the whole global batch (train/distributed.py): each rank's
        mean over its slice, averaged over ranks by DDP, is the global batch's loss and gradient."""
        return d2d_ce(out.embed, out.proxy, y, self.temperature, self.pos_margin, self.neg_margin,
                      distributed.gather_batch(out.embed), distributed.gather_batch(y))

    def d_aux_loss(self, real, y_real, fake, y_fake):
        return self.d_aux_weight * self.loss(real, y_real)

    def g_aux_loss(self, fake, y_fake):
        return self.g_aux_weight * self.loss(fake, y_fake)
