"""How many seeds a verdict needs. "No clear difference" after 3 seeds can mean that the heads are equal or
that 3 seeds cannot tell; the power of the report's own paired test says which. For each head-vs-projection
row: the smallest difference the test would detect with 80% probability at this many seeds and this
seed-to-seed spread (`detectable`), and the seeds (pairs) it would need to detect the observed difference
(`pairs_80`), a planning number from a pilot: the spread of a few differences is itself uncertain.

The test is the report's (tables.paired_vs_projection): a two-sided paired t-test, Holm-corrected over the m
heads of a family. Holm's adjusted p is at most m times the raw p, so a raw p < alpha / m always gives a
verdict: power is computed at alpha / m (Bonferroni), an upper bound on the seeds Holm needs. Where every
difference is the same (zero variance) the report uses the exact sign-flip test, p = 2 / 2^n."""
import math

from scipy import optimize, stats

POWER = 0.8
MOST_PAIRS = 1000  # beyond this, "more than 1000": no seed budget resolves the difference


def paired_t_power(dz: float, n: int, alpha: float) -> float:
    """P(two-sided one-sample t-test on n paired differences rejects at level alpha) where the true mean
    difference is dz standard deviations of a difference (the noncentral t distribution)."""
    if n < 2:
        return float("nan")
    df, shift = n - 1, abs(dz) * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    # P(T > c) + P(T < -c), the second as P(-T > c) with -T ~ nct(df, -shift): scipy's nct.cdf far in the lower
    # tail can return NaN, its sf at -shift does not
    return float(stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift))


def detectable_difference(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest |mean difference| that n pairs with differences of standard deviation sd detect with
    probability `power` (the minimum detectable difference, in sd's units); NaN without a spread to scale."""
    if n < 2 or not sd > 0 or math.isnan(sd):
        return float("nan")
    high = 1.0
    while paired_t_power(high, n, alpha) < power:
        high *= 2
    dz = optimize.brentq(lambda d: paired_t_power(d, n, alpha) - power, 0.0, high, xtol=1e-10)
    return dz * sd


def pairs_needed(mean: float, sd: float, alpha: float, power: float = POWER, most: int = MOST_PAIRS) -> float:
    """The fewest pairs (seeds) whose test detects a true mean difference `mean` with probability `power`,
    taking sd as the differences' standard deviation; inf where more than `most` would be needed (or the
    difference is 0), NaN without numbers. Zero spread: the sign-flip test's fewest n with 2 / 2^n < alpha."""
    if math.isnan(mean) or math.isnan(sd):
        return float("nan")
    if mean == 0:
        return math.inf
    if sd == 0:
        n = max(2, math.floor(math.log2(2 / alpha)) + 1)
        return n if n <= most else math.inf
    dz = abs(mean) / sd
    if paired_t_power(dz, most, alpha) < power:
        return math.inf
    low, high = 1, most  # power grows with n: the first n reaching it, by bisection
    while high - low > 1:
        mid = (low + high) // 2
        if paired_t_power(dz, mid, alpha) >= power:
            high = mid
        else:
            low = mid
    return max(high, 2)
