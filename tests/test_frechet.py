"""The Fréchet distance by symmetric eigendecompositions (metrics/frechet.py) against torch-fidelity's own value
and against the closed form for diagonal covariances."""
import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

from cgan_bench.metrics.frechet import fid, frechet_distance, sqrt_psd, statistics


def correlated(n: int, d: int, seed: int, scale: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64) * scale
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + torch.randn(d, generator=g) * 0.3


def torch_fidelity_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    return fid_statistics_to_metric(statistics(a), statistics(b), verbose=False)[KEY_METRIC_FID]


@pytest.mark.parametrize("n_a, n_b, d, rel", [(2000, 1500, 256, 1e-10), (300, 2000, 256, 1e-8), (100, 80, 256, 1e-7)])
def test_equals_torch_fidelity_full_rank_and_rank_deficient(n_a, n_b, d, rel):
    """Full-rank covariances, then one and then both rank-deficient (fewer samples than dimensions, as for a
    small class in Inception space). With both deficient, ~170 of the product's eigenvalues are 0 up to rounding,
    and a square root turns a rounding error e into sqrt(e): both methods are that far from the exact value."""
    a, b = correlated(n_a, d, 0), correlated(n_b, d, 1, scale=0.12)
    expected = torch_fidelity_fid(a, b)
    assert fid(a, b) == pytest.approx(expected, rel=rel)
    assert fid(b, a) == pytest.approx(expected, rel=rel)


def test_a_cached_root_gives_the_same_distance():
    a, b = correlated(1000, 128, 2), correlated(900, 128, 3)
    sa, sb = statistics(a), statistics(b)
    assert frechet_distance(sa, sb, root_1=sqrt_psd(sa["sigma"])) == frechet_distance(sa, sb)
    root = sqrt_psd(sa["sigma"])
    torch.testing.assert_close(root @ root, torch.from_numpy(sa["sigma"]), rtol=1e-9, atol=1e-12)


def test_diagonal_covariances_match_the_closed_form():
    """Independent check: for diagonal covariances d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(4)
    var_a, var_b = rng.uniform(0.1, 3.0, 50), rng.uniform(0.1, 3.0, 50)
    mu_a, mu_b = rng.normal(size=50), rng.normal(size=50)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    got = frechet_distance({"mu": mu_a, "sigma": np.diag(var_a)}, {"mu": mu_b, "sigma": np.diag(var_b)})
    assert got == pytest.approx(expected, rel=1e-12)


def test_identical_sets_are_at_zero_and_mismatched_dimensions_are_refused():
    a = correlated(500, 64, 5)
    assert abs(fid(a, a)) < 1e-9
    with pytest.raises(ValueError, match="different dimensions"):
        fid(a, correlated(500, 32, 6))


@pytest.mark.slow
def test_equals_torch_fidelity_at_inception_size():
    """2048-d, the Inception pool features (torch-fidelity's eigvals path: ~2 s on 2 cores)."""
    a, b = correlated(4000, 2048, 7, scale=0.03), correlated(3000, 2048, 8, scale=0.03)
    assert fid(a, b) == pytest.approx(torch_fidelity_fid(a, b), rel=1e-8)
