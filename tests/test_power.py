"""How many seeds a verdict needs (report/power.py): the power of the report's paired t-test checked against a
simulation of scipy's own test, the sign-flip count against the report's verdicts, and the report's columns
and cost-of-a-seed line parsed from a report built from run directories written here."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cgan_bench.report import power
from cgan_bench.report.build import build_report
from cgan_bench.report.tables import paired_vs_projection
from test_verdicts import frame, table, write_run

DRAWS = 40_000  # simulated studies per check: the simulated power's s.e. is at most 0.0025


def simulated_power(mean: float, sd: float, n: int, alpha: float, seed: int = 0) -> float:
    """The share of simulated studies (n normal paired differences) that scipy's one-sample t-test rejects."""
    d = np.random.default_rng(seed).normal(mean, sd, size=(DRAWS, n))
    return float((stats.ttest_1samp(d, 0.0, axis=1).pvalue < alpha).mean())


@pytest.mark.parametrize("n, alpha", [(3, 0.05), (5, 0.05 / 7), (12, 0.05 / 3)])
def test_the_detectable_difference_is_found_with_80_percent_probability(n, alpha):
    sd = 3.0
    mdd = power.detectable_difference(sd, n, alpha)
    assert simulated_power(mdd, sd, n, alpha) == pytest.approx(0.80, abs=0.012)
    assert simulated_power(0.8 * mdd, sd, n, alpha) < 0.75  # a smaller difference is missed more often


def test_more_seeds_detect_smaller_differences():
    found = [power.detectable_difference(1.0, n, 0.05) for n in (2, 3, 5, 10, 40)]
    assert found == sorted(found, reverse=True)
    # many seeds: the normal approximation (z_{1-alpha/2} + z_{0.8}) / sqrt(n)
    assert found[-1] == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / math.sqrt(40), rel=0.03)
    assert math.isnan(power.detectable_difference(1.0, 1, 0.05))  # one pair: no test
    assert math.isnan(power.detectable_difference(0.0, 5, 0.05))  # no spread to scale by


@pytest.mark.parametrize("mean, sd, alpha", [(1.0, 2.0, 0.05 / 7), (0.5, 0.4, 0.05), (3.0, 10.0, 0.05 / 2)])
def test_pairs_needed_is_the_fewest_seeds_reaching_80_percent(mean, sd, alpha):
    n = power.pairs_needed(mean, sd, alpha)
    assert simulated_power(mean, sd, n, alpha, seed=1) >= 0.80 - 0.012
    assert simulated_power(mean, sd, n - 1, alpha, seed=2) < 0.80 + 0.012
    assert power.pairs_needed(-mean, sd, alpha) == n  # two-sided


def test_pairs_needed_beyond_any_budget_or_without_numbers():
    assert power.pairs_needed(0.0, 1.0, 0.05) == math.inf
    assert power.pairs_needed(0.01, 1.0, 0.05) == math.inf  # d_z 0.01: ~80,000 pairs
    assert math.isnan(power.pairs_needed(float("nan"), 1.0, 0.05))


@pytest.mark.parametrize("heads", [2, 4])
def test_equal_differences_need_the_sign_flip_count_the_report_itself_gives_a_verdict_at(heads):
    """Zero spread: the report uses the exact sign-flip test; pairs_needed's count is where its verdict appears."""
    family = [f"h{i}" for i in range(heads - 1)]
    alpha = 0.05 / len(family)
    needed = power.pairs_needed(-3.0, 0.0, alpha)
    for n, verdict in ((needed - 1, "no clear difference"), (needed, "worse than projection")):
        values = {"projection": [90.0 + s for s in range(n)], **{h: [87.0 + s for s in range(n)] for h in family}}
        rows = paired_vs_projection(frame(values, "modes_covered_mean"), metrics=("modes_covered_mean",))
        assert set(rows["verdict"]) == {verdict}, n
        assert set(rows["pairs_80"]) == {needed}


def test_the_report_shows_each_rows_power_and_the_cost_of_a_seed(tmp_path):
    heads, seeds = ("projection", "concat", "acgan", "none"), range(5)
    for head in heads:
        for seed in seeds:
            write_run(tmp_path / "sweep", head, seed)
            status = tmp_path / "sweep" / f"{head}_s{seed}" / "status.json"
            status.write_text(json.dumps({**json.loads(status.read_text()), "wall_s": 60.0 * (seed + 1)}))
    md = build_report(tmp_path / "sweep", tmp_path / "report", "power test").read_text()
    paired = table(md, "Each head against projection")
    assert {"detectable", "pairs_80"} <= set(paired.columns)
    header = next(i for i, x in enumerate(md.splitlines()) if x.startswith("|") and "pairs_80" in x)
    names = [c.strip() for c in md.splitlines()[header].strip("|").split("|")]
    rule = [c.strip() for c in md.splitlines()[header + 1].strip("|").split("|")]
    assert rule[names.index("pairs_80")].endswith(":") and rule[names.index("detectable")].endswith(":")  # numbers
    fid = paired[paired["metric"] == "FID"].set_index("head")
    for head in ("concat", "acgan", "none"):
        row = fid.loc[head]
        mean, dz = float(row["difference"]), float(row["effect_dz"])
        sd = mean / dz
        assert float(row["detectable"]) == pytest.approx(power.detectable_difference(sd, 5, 0.05 / 3), rel=2e-3)
        needed = power.pairs_needed(mean, sd, 0.05 / 3)
        assert row["pairs_80"] == ("> 1000" if needed == math.inf else str(needed))
    # seeds 0..4 trained 60..300 s: mean 180 s = 3.0 min; 4 heads -> 12.0 min for one more seed of each
    line = next(x for x in md.splitlines() if x.startswith("- stacked_digits: one more seed"))
    assert "all 4 heads costs 4 runs x 3.0 min (training with its curve evaluations: per head the mean of its " \
        "runs, 20 in all;" in line
    assert line.endswith("= 12.0 min.")
    # with each run's final evaluation (eval_s, 30 s) recorded, it is counted too: 3.5 min per run, 14.0 min
    for head in heads:
        for seed in seeds:
            metrics = tmp_path / "sweep" / f"{head}_s{seed}" / "metrics.jsonl"
            lines = [json.loads(x) for x in metrics.read_text().splitlines()]
            metrics.write_text("".join(json.dumps({**x, "eval_s": 30.0}) + "\n" for x in lines))
    md = build_report(tmp_path / "sweep", tmp_path / "report2", "power test").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- stacked_digits: one more seed"))
    assert "4 runs x 3.5 min (training with its curve evaluations and the final evaluation: per head" in line
    assert line.endswith("= 14.0 min.")
    # the whole job's time (status.json total_wall_s) where every run recorded it: 2.4 s each, as 2.4 s (not "2 s")
    for head in heads:
        for seed in seeds:
            status = tmp_path / "sweep" / f"{head}_s{seed}" / "status.json"
            status.write_text(json.dumps({**json.loads(status.read_text()), "total_wall_s": 2.4}))
    md = build_report(tmp_path / "sweep", tmp_path / "report3", "power test").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- stacked_digits: one more seed"))
    assert "4 runs x 2.4 s (the whole job: per head the mean of its runs, 20 in all;" in line
    assert line.endswith("= 9.6 s.")


def test_a_one_seed_sweep_has_no_power_numbers():
    rows = paired_vs_projection(frame({"projection": [40.0], "concat": [44.0]}, "fid"), metrics=("fid",))
    assert math.isnan(rows.iloc[0]["detectable"]) and math.isnan(rows.iloc[0]["pairs_80"])
    assert isinstance(rows, pd.DataFrame) and rows.iloc[0]["verdict"] == "one seed: no test"


def test_differences_equal_up_to_rounding_get_the_sign_flip_numbers_not_a_zero_detectable():
    """1.0 apart on every seed, up to floating-point rounding: the t-test's sd is ~1e-16, which made `detectable`
    0.000 on a row whose test cannot reject at all with 3 seeds (sign-flip p = 0.25)."""
    rows = paired_vs_projection(frame({"projection": [0.1, 1.2, 2.3], "concat": [1.1, 2.2, 3.3]}, "fid"),
                                metrics=("fid",))
    row = rows.iloc[0]
    assert row["p_holm"] == pytest.approx(0.25) and row["verdict"] == "no clear difference"
    assert math.isnan(row["detectable"])
    assert row["pairs_80"] == 6  # 2 / 2^6 < 0.05 <= 2 / 2^5


def test_a_head_with_one_seed_does_not_enlarge_the_family_of_the_power():
    """Holm runs over the heads with a test (two or more pairs): a one-seed head must not halve alpha."""
    values = {"projection": [40.0, 42.0, 41.0, 43.0], "concat": [45.0, 46.5, 45.8, 48.1], "tac": [40.0]}
    rows = paired_vs_projection(frame(values, "fid"), metrics=("fid",)).set_index("head")
    d = np.array(values["concat"]) - np.array(values["projection"])
    mean, sd = d.mean(), d.std(ddof=1)
    assert rows.loc["concat", "pairs_80"] == power.pairs_needed(mean, sd, 0.05)
    assert rows.loc["concat", "detectable"] == pytest.approx(power.detectable_difference(sd, 4, 0.05))
    assert math.isnan(rows.loc["tac", "pairs_80"])
