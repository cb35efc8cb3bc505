"""KID's standard error and the unit it is shown in.

torch-fidelity reports KID as the mean and spread of 100 subset values; the spread of overlapping subsets is
not the uncertainty of their mean, and KID's size depends on the feature space, so both need a rule.
"""
import math

KID_SUBSETS = 100  # subsets per KID (torch-fidelity's default)


def resampling_size(n_fake: int, n_real: int, subset_size: int) -> int | None:
    """A subset size whose subsets resample both sets: at most half of each (a subset holding a whole set, or
    most of it, shows none of that set's sampling noise in its spread); None where a set has under 4 images
    (KID needs subsets of at least 2)."""
    size = min(subset_size, n_fake // 2, n_real // 2)
    return size if size >= 2 else None


def kid_standard_error(subset_std: float, n_fake: int, n_real: int, subset_size: int, probe_std: float,
                       probe_size: int, subsets: int = KID_SUBSETS) -> float:
    """The standard error of the reported KID (the mean of `subsets` values on subsets of `subset_size`) over new
    draws of both sets. `probe_std`: the spread of subsets of `probe_size` = resampling_size(...) (the same
    subsets where `subset_size` is already at most half of each set).

    subset_std / sqrt(subsets) understates it several-fold: overlapping subsets of two fixed sets show only their
    own resampling noise. To leading order KID's variance is a/n_fake + b/n_real; subsets of p from each set
    spread by a(1/p - 1/n_fake) + b(1/p - 1/n_real), so whatever a and b are
        var(the sets) <= probe_std^2 * max(p / (n_fake - p), p / (n_real - p))
    and the subsets' own resampling adds subset_std^2 / subsets. Checked by simulation against independent
    draws (tests/test_kid_error.py): with sets of one size within ~5% of the true error. With sets of different
    sizes it can be up to sqrt((n_large - p) / (n_small - p)) above it, as the bound charges all the noise to
    the worse-sampled set (1.6x for 100 vs 1400 images, more for a collapsed generator); on identical
    distributions (real vs real: a degenerate U-statistic, whose true error is smaller) ~2-3x. It errs to the
    safe side on purpose."""
    p = probe_size
    sets = probe_std ** 2 * max(p / (n_fake - p), p / (n_real - p))
    return float(math.sqrt(sets + subset_std ** 2 / subsets))


KID_UNITS = {"inception": (1000.0, "KID ×10³")}  # the literature's unit in Inception space


def kid_unit(feature_space: str) -> tuple[float, str]:
    """(scale, label) KID is shown in: ×10³ in Inception space as in the literature; raw in the harness's
    classifier spaces, whose larger features give KIDs of 10 to 10³ (×10³ printed them as 251,802)."""
    return KID_UNITS.get(feature_space, (1.0, "KID"))


def with_floor_kid_error(floor: dict, requested_subset_size: int | None = None) -> dict:
    """A floor recorded before `floor_kid_se` (cached files, old runs' metrics lines) carries `floor_kid_sem`,
    defined then as subset_std / sqrt(100): the subsets' spread is recovered exactly, and where those subsets
    resampled both sets (at most half of each) the standard error is computed as today. Where they did not,
    the old spread cannot give one: the error is left out (NaN). Runs older still did not record the subset
    size: it was min(requested, both sets) (`requested_subset_size`: the run's eval.kid_subset_size), known
    wherever that is at most half of each set. Anything else is returned as it is."""
    if "floor_kid_se" in floor or not all(k in floor for k in ("floor_kid_sem", "floor_n_a", "floor_n_b")):
        return floor
    n_fake, n_real = int(floor["floor_n_b"]), int(floor["floor_n_a"])
    m = floor.get("floor_kid_subset_size")
    if m is None and requested_subset_size is not None:
        m = min(int(requested_subset_size), n_fake, n_real)
    if m is None:
        return floor
    out = {k: v for k, v in floor.items() if k != "floor_kid_sem"}
    out["floor_kid_std"] = std = float(floor["floor_kid_sem"]) * KID_SUBSETS ** 0.5
    out["floor_kid_se"] = kid_standard_error(std, n_fake, n_real, int(m), std, int(m)) \
        if resampling_size(n_fake, n_real, int(m)) == int(m) else float("nan")  # p <= half of each: n - p >= 2
    return out
