"""KID's standard error against the truth: many independent draws of both sets from known distributions, the
spread of their KIDs (what a rerun with new images would give) compared with the standard error each single
draw reports. The old error (subset spread / sqrt(100)) read about 10x too small here."""
import numpy as np
import pytest
import torch

from cgan_bench.metrics import compute
from cgan_bench.metrics.kid_error import kid_standard_error, kid_unit, resampling_size, with_floor_kid_error

DIM = 8


def draws(n_fake: int, n_real: int, shift: float, reps: int = 150):
    """(KID, reported s.e., subset spread) of each of `reps` independent draws; fake = N(shift, (1+shift)^2)."""
    g = torch.Generator().manual_seed(7)
    kids, errors, spreads = [], [], []
    for _ in range(reps):
        real = torch.randn(n_real, DIM, generator=g, dtype=torch.float64)
        fake = torch.randn(n_fake, DIM, generator=g, dtype=torch.float64) * (1 + shift) + shift
        k = compute.kid_with_error(fake, real, 1000)
        kids.append(k["mean"])
        errors.append(k["se"])
        spreads.append(k["std"])
    return np.array(kids), np.array(errors), np.array(spreads)


@pytest.mark.slow
@pytest.mark.parametrize("n_fake,n_real,upper", [(300, 300, 1.25), (200, 600, 1.5), (600, 200, 2.5)])
def test_the_standard_error_covers_the_spread_of_independent_draws(n_fake, n_real, upper):
    """Equal sets: about the true error. Unequal: above it, by up to ~2x (the bound takes the worse set)."""
    kids, errors, spreads = draws(n_fake, n_real, shift=0.3)
    true_se = kids.std(ddof=1)  # 150 draws: itself known to about 6%
    assert 0.85 < errors.mean() / true_se < upper
    assert (spreads / 10).mean() / true_se < 0.2  # the old rule, subset spread / sqrt(100): 8-23x too small here


@pytest.mark.slow
def test_on_identical_distributions_the_error_errs_on_the_safe_side():
    kids, errors, _ = draws(300, 300, shift=0.0)
    assert errors.mean() >= kids.std(ddof=1)  # real vs real: a degenerate U-statistic, smaller true error


def test_the_error_by_hand():
    # equal sets of n and subsets of n/2: subset_std * sqrt(1 + 1/100)
    assert kid_standard_error(2.0, 400, 400, 200, 2.0, 200) == pytest.approx(2.0 * np.sqrt(1.01))
    # the whole 200-image fake set in every subset: the probe (subsets of 100) measures the sets' noise
    assert resampling_size(200, 600, 200) == 100
    assert kid_standard_error(1.0, 200, 600, 200, 3.0, 100) == pytest.approx(np.sqrt(9.0 * 1.0 + 1.0 / 100))


def test_kid_is_shown_times_1000_only_in_inception_space():
    assert kid_unit("inception") == (1000.0, "KID ×10³")
    assert kid_unit("classifier") == kid_unit("digit_channels") == (1.0, "KID")


def test_a_floor_recorded_with_the_old_error_is_converted_exactly():
    legacy = {"floor_kid_mean": -0.4, "floor_kid_sem": 0.02, "floor_kid_subset_size": 1000, "floor_n_a": 5000,
              "floor_n_b": 5000, "floor_fid": 7.5}
    new = with_floor_kid_error(legacy)
    assert "floor_kid_sem" not in new and new["floor_fid"] == 7.5
    assert new["floor_kid_std"] == pytest.approx(0.2)  # sem was std / sqrt(100)
    assert new["floor_kid_se"] == pytest.approx(0.2 * np.sqrt(1000 / 4000 + 0.01))
    whole = with_floor_kid_error({**legacy, "floor_n_b": 1000})  # subsets held all 1000 of one set
    assert np.isnan(whole["floor_kid_se"]) and whole["floor_kid_std"] == pytest.approx(0.2)
    assert with_floor_kid_error(new) == new  # already converted: unchanged
    unknown = {k: v for k, v in legacy.items() if k != "floor_kid_subset_size"}
    assert with_floor_kid_error(unknown) == unknown  # the subset size unknown: left as it is
    # runs older still: the size was min(eval.kid_subset_size, both sets), known where at most half of each
    assert with_floor_kid_error(unknown, 1000)["floor_kid_se"] == pytest.approx(new["floor_kid_se"])
    assert np.isnan(with_floor_kid_error({**unknown, "floor_n_a": 1200, "floor_n_b": 1100}, 1000)["floor_kid_se"])


def test_sets_too_small_to_resample_give_no_error_and_no_crash():
    g = torch.Generator().manual_seed(3)
    for n_fake, n_real in ((3, 50), (2, 50), (2, 2), (50, 3)):
        fake, real = torch.randn(n_fake, DIM, generator=g), torch.randn(n_real, DIM, generator=g)
        k = compute.kid_with_error(fake, real, 1000)
        assert np.isnan(k["se"]) and np.isfinite(k["mean"]), (n_fake, n_real)
    assert resampling_size(3, 50, 1000) is None and resampling_size(4, 50, 1000) == 2
    # a floor of a 5-image split for a 10 vs 2 protocol: the 2-image fake side kept, its KID without an error
    floor = compute.noise_floor(torch.randn(5, DIM, generator=g), torch.arange(5) % 2, 2, 10, 2, 1000)
    assert (floor["floor_n_a"], floor["floor_n_b"]) == (3, 2) and np.isnan(floor["floor_kid_se"])
