"""The report's tables as DataFrames: the paper's layout, the extra metrics, the exact mode counts (stacked
digits) beside their real ceiling, the real-vs-real noise floor, published values, paired differences against
projection with a multiple-comparison correction, and run status. Numbers from different protocols never
share a column; bold marks a best head only when it beats every other head in paired tests (Holm-corrected)."""
import math
from datetime import datetime

import numpy as np
import pandas as pd
from scipy import stats

from ..metrics.kid_error import kid_unit
from . import power

HIGHER_BETTER = {"is_mean", "precision", "recall", "coverage", "class_coverage_mean", "class_accuracy",
                 "modes_covered_mean", "modes_total"}
LOWER_BETTER = {"fid", "kid_mean", "intra_fid_mean", "collapsed_classes", "near_duplicate_rate_mean", "mode_kl_mean",
                "mode_collapsed_classes"}
CLOSEST_TO_ONE = {"diversity_ratio_mean", "density"}
LABELS = {"is_mean": "IS", "fid": "FID", "intra_fid_mean": "intra-FID", "kid_mean": "KID",
          "precision": "precision", "recall": "recall", "density": "density", "coverage": "coverage",
          "class_coverage_mean": "within-class coverage", "diversity_ratio_mean": "diversity ratio",
          "near_duplicate_rate_mean": "near-duplicate rate", "class_accuracy": "class acc.",
          "collapsed_classes": "collapsed classes", "modes_covered_mean": "modes covered per class (of 100)",
          "modes_total": "modes total (of 1000)", "mode_kl_mean": "KL(modes ‖ uniform), nats",
          "mode_collapsed_classes": "mode-collapsed classes"}
DIGITS = {"collapsed_classes": 1, "mode_collapsed_classes": 1, "kid_mean": 2, "modes_total": 1,
          "modes_covered_mean": 1, "fid": 2, "intra_fid_mean": 2}
PAPER_METRICS = ["is_mean", "fid"]
EXTRA_METRICS = ["intra_fid_mean", "kid_mean", "precision", "recall", "density", "coverage", "class_coverage_mean",
                 "diversity_ratio_mean", "near_duplicate_rate_mean", "class_accuracy", "collapsed_classes"]
MODE_METRICS = ["modes_covered_mean", "modes_total", "mode_kl_mean", "class_accuracy", "mode_collapsed_classes"]
VERDICT_METRICS = ["fid", "intra_fid_mean", "is_mean", "kid_mean", "class_accuracy", "modes_covered_mean",
                   "mode_kl_mean"]
ALPHA = 0.05
PROTOCOL_FIELDS = ["feature_space", "real_split", "n_real", "n_fake", "n_generated", "isc_splits"]
HEAD_ORDER = ["input_concat", "concat", "acgan", "projection", "none"]

# Published values we could verify (../shared/reference/paper-facts.md); others are left empty, not guessed.
PAPER_SOURCE = "Miyato & Koyama, ICLR 2018 (CIFAR-10: paper Table 3 via paperswithcode; ImageNet: authors' README, 450K iterations)"
PAPER_VALUES = pd.DataFrame([
    {"dataset": "cifar10", "head": "projection", "IS": 8.62, "FID": 17.5, "intra-FID": None},
    {"dataset": "imagenet128", "head": "projection", "IS": 29.7, "FID": None, "intra-FID": 103.1},
    {"dataset": "imagenet128", "head": "concat", "IS": 21.1, "FID": None, "intra-FID": 141.2},
])


def unit(metric: str, space: str | None = None) -> tuple[float, str]:
    """(scale, label) a metric is shown in: its LABELS name, except KID, whose unit depends on the feature space
    (×10³ in Inception space, raw in the classifier spaces: metrics.kid_error.kid_unit)."""
    return kid_unit(space) if metric == "kid_mean" and space is not None else (1.0, LABELS[metric])


def column_spaces(done: pd.DataFrame) -> dict[str, str]:
    """column -> its feature space (one per column: a column group is one protocol)."""
    return done.groupby("column")["feature_space"].first().to_dict() if "feature_space" in done else {}


def head_sort_key(heads: pd.Series) -> pd.Series:
    return heads.map(lambda h: (HEAD_ORDER.index(h) if h in HEAD_ORDER else len(HEAD_ORDER), h))


def completed(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "fid" not in runs:
        return runs.iloc[0:0]
    return runs[(runs["state"] == "completed") & runs["fid"].notna()].copy()


def one_run_per_seed(done: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Each (column, head, seed) counted once. A seed can have completed twice in one sweep folder (sweeps from
    before job folders were named by their settings numbered them, so a longer seed list trained finished seeds
    again in new folders; or a run copied in); counted twice, it would pass for more seeds and pair with itself.
    Keeps the newest run (status.json's `updated`, then the job number a numbered folder starts with, then the
    folder name) and returns one line per repeated seed naming the others."""
    if done.empty:
        return done, []
    updated = done["updated"] if "updated" in done else pd.Series(index=done.index, dtype=object)
    number = done["run"].astype(str).str.extract(r"^(\d+)_", expand=False).astype(float)
    order = done.assign(_updated=updated.map(_timestamp), _number=number.fillna(-1.0))
    order = order.sort_values(["_updated", "_number", "run"])
    keys = ["column", "head", "seed"]
    kept = order.drop_duplicates(keys, keep="last")
    lines = []
    for (column, head, seed), g in order.groupby(keys, sort=True, dropna=False):
        if len(g) > 1:
            newest, others = g["run"].iloc[-1], ", ".join(g["run"].iloc[:-1])
            lines.append(f"{column}: {head} seed {_seed_text(seed)} completed {len(g)} times; the tables use "
                         f"{newest} (the newest), not {others}")
    return done.loc[sorted(kept.index)], lines


def _timestamp(updated) -> float:
    """status.json's `updated` as seconds since the epoch: with its UTC offset, or (written before it had one)
    read as this machine's local time; missing or unreadable: -inf (oldest)."""
    try:
        return datetime.fromisoformat(str(updated)).astimezone().timestamp()
    except (TypeError, ValueError, OverflowError, OSError):  # OverflowError/OSError: year 1 or 9999 near the edge
        return float("-inf")


def _seed_text(seed) -> str:
    """A seed as written in the config: 0, not 0.0 (a column with a missing seed is float)."""
    if seed is None or (isinstance(seed, float) and math.isnan(seed)):
        return "(none recorded)"
    return str(int(seed)) if float(seed).is_integer() else str(seed)


def protocol_label(row) -> str:
    n_real = "all" if row["n_real"] is None or (isinstance(row["n_real"], float) and math.isnan(row["n_real"])) \
        else int(row["n_real"])
    return f"{row['feature_space']}, {n_real} real ({row['real_split']}) vs {int(row['n_fake'])} fake"


def with_columns_key(done: pd.DataFrame) -> pd.DataFrame:
    """Column group = dataset, qualified by the protocol when one dataset was evaluated in several ways and by
    the swept setting (`variant`, e.g. `+adam=B`) when runs differ in more than head and seed."""
    done = done.copy()
    if done.empty:
        return done.assign(protocol=pd.Series(dtype=str), column=pd.Series(dtype=str))
    done["protocol"] = done.apply(protocol_label, axis=1)
    n_protocols = done.groupby("dataset")["protocol"].nunique()
    done["column"] = [d if n_protocols[d] == 1 else f"{d} [{p}]" for d, p in zip(done["dataset"], done["protocol"])]
    if "variant" in done:
        done["column"] = [c if not v else f"{c} {v}" for c, v in zip(done["column"], done["variant"].fillna(""))]
    return done


def aggregate(done: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """mean, std and n over seeds for each (column, head, metric)."""
    rows = []
    for (column, head), g in done.groupby(["column", "head"]):
        for m in metrics:
            values = g[m].dropna().astype(float)
            rows.append({"column": column, "head": head, "metric": m, "mean": values.mean() if len(values) else np.nan,
                         "std": values.std(ddof=1) if len(values) > 1 else np.nan, "n": len(values)})
    return pd.DataFrame(rows)


def _score(metric: str, values):
    """Higher = better, for any metric direction."""
    return values if metric in HIGHER_BETTER else -values if metric in LOWER_BETTER else -(values - 1).abs()


def _paired_p(a: pd.Series, b: pd.Series) -> float:
    """Two-sided p of a paired t-test over the seeds both have (Welch's test when they share < 2 seeds); where
    the t statistic is undefined (zero variance) the exact randomisation test's p instead (_constant_p)."""
    common = sorted(set(a.index) & set(b.index))
    if len(common) >= 2:
        return _one_sample_p((a.loc[common] - b.loc[common]).astype(float))
    if len(a) >= 2 and len(b) >= 2:
        a, b = a.astype(float), b.astype(float)
        if _constant(a) and _constant(b):  # Welch's t is +-inf (p = 0) or NaN here
            return 1.0 if a.iloc[0] == b.iloc[0] else _constant_p(len(a), len(b))
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return float("nan")


def _best_heads(done: pd.DataFrame, agg: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(column, head, metric) of the best head by mean where it beats every other head of the column: paired by
    seed against each of the k - 1 others, p < 0.05 for each after Holm's correction over those k - 1
    comparisons, and better in mean. No bold on ties with the runner-up (np.isclose scores, or the same printed
    digits), nor where a comparison has no p-value (too few seeds)."""
    best, spaces = set(), column_spaces(done)
    for (column, metric), g in agg.dropna(subset=["mean"]).groupby(["column", "metric"]):
        if len(g) < 2:
            continue
        ranked = g.assign(score=_score(metric, g["mean"])).sort_values("score", ascending=False)
        top, runner_up = ranked.iloc[0], ranked.iloc[1]
        space = spaces.get(column)
        if np.isclose(top["score"], runner_up["score"]) or \
                fmt(top["mean"], float("nan"), metric, space) == fmt(runner_up["mean"], float("nan"), metric, space):
            continue  # a tie, or a difference the table's digits do not show
        runs = done[done["column"] == column]
        values = {h: _score(metric, runs[runs["head"] == h].set_index("seed")[metric].dropna().astype(float))
                  for h in ranked["head"]}
        winner, others = values[top["head"]], [values[h] for h in ranked["head"].iloc[1:]]
        p = [_paired_p(winner, other) for other in others]
        if any(math.isnan(x) for x in p) or not all(winner.mean() > other.mean() for other in others):
            continue
        if max(holm(p)) < ALPHA:
            best.add((column, top["head"], metric))
    return best


def fmt(mean: float, std: float, metric: str, space: str | None = None) -> str:
    """'mean ± std' in the metric's unit (`space`: the feature space, for KID's) and digits."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    scale = unit(metric, space)[0]
    mean, std = mean * scale, (float("nan") if std is None else std) * scale
    digits = DIGITS.get(metric, 3)
    text = f"{mean:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std:.{digits}f}"
    return text


def metric_table(done: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Rows = heads, columns = (dataset/protocol) x metric, 'mean ± std' over seeds, best per column in bold."""
    if done.empty:
        return pd.DataFrame()
    metrics = [m for m in metrics if m in done and done[m].notna().any()]
    if not metrics:
        return pd.DataFrame()
    agg = aggregate(done, metrics)
    best, spaces = _best_heads(done, agg), column_spaces(done)
    table = {}
    for r in agg.itertuples():
        cell = fmt(r.mean, r.std, r.metric, spaces.get(r.column))
        if cell and (r.column, r.head, r.metric) in best:
            cell = f"**{cell}**"
        table.setdefault(r.head, {})[(r.column, unit(r.metric, spaces.get(r.column))[1])] = cell
    out = pd.DataFrame.from_dict(table, orient="index")
    out = out.reindex(sorted(out.index, key=lambda h: (HEAD_ORDER.index(h) if h in HEAD_ORDER else 99, h)))
    columns = [(c, unit(m, spaces.get(c))[1]) for c in sorted(done["column"].unique()) for m in metrics]
    out = out.reindex(columns=[c for c in columns if c in out.columns])
    seeds = done.groupby(["column", "head"])["seed"].nunique()
    if all(g.nunique() == 1 for _, g in seeds.groupby(level="head")):  # each head has as many seeds in every column
        per_head = seeds.groupby(level="head").first()
        out.insert(0, ("", "seeds"), [int(per_head.get(h, 0)) for h in out.index])
    else:  # e.g. a variant column (train.lr=0.001) with fewer seeds: one seeds column per data column
        for column in reversed(list(dict.fromkeys(c for c, _ in out.columns))):
            at = next(i for i, (c, _) in enumerate(out.columns) if c == column)
            out.insert(at, (column, "seeds"), [int(seeds.get((column, h), 0)) for h in out.index])
    out.index.name = "head"
    return out


def mode_table(done: pd.DataFrame) -> pd.DataFrame:
    """Exact mode counts per head (stacked digits), with the real held-out images' values as a last row."""
    if "modes_covered_mean" not in done or done["modes_covered_mean"].isna().all():
        return pd.DataFrame()  # no dataset with countable modes here (class acc. alone is in the next table)
    table = metric_table(done, MODE_METRICS)
    if table.empty or "real_modes_covered_mean" not in done:
        return table
    ceiling = {("", "seeds"): ""}
    for column, g in done.groupby("column"):
        for m in MODE_METRICS:
            real = f"real_{m}"
            if (column, LABELS[m]) in table.columns and real in g:
                ceiling[(column, LABELS[m])] = fmt(g[real].astype(float).mean(), float("nan"), m)
    table = table.astype(object)
    table.loc["real data (ceiling)"] = pd.Series(ceiling)
    return table.fillna("")


def noise_floor_table(done: pd.DataFrame) -> pd.DataFrame:
    """Real vs real per column: what two disjoint halves of the real data score (computed once per cached
    reference, sized like the protocol where the data allows; see metrics.compute.noise_floor)."""
    if done.empty or "floor_fid" not in done:
        return pd.DataFrame()
    rows, spaces = [], column_spaces(done)
    for column, g in done.groupby("column"):
        first = g.dropna(subset=["floor_fid"])
        if first.empty:
            continue
        f, space = first.iloc[0], spaces.get(column)
        rows.append({"dataset": column, "real vs real (images)": f"{int(f['floor_n_b'])} vs {int(f['floor_n_a'])}",
                     "FID": fmt(f["floor_fid"], float("nan"), "fid"),
                     "intra-FID (class halves)": fmt(f["floor_intra_fid_mean"], float("nan"), "intra_fid_mean"),
                     # no error (a tiny set, an old run's unusable spread): the mean alone
                     f"{unit('kid_mean', space)[1]} ± s.e.": fmt(f["floor_kid_mean"], f.get("floor_kid_se"),
                                                                 "kid_mean", space),
                     # runs from before the floor recorded it: unknown (their subsets may all have been one pair)
                     "KID subset size": (f"{int(f['floor_kid_subset_size'])}" if
                                         pd.notna(f.get("floor_kid_subset_size", float("nan"))) else "")})
    table = pd.DataFrame(rows).fillna("")  # columns of KID in two units: each row fills its own
    return table if (table["KID subset size"] != "").any() else table.drop(columns="KID subset size")


def kid_without_error(floor: pd.DataFrame) -> bool:
    """Whether a row of noise_floor_table shows a KID without its ± (each row fills one KID column)."""
    cells = floor.filter(like="± s.e.").to_numpy().ravel()
    return any(cell and "±" not in cell for cell in cells)


BEST_METRICS = ["fid", "is_mean", "intra_fid_mean"]  # final and best checkpoint side by side


def best_vs_final_table(done: pd.DataFrame) -> pd.DataFrame:
    """The final generator against the best curve checkpoint (eval.best_metric; collect's best_* columns), both
    evaluated with the final protocol, each in its own column: mean ± std over the seeds that kept a best
    checkpoint. Empty where no run kept one (eval.best_metric=null, run directories from before best.pt)."""
    if done.empty or "best_iteration" not in done:
        return pd.DataFrame()
    have = done[done["best_iteration"].notna()]
    rows = []
    for (column, head), g in have.groupby(["column", "head"]):
        row = {"dataset": column, "head": head, "seeds": g["seed"].nunique(),
               "chosen by (curve)": _unique(g["best_metric"])}
        for m in BEST_METRICS:
            if m not in g or f"best_{m}" not in g:
                continue
            for label, key in (("final", m), ("best", f"best_{m}")):
                v = g[key].dropna().astype(float)
                row[f"{LABELS[m]} {label}"] = fmt(v.mean(), v.std(ddof=1) if len(v) > 1 else float("nan"), m)
        it = g["best_iteration"].astype(float)
        row["best iteration"] = f"{it.mean():.0f}" + (f" ± {it.std(ddof=1):.0f}" if len(it) > 1 else "")
        row["of"] = _unique_int(g["total_iterations"])
        row["best = final"] = f"{int(g['best_is_final'].eq(True).sum())} of {len(g)}"
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["dataset", "head"], key=lambda c: head_sort_key(c) if c.name == "head" else c,
                           ignore_index=True)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over one family of comparisons)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [float("nan")] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


FLOOR_OF = {"fid": "floor_fid", "intra_fid_mean": "floor_intra_fid_mean", "kid_mean": "floor_kid_mean",
            "modes_covered_mean": "real_modes_covered_mean", "mode_kl_mean": "real_mode_kl_mean"}


def paired_vs_projection(done: pd.DataFrame, metrics=tuple(VERDICT_METRICS)) -> pd.DataFrame:
    """Each head against projection, paired by seed, one family per (column, metric): the heads' paired
    t-tests, Holm-adjusted; the interval is the simultaneous (Bonferroni) 1 - 0.05 / m interval of the mean
    difference; effect size d_z = mean difference / std of the differences; `reference` is the noise floor
    (real vs real) for FID-type metrics and the real ceiling for mode metrics. `detectable` and `pairs_80`: the
    test's power at alpha / (heads with a test), Bonferroni, a bound on Holm (report/power.py): the smallest
    difference these seeds detect with 80% probability, and the seeds that would detect the observed one."""
    rows, spaces = [], column_spaces(done)
    for column, g in done.groupby("column"):
        base = g[g["head"] == "projection"].set_index("seed")
        if base.empty:
            continue
        others = [(head, h.set_index("seed")) for head, h in g[g["head"] != "projection"].groupby("head")]
        for m in metrics:
            if m not in g or g[m].isna().all():
                continue
            family = []
            for head, h in others:
                seeds = sorted(set(h.index) & set(base.index))
                d = (h.loc[seeds, m].astype(float) - base.loc[seeds, m].astype(float)).dropna()
                if len(d):
                    family.append((head, d))
            if not family:
                continue
            level = 1 - ALPHA / len(family)
            p_raw = [_one_sample_p(d) for _, d in family]
            valid = [p for p in p_raw if not math.isnan(p)]
            tested = ALPHA / max(1, len(valid))  # the power's level: Holm runs over the heads with a test
            p_holm = iter(holm(valid))
            scale, label = unit(m, spaces.get(column))
            reference = g[FLOOR_OF[m]].dropna().astype(float).mean() * scale if FLOOR_OF.get(m) in g else float("nan")
            for (head, d), p in zip(family, p_raw):
                n, mean = len(d), d.mean() * scale
                sd = d.std(ddof=1) * scale if n > 1 else float("nan")
                half = stats.t.ppf(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
                adjusted = next(p_holm) if not math.isnan(p) else float("nan")
                spread = 0.0 if n > 1 and _constant(d) else sd  # equal differences: the sign-flip test's count
                rows.append({"dataset": column, "metric": label, "head": head, "pairs": n,
                             "difference": mean, "ci_low": mean - half, "ci_high": mean + half,
                             "p_holm": adjusted, "effect_dz": mean / sd if sd and sd > 0 else float("nan"),
                             "reference": reference, "detectable": power.detectable_difference(spread, n, tested),
                             "pairs_80": power.pairs_needed(mean, spread, tested) if n > 1 else float("nan"),
                             "verdict": _verdict(m, mean, adjusted, n, reference), "_metric": m})
    return pd.DataFrame(rows)


UNIT_COLUMNS = ("difference", "ci_low", "ci_high", "reference", "detectable")  # in the metric's units
SIGNIFICANT_COLUMNS = ("p_holm", "effect_dz")  # unitless, 4 significant digits


def format_paired(paired: pd.DataFrame) -> pd.DataFrame:
    """The paired table as text: its rows are different metrics, so the columns in a metric's units use that
    metric's digits plus one (one format per metric within a column); p and d_z: 4 significant digits (#.4g)."""
    if paired.empty:
        return paired
    out = paired.drop(columns="_metric").astype(object)
    for i, m in zip(paired.index, paired["_metric"]):
        digits = DIGITS.get(m, 3) + 1
        for c in UNIT_COLUMNS:
            out.at[i, c] = num(paired.at[i, c], f".{digits}f")
        for c in SIGNIFICANT_COLUMNS:
            out.at[i, c] = num(paired.at[i, c], "#.4g")
        out.at[i, "pairs"] = num(paired.at[i, "pairs"], "d")
        out.at[i, "pairs_80"] = pairs_text(paired.at[i, "pairs_80"])
    return out


def seed_cost_lines(done: pd.DataFrame) -> list[str]:
    """What one more seed costs per column: every head runs once more (pairs are by seed), each at the mean wall
    time of its completed runs on the device they ran on: the whole job (total_wall_s: data, caches, training,
    evaluations) where every timed run recorded it, else training with its curve evaluations (wall_s) plus the
    final evaluation (eval_s) where recorded. A head without a recorded time counts at the others' mean."""
    lines = []
    for column, g in done.groupby("column"):
        heads = g["head"].nunique()
        timed = g[g["wall_s"].notna()] if "wall_s" in g else g.iloc[:0]
        if timed.empty:
            continue
        per_run, what = timed["wall_s"].astype(float), "training with its curve evaluations"
        if "total_wall_s" in timed and timed["total_wall_s"].notna().all():
            per_run, what = timed["total_wall_s"].astype(float), "the whole job"
        elif "eval_s" in timed and timed["eval_s"].notna().all():
            per_run, what = per_run + timed["eval_s"].astype(float), what + " and the final evaluation"
        by_head = per_run.groupby(timed["head"]).mean()
        each = by_head.mean()  # the per-run mean over heads (the untimed ones at the others' mean)
        untimed = heads - len(by_head)
        note = f"; {untimed} of the heads recorded no time, counted at the others' mean" if untimed else ""
        lines.append(f"- {column}: one more seed of {'the one head' if heads == 1 else f'all {heads} heads'} costs "
                     f"{heads} run{'s' if heads > 1 else ''} x {duration(each)} ({what}: per head the mean of its "
                     f"runs, {len(timed)} in all{note}; {device_label(timed) or 'device not recorded'}) "
                     f"= {duration(heads * each)}.")
    return ["Cost of a seed:", "", *lines, ""] if lines else []


def duration(seconds: float) -> str:
    """A wall time as people read it: 0.6 s, 42 s, 12.5 min, 3.2 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def pairs_text(needed) -> str:
    """power.pairs_needed as text: a count, "> 1000" where no budget resolves it, empty without a test."""
    if needed == math.inf:
        return f"> {power.MOST_PAIRS}"
    return num(needed, "d")


def num(value, spec: str) -> str:
    """One number as text in `spec` ('.2f', '.4g', 'd'); empty for a missing value; a value that is no number
    as written (a refused run's `seed=abc` in the status table) as it is, not a crash of the whole report."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    try:
        return format(int(value) if spec == "d" else float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def _one_sample_p(d: pd.Series) -> float:
    """Two-sided p that the mean difference is 0: the one-sample t-test; where all differences are equal (zero
    variance: t undefined) the exact sign-flip test's p, 2 / 2**n for n equal non-zero differences, 1.0 for
    all zero; NaN for fewer than 2."""
    if len(d) < 2:
        return float("nan")
    d = d.astype(float)
    if _constant(d):
        return 1.0 if (d == 0).all() else _constant_p(len(d))
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def _constant(x: pd.Series) -> bool:
    """All values equal, up to floating-point rounding (a t statistic of rounding noise is no evidence)."""
    return bool(x.max() - x.min() <= 1e-12 * x.abs().max())


def _constant_p(n: int, n_b: int | None = None) -> float:
    """The exact two-sided randomisation test's p where every value is the same within its group (zero
    variance, the t-test undefined). Paired (n_b None): n equal non-zero differences; of the 2**n sign flips
    only the observed one and its mirror reach the observed |mean|: 2 / 2**n (3 seeds: 0.25, 6: 0.031).
    Unpaired: n values of one constant and n_b of another; of the comb(n + n_b, n) relabellings, the share whose
    |difference of means| reaches the observed one (k of the first value landing in the first group)."""
    if n_b is None:
        return min(1.0, 2.0 / 2 ** n)
    reach = sum(math.comb(n, k) * math.comb(n_b, n - k) for k in range(max(0, n - n_b), n + 1)
                if abs(k * (n + n_b) - n * n) >= n * n_b)
    return min(1.0, reach / math.comb(n + n_b, n))


FLOOR_QUALIFIED = ("fid", "intra_fid_mean")  # biased distances whose real-vs-real value is their noise floor


def _verdict(metric: str, mean: float, p_holm: float, n: int, reference: float = float("nan")) -> str:
    """The paired test's verdict; for FID and intra-FID a significant difference smaller than the real-vs-real
    floor says so (consistent across seeds, but within what two halves of the real data differ by)."""
    if n < 2 or math.isnan(p_holm):
        return "one seed: no test"
    if p_holm >= ALPHA:
        return "no clear difference"
    better = (mean > 0) == (metric in HIGHER_BETTER)
    verdict = "better than projection" if better else "worse than projection"
    if metric in FLOOR_QUALIFIED and not math.isnan(reference) and abs(mean) < reference:
        verdict += " (by less than the real-vs-real floor)"
    return verdict


def status_table(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return runs
    cols = ["run", "dataset", "head", "seed", "state", "iteration", "total_iterations", "wall_s", "it_per_s", "reason"]
    out = runs[[c for c in cols if c in runs]].copy()
    out["reason"] = out["reason"].fillna("").astype(str).str.slice(0, 120)
    out = out.sort_values(["dataset", "head", "seed"], key=lambda s: s.astype(str))
    formats = {"seed": "d", "iteration": "d", "total_iterations": "d", "wall_s": ".1f", "it_per_s": ".2f"}
    for c, spec in formats.items():
        if c in out:
            out[c] = [num(v, spec) for v in out[c]]
    return out.astype(object).where(out.notna(), "")


def protocol_card(done: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """What was measured and how, as key/value rows (readable at any width): one row per setting, one value
    column per column group (dataset, or dataset and protocol)."""
    columns = {}
    joint = done.get("joint_d_forward", pd.Series(False, index=done.index)).fillna(False).astype(bool)
    for column, g in done.groupby("column"):
        first = g.iloc[0]
        columns[column] = {
            "feature space": first["feature_space"],
            "domain classifier held-out acc.": _maybe(first.get("classifier_test_accuracy")),
            "held-out split (classifier acc., mode ceiling)": held_out_label(g),
            "real split (FID/KID/PR)": first["real_split"],
            "n real": _unique_int(g["n_real"]), "n fake (FID/KID/PR)": _unique_int(g["n_fake"]),
            "n generated (IS and per-class metrics, all classes)": _unique_int(g["n_generated"]),
            "IS splits": _unique_int(g["isc_splits"]),
            "iterations": _unique_int(g["total_iterations"]), "n_dis": _unique_int(g["n_dis"]),
            "batch D/G": f"{_unique_int(g['batch_d'])}/{_unique_int(g['batch_g'])}",
            "Adam lr, betas": f"{_unique(g['lr'])}, ({_unique(g['beta1'])}, {_unique(g['beta2'])})",
            "G/D channels": f"{_unique_int(g['model_g_ch'])}/{_unique_int(g['model_d_ch'])}",
            "training precision": _unique(g.get("train_precision", pd.Series(dtype=str))),
            "resolution": _unique_int(g["resolution"]), "seeds": _unique_int(g["seed"]),
            "device": device_label(g),
            "software": _unique(g.get("software", pd.Series(dtype=str))),
        }
        intra = _unique(g.get("intra_fid_protocol", pd.Series(dtype=str)))
        if intra:  # runs from before the per-class mode did not record it: the pooled protocol, said elsewhere
            columns[column]["intra-FID"] = intra
        if joint.any():  # shown where some run of the report left the paper's two D calls per D step
            columns[column]["D calls per D step"] = _unique(joint[g.index].map(
                {True: "1 (real and fake together: train.joint_d_forward)", False: "2 (real then fake: the paper's)"}))
        ranks = _unique_int(g["eval_ranks"]) if "eval_ranks" in g and g["eval_ranks"].notna().any() else None
        if ranks not in (None, "1"):
            columns[column]["evaluation ranks (sharded)"] = ranks
    if not columns:
        return pd.DataFrame()
    card = pd.DataFrame(columns)
    card.index.name = "setting"
    return card.reset_index()


def device_label(g: pd.DataFrame) -> str:
    """The evaluation's device, with training's torch thread count on a CPU where recorded: CPU results
    reproduce bit for bit only with the same kind of CPU and the same thread count."""
    device = _unique(g.get("device", pd.Series(dtype=str)))
    threads = g.get("cpu_threads", pd.Series(dtype=float)).dropna()
    return f"{device} (training: {_unique_int(threads)} threads)" if len(threads) else device


def held_out_label(g: pd.DataFrame) -> str:
    """Which real images the domain classifier's held-out accuracy (and the mode ceiling) were measured on:
    the dataset's own test split, or for imagefolder its val/ folder, a held-out fraction or the training images."""
    recorded = _unique(g["held_out_split"]) if "held_out_split" in g else ""
    if (g["dataset"] != "imagefolder").all():
        return f"the dataset's {recorded or 'test'} split"
    if recorded == "val":
        return "the val/ folder (training: train/)"
    fractions = sorted({float(f) for f in g.get("val_fraction", pd.Series(dtype=float)).dropna()})
    if fractions and fractions[-1] > 0:
        shares = ", ".join(f"{f:.0%}" for f in fractions)
        return f"{shares} of each class, held out (seeded; dataset.val_fraction)"
    return "none: the training images (dataset.val_fraction=0)"


CUT_REASON = {"n_real": "all the images of the real {split} split",
              "n_generated": "a whole number per class",
              "n_fake": "at most the {n_generated} class-balanced generated images"}


def sample_count_warnings(done: pd.DataFrame) -> list[str]:
    """One line per column group and count that the evaluator cut (requested > used; n_real -1 = all), read
    from the final metrics lines' `<count>_requested` and `<count>`."""
    lines = []
    for column, g in done.groupby("column"):
        for key, reason in CUT_REASON.items():
            if f"{key}_requested" not in g:
                continue
            rows = g.dropna(subset=[key, f"{key}_requested"])
            cut = rows[(rows[f"{key}_requested"] >= 0) & (rows[key] < rows[f"{key}_requested"])]
            for (requested, used), r in cut.groupby([f"{key}_requested", key]):
                why = reason.format(split=_unique(r["real_split"]), n_generated=_unique_int(r["n_generated"]))
                lines.append(f"{column}: {key}: {int(requested)} requested, {int(used)} used ({why})")
    return lines


def published_values(done: pd.DataFrame) -> pd.DataFrame:
    """The paper's numbers for the datasets this sweep evaluated in Inception space (the paper's feature space),
    with the report column each is comparable to; empty where none matches."""
    if done.empty:
        return pd.DataFrame()
    inception = done[done["feature_space"] == "inception"]
    rows = []
    for r in PAPER_VALUES[PAPER_VALUES["dataset"].isin(inception["dataset"])].to_dict("records"):
        columns = ", ".join(sorted(inception.loc[inception["dataset"] == r["dataset"], "column"].unique()))
        rows.append({"dataset": r["dataset"], "head": r["head"], "IS": num(r["IS"], ".2f"),
                     "FID": num(r["FID"], ".1f"), "intra-FID": num(r["intra-FID"], ".1f"),
                     "compare with column": columns})
    return pd.DataFrame(rows)


def _unique_int(series: pd.Series) -> str:
    values = sorted({int(v) for v in series.dropna()})
    return ", ".join(str(v) for v in values)


def _unique(series: pd.Series) -> str:
    values = sorted({str(v) for v in series.dropna()})
    return ", ".join(values) if values else ""


def _maybe(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
