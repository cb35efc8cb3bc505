"""Small building blocks shared by the generator and the discriminator trunk."""
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm


class _Float32SpectralNorm(_SpectralNorm):
    """PyTorch's spectral-norm parametrization with the power iteration kept in fp32 under bf16 autocast."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=weight.device.type, enabled=False):
            return super().forward(weight.float())


def sn(module: nn.Module) -> nn.Module:
    """Spectral norm with one power iteration per forward, as in the paper's code (Ip=1).

    Same as torch.nn.utils.parametrizations.spectral_norm (same state-dict keys), but fp32 under autocast."""
    weight = module.weight
    dim = 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    parametrize.register_parametrization(module, "weight", _Float32SpectralNorm(weight, 1, dim, 1e-12))
    return module


def init_xavier(module: nn.Module, gain: float = 1.0) -> nn.Module:
    """GlorotUniform init used by the official Chainer code (gain sqrt(2) in residual convs, 1 elsewhere)."""
    nn.init.xavier_uniform_(module.weight, gain=gain)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


class CategoricalConditionalBatchNorm2d(nn.Module):
    """BatchNorm with per-class gamma/beta and shared (class-independent) batch statistics.

    `y` is either integer labels (B,) or class weights (B, K) that mix the per-class
    parameters; the latter is the paper's category morphing.
    """

    def __init__(self, num_features: int, n_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False, eps=2e-5, momentum=0.1)
        self.gamma = nn.Embedding(n_classes, num_features)
        self.beta = nn.Embedding(n_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():  # (B, K) mixing weights
            gamma, beta = y @ self.gamma.weight, y @ self.beta.weight
        else:
            gamma, beta = self.gamma(y), self.beta(y)
        return self.bn(x) * gamma[:, :, None, None] + beta[:, :, None, None]
