"""What a discriminator head is: where labels enter the trunk, and what comes out of phi(x), y."""
from dataclasses import dataclass, fields

import torch
from torch import nn


@dataclass
class DiscriminatorOutput:
    """Adversarial logit (B,) and, for classifier heads (AC-GAN), class logits (B, K)."""

    adv: torch.Tensor
    class_logits: torch.Tensor | None = None

    def split(self, n: int) -> tuple["DiscriminatorOutput", "DiscriminatorOutput"]:
        """The outputs of the first n samples and of the rest (train.joint_d_forward: one D call on real and
        fake together, split back into the two halves every loss reads). Every field is per sample."""
        first, rest = {}, {}
        for field in fields(self):
            value = getattr(self, field.name)
            first[field.name], rest[field.name] = (None, None) if value is None else (value[:n], value[n:])
        return type(self)(**first), type(self)(**rest)


class Head(nn.Module):
    """Base class of a conditioning head. Defaults describe an unconditional head.

    input_channels: extra channels the head concatenates to the image (trunk input grows by that).
    Subclasses define forward(phi, y) -> DiscriminatorOutput.
    stage / stage_channels: the head's `at_stage` runs before trunk block `stage` (0-based), whose
    input grows by `stage_channels`; `stage=None` means the head never touches the trunk.
    """

    input_channels: int = 0
    stage: int | None = None
    stage_channels: int = 0

    def __init__(self, n_classes: int, feature_dim: int, n_blocks: int):
        super().__init__()
        self.n_classes, self.feature_dim, self.n_blocks = n_classes, feature_dim, n_blocks

    def at_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x

    def at_stage(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return h

    def d_aux_loss(self, real: DiscriminatorOutput, y_real: torch.Tensor,
                   fake: DiscriminatorOutput, y_fake: torch.Tensor) -> torch.Tensor:
        """Extra discriminator loss terms (0 unless the head is a classifier)."""
        return real.adv.new_zeros(())

    def g_aux_loss(self, fake: DiscriminatorOutput, y_fake: torch.Tensor) -> torch.Tensor:
        """Extra generator loss terms (0 unless the head is a classifier)."""
        return fake.adv.new_zeros(())
