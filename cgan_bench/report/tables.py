"""The report's tables as DataFrames: the paper's layout, the extra metrics, published values, paired
differences against projection, and run status. Numbers from different protocols never share a column."""
import math

import numpy as np
import pandas as pd
from scipy import stats

HIGHER_BETTER = {"is_mean", "precision", "recall", "coverage_mean", "class_accuracy"}
LOWER_BETTER = {"fid", "kid_mean", "intra_fid_mean", "collapsed_classes"}
CLOSEST_TO_ONE = {"diversity_ratio_mean"}
LABELS = {"is_mean": "IS", "fid": "FID", "intra_fid_mean": "intra-FID", "kid_mean": "KID", "precision": "precision",
          "recall": "recall", "coverage_mean": "coverage", "diversity_ratio_mean": "diversity ratio",
          "class_accuracy": "class acc.", "collapsed_classes": "collapsed classes"}
PAPER_METRICS = ["is_mean", "fid"]
EXTRA_METRICS = ["intra_fid_mean", "kid_mean", "precision", "recall", "coverage_mean", "diversity_ratio_mean",
                 "class_accuracy", "collapsed_classes"]
PROTOCOL_FIELDS = ["feature_space", "real_split", "n_real", "n_fake", "n_generated", "isc_splits"]
HEAD_ORDER = ["input_concat", "concat", "acgan", "projection", "none"]

# Published values we could verify (../shared/reference/paper-facts.md); others are left empty, not guessed.
PAPER_SOURCE = "Miyato & Koyama, ICLR 2018 (CIFAR-10: paper Table 3 via paperswithcode; ImageNet: authors' README, 450K iterations)"
PAPER_VALUES = pd.DataFrame([
    {"dataset": "cifar10", "head": "projection", "IS": 8.62, "FID": 17.5, "intra-FID": None},
    {"dataset": "imagenet128", "head": "projection", "IS": 29.7, "FID": None, "intra-FID": 103.1},
    {"dataset": "imagenet128", "head": "concat", "IS": 21.1, "FID": None, "intra-FID": 141.2},
])


def head_sort_key(heads: pd.Series) -> pd.Series:
    return heads.map(lambda h: (HEAD_ORDER.index(h) if h in HEAD_ORDER else len(HEAD_ORDER), h))


def completed(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "fid" not in runs:
        return runs.iloc[0:0]
    return runs[(runs["state"] == "completed") & runs["fid"].notna()].copy()


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


def _best_heads(agg: pd.DataFrame) -> set[tuple[str, str, str]]:
    best = set()
    for (column, metric), g in agg.dropna(subset=["mean"]).groupby(["column", "metric"]):
        if len(g) < 2:
            continue
        score = g["mean"] if metric in HIGHER_BETTER else -g["mean"] if metric in LOWER_BETTER \
            else -(g["mean"] - 1).abs()
        top = score.max()
        best |= {(column, h, metric) for h in g.loc[np.isclose(score, top), "head"]}
    return best


def fmt(mean: float, std: float, metric: str) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    digits = 0 if metric == "collapsed_classes" else 4 if metric == "kid_mean" else 3 if metric in HIGHER_BETTER \
        | CLOSEST_TO_ONE else 2
    text = f"{mean:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std:.{digits}f}"
    return text


def metric_table(done: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Rows = heads, columns = (dataset/protocol) x metric, 'mean ± std' over seeds, best per column in bold."""
    if done.empty:
        return pd.DataFrame()
    agg = aggregate(done, metrics)
    best = _best_heads(agg)
    table = {}
    for r in agg.itertuples():
        cell = fmt(r.mean, r.std, r.metric)
        if cell and (r.column, r.head, r.metric) in best:
            cell = f"**{cell}**"
        table.setdefault(r.head, {})[(r.column, LABELS[r.metric])] = cell
    out = pd.DataFrame.from_dict(table, orient="index")
    out = out.reindex(sorted(out.index, key=lambda h: (HEAD_ORDER.index(h) if h in HEAD_ORDER else 99, h)))
    columns = [(c, LABELS[m]) for c in sorted(done["column"].unique()) for m in metrics]
    out = out.reindex(columns=[c for c in columns if c in out.columns])
    seeds = done.groupby("head")["seed"].nunique()
    out.insert(0, ("", "seeds"), [int(seeds.get(h, 0)) for h in out.index])
    out.index.name = "head"
    return out


def paired_vs_projection(done: pd.DataFrame, metrics=("fid", "intra_fid_mean", "is_mean")) -> pd.DataFrame:
    """Per-seed paired differences (head - projection) with a t-based 95% interval."""
    rows = []
    for column, g in done.groupby("column"):
        base = g[g["head"] == "projection"].set_index("seed")
        if base.empty:
            continue
        for head, h in g[g["head"] != "projection"].groupby("head"):
            h = h.set_index("seed")
            seeds = sorted(set(h.index) & set(base.index))
            for m in metrics:
                d = (h.loc[seeds, m].astype(float) - base.loc[seeds, m].astype(float)).dropna()
                n = len(d)
                if n == 0:
                    continue
                mean = d.mean()
                half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
                rows.append({"dataset": column, "head": head, "metric": LABELS[m], "pairs": n,
                             "difference": mean, "ci95_low": mean - half, "ci95_high": mean + half,
                             "verdict": _verdict(m, mean, half)})
    return pd.DataFrame(rows)


def _verdict(metric: str, mean: float, half: float) -> str:
    if math.isnan(half):
        return "one seed: no interval"
    if abs(mean) <= half:
        return "no clear difference"
    better = (mean > 0) == (metric in HIGHER_BETTER)
    return "better than projection" if better else "worse than projection"


def status_table(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return runs
    cols = ["run", "dataset", "head", "seed", "state", "iteration", "total_iterations", "wall_s", "it_per_s", "reason"]
    out = runs[[c for c in cols if c in runs]].copy()
    out["reason"] = out["reason"].fillna("").astype(str).str.slice(0, 120)
    return out.sort_values(["dataset", "head", "seed"], key=lambda s: s.astype(str))


def protocol_card(done: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per column group: what was measured and how."""
    rows = []
    for column, g in done.groupby("column"):
        first = g.iloc[0]
        rows.append({
            "dataset": column, "feature space": first["feature_space"],
            "domain classifier held-out acc.": _maybe(first.get("classifier_test_accuracy")),
            "real split": first["real_split"], "n real": first["n_real"], "n fake (FID/KID/PR)": first["n_fake"],
            "n generated (IS, per class)": first["n_generated"], "IS splits": first["isc_splits"],
            "iterations": _unique(g["total_iterations"]), "n_dis": _unique(g["n_dis"]),
            "batch D/G": f"{_unique(g['batch_d'])}/{_unique(g['batch_g'])}",
            "Adam lr, betas": f"{_unique(g['lr'])}, ({_unique(g['beta1'])}, {_unique(g['beta2'])})",
            "G/D channels": f"{_unique(g['model_g_ch'])}/{_unique(g['model_d_ch'])}",
            "training precision": _unique(g.get("train_precision", pd.Series(dtype=str))),
            "resolution": _unique(g["resolution"]), "seeds": ", ".join(str(s) for s in sorted(g["seed"].unique())),
            "device": _unique(g.get("device", pd.Series(dtype=str))),
            "software": _unique(g.get("software", pd.Series(dtype=str))),
        })
    return pd.DataFrame(rows)


def _unique(series: pd.Series) -> str:
    values = sorted({str(v) for v in series.dropna()})
    return ", ".join(values) if values else ""


def _maybe(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
