"""Adversarial losses on the discriminator's logits (computed in fp32)."""
import torch
import torch.nn.functional as F


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real.float()).mean() + F.relu(1.0 + fake.float()).mean()


def hinge_g(fake: torch.Tensor) -> torch.Tensor:
    return -fake.float().mean()


def nonsaturating_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real.float()).mean() + F.softplus(fake.float()).mean()


def nonsaturating_g(fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake.float()).mean()


LOSSES = {"hinge": (hinge_d, hinge_g), "nonsaturating": (nonsaturating_d, nonsaturating_g)}
