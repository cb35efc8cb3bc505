"""Small building blocks shared by the generator and the discriminator trunk."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm


@torch.library.custom_op("cgan_bench::sn_power_iteration", mutates_args=("u", "v"))
def sn_power_iteration(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_iterations: int,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's `_SpectralNorm._power_method` (u and v updated in place), returning copies of the new u and v.

    An opaque op, so that torch.compile keeps the copies that sigma's backward needs apart from the buffers:
    traced inline, the compiled backward saved the buffer itself, and the second D forward of a D step
    (real, then fake) bumped its version before the backward ran ("modified by an inplace operation")."""
    for _ in range(n_iterations):
        u = F.normalize(torch.mv(weight_mat, v), dim=0, eps=eps, out=u)
        v = F.normalize(torch.mv(weight_mat.H, u), dim=0, eps=eps, out=v)
    return u.clone(), v.clone()


@sn_power_iteration.register_fake
def _(weight_mat, u, v, n_iterations, eps):
    return torch.empty_like(u), torch.empty_like(v)


class _Float32SpectralNorm(_SpectralNorm):
    """PyTorch's spectral-norm parametrization, with the power iteration kept in fp32 under bf16 autocast and
    made safe for torch.compile. Eager, it runs torch's own code unchanged; compiled, the same arithmetic
    goes through `sn_power_iteration` (tests check both give the same weights)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=weight.device.type, enabled=False):
            weight = weight.float()
            if not torch.compiler.is_compiling() or weight.ndim == 1:
                return super().forward(weight)
            weight_mat = self._reshape_weight_to_matrix(weight)
            if self.training:
                u, v = sn_power_iteration(weight_mat.detach(), self._u, self._v, self.n_power_iterations, self.eps)
            else:
                u, v = self._u.clone(), self._v.clone()
            return weight / torch.vdot(u, torch.mv(weight_mat, v))


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
