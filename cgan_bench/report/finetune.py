"""The fine-tune section of a sweep's report (runs made with finetune.parent: train/finetune.py): for each parent,
its own final metrics, then each fine-tune's by classifier-loss weight, and a figure of quality (class accuracy,
IS) against diversity (modes covered on stacked digits, else the diversity ratio), one point per weight, and one
of FID, class accuracy and diversity over the fine-tune's iterations."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from .collect import read_run  # noqa: E402
from .plots import generated_counts, save_png_and_pdf  # noqa: E402
from .tables import DIGITS, LABELS, PROTOCOL_FIELDS  # noqa: E402

METRICS = ["class_accuracy", "is_mean", "fid", "intra_fid_mean", "diversity_ratio_mean", "near_duplicate_rate_mean",
           "modes_covered_mean"]


def _read(path: Path, load) -> dict:
    try:
        return load(path.read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return {}


def finetune_rows(done: pd.DataFrame) -> pd.DataFrame:
    """The completed fine-tunes among `done` (one row each: parent, weight, classifier, final metrics), then one
    row per parent read from its own run directory (weight NaN, `role` = parent). Empty if there are none."""
    rows = []
    for r in done.to_dict("records"):
        run_dir = Path(r["path"])
        f = (_read(run_dir / ".hydra" / "config.yaml", yaml.safe_load).get("finetune") or {})
        if not f.get("parent"):
            continue
        status = _read(run_dir / "status.json", json.loads)
        rows.append({**r, "role": "fine-tune", "weight": float(f.get("weight", float("nan"))),
                     "parent": status.get("finetune_parent") or str(Path(f["parent"]).absolute()),
                     "classifier": status.get("finetune_classifier", str(f.get("classifier")))})
    if not rows:
        return pd.DataFrame()
    for parent in dict.fromkeys(r["parent"] for r in rows):
        row, _, _ = read_run(Path(parent))
        rows.append({**row, "role": "parent", "weight": float("nan"), "parent": parent, "classifier": "",
                     "run": Path(parent).name})
    return pd.DataFrame(rows)


def _cell(values: pd.Series, metric: str) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return ""
    text = f"{values.mean():.{DIGITS.get(metric, 3)}f}"
    return text + (f" ± {values.std():.{DIGITS.get(metric, 3)}f}" if len(values) > 1 else "")


def finetune_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per parent: the parent's row first, then one row per weight (mean ± std where several runs share it)."""
    metrics = [m for m in METRICS if m in rows and rows[m].notna().any()]
    out = []
    for parent, g in rows.groupby("parent", sort=False):
        own = g[g["role"] == "parent"]
        p = own.iloc[0] if len(own) else None
        parent_done = p is not None and p.get("state") == "completed" and pd.notna(p.get("fid"))
        out.append({"run": f"parent ({Path(parent).name})", "weight": "—",
                    "iterations": "" if p is None else p.get("total_iterations"), "runs": 1,
                    **{LABELS[m]: _cell(pd.Series([p.get(m)]), m) if parent_done else "" for m in metrics},
                    "classifier": "(adversarial training only)" if parent_done
                    else f"(parent not readable: {'' if p is None else p.get('state')})"})
        for weight, w in g[g["role"] == "fine-tune"].groupby("weight"):
            out.append({"run": "fine-tune" if weight else "fine-tune (control)", "weight": f"{weight:g}",
                        "iterations": ", ".join(str(int(i)) for i in sorted(w["total_iterations"].dropna().unique())),
                        "runs": len(w), **{LABELS[m]: _cell(w[m], m) for m in metrics},
                        "classifier": "; ".join(sorted(w["classifier"].astype(str).unique()))})
    return pd.DataFrame(out)


def protocol_notes(rows: pd.DataFrame) -> list[str]:
    """A line for each parent evaluated with another protocol than its fine-tunes (their numbers then differ by
    protocol too)."""
    notes = []
    fields = [f for f in PROTOCOL_FIELDS if f in rows]
    for parent, g in rows.groupby("parent", sort=False):
        own, children = g[g["role"] == "parent"], g[g["role"] == "fine-tune"]
        if own.empty or not fields:
            continue
        differ = [f for f in fields if {str(v) for v in children[f]} != {str(own.iloc[0][f])}]
        if differ:
            notes.append(f"Note: parent {Path(parent).name} was evaluated with another protocol than its "
                         f"fine-tunes ({', '.join(differ)}): compare it with care; the weight-0 control has the "
                         f"fine-tunes' protocol.")
    return notes


def diversity_metric(rows: pd.DataFrame) -> str:
    """The x axis: exact modes covered where the space counts them (stacked digits), else the diversity ratio."""
    if "modes_covered_mean" in rows and rows["modes_covered_mean"].notna().any():
        return "modes_covered_mean"
    return "diversity_ratio_mean"


def tradeoff_plot(rows: pd.DataFrame, out: Path, title: str) -> Path | None:
    """Quality (class accuracy, IS) against diversity, one point per weight (mean over runs), joined in weight
    order, per parent; the parent as a star, the weight-0 control as a square."""
    x = diversity_metric(rows)
    panels = [m for m in ("class_accuracy", "is_mean") if m in rows and rows[m].notna().any()]
    if x not in rows or not panels or not rows[x].notna().any():
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for k, (parent, g) in enumerate(rows.groupby("parent", sort=False)):
        color = f"C{k}"
        by_weight = g[g["role"] == "fine-tune"].groupby("weight")[[x, *panels]].mean().reset_index()
        own = g[g["role"] == "parent"]
        for ax, y in zip(axes[0], panels):
            ax.plot(by_weight[x], by_weight[y], "-o", color=color, ms=5, label=f"fine-tunes of {Path(parent).name}")
            for r in by_weight.itertuples():
                ax.annotate(f"w={r.weight:g}", (getattr(r, x), getattr(r, y)), textcoords="offset points",
                            xytext=(5, 4), fontsize=7)
            control = by_weight[by_weight["weight"] == 0]
            ax.plot(control[x], control[y], "s", ms=9, mfc="none", mec=color, mew=1.5, label="weight 0 (control)")
            if len(own) and pd.notna(own.iloc[0].get(x)) and pd.notna(own.iloc[0].get(y)):
                ax.plot(own.iloc[0][x], own.iloc[0][y], "*", ms=15, color=color, mec="black", mew=0.6,
                        label=f"parent (iteration {own.iloc[0].get('total_iterations')})")
    for ax, y in zip(axes[0], panels):
        ax.set_xlabel(f"{LABELS[x]} (diversity: higher = more diverse)")
        ax.set_ylabel(f"{LABELS[y]} (higher = more classifiable)" if y == "class_accuracy" else LABELS[y])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = out / "finetune_tradeoff.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CURVE_PANELS = [("fid", "FID (lower is better)"), ("class_accuracy", "class accuracy (higher = more classifiable)"),
                ("diversity_ratio_mean", "diversity ratio (1 = as diverse as the data)")]


def fine_tune_curves(rows: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """The curve evaluations over each fine-tune (from the sweep's curves), each weight's line starting at its
    parent's curve evaluation at the parent's last iteration where it has one (the same curve protocol; read
    from the parent's run directory): columns
    parent, weight, origin (the parent's point), iteration and the metrics. Empty where there is nothing to draw."""
    if curves.empty or "run" not in curves:
        return pd.DataFrame()
    curve = curves[curves["phase"] == "curve"]
    out = []
    for parent, g in rows.groupby("parent", sort=False):
        own, evals, _ = read_run(Path(parent))
        # the parent's curve point where the fine-tunes start (its last iteration: a curve evaluation there only
        # with eval.best_metric); an earlier one would join the parent's own last iterations to the lines
        origin = [r for r in evals if r.get("phase") == "curve" and r["iteration"] == own.get("iteration")]
        origin = origin[-1] if origin else None
        for weight, w in g[g["role"] == "fine-tune"].groupby("weight"):
            mine = curve[curve["run"].isin(w["run"])]
            if mine.empty:
                continue
            if origin is not None:  # once per weight: every line starts from the same parent point
                out.append({**origin, "parent": parent, "weight": weight, "origin": True})
            out += [{**r, "parent": parent, "weight": weight, "origin": False} for r in mine.to_dict("records")]
    return pd.DataFrame(out)


def curve_plot(rows: pd.DataFrame, curves: pd.DataFrame, out: Path, title: str) -> Path | None:
    """FID, class accuracy and diversity ratio over the fine-tune's iterations, one line per weight (mean over
    its runs) from the parent's last curve evaluation (a star): how quality and diversity move while the
    classifier loss acts, not only where they end."""
    c = fine_tune_curves(rows, curves)
    panels = [(m, label) for m, label in CURVE_PANELS if m in c and c[m].notna().any()]
    if c.empty or not panels or c.groupby(["parent", "weight"])["iteration"].nunique().max() < 2:
        return None  # a single point per line is no curve
    weights = sorted(c["weight"].unique())
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels):
        for j, (parent, g) in enumerate(c.groupby("parent", sort=False)):
            for weight, w in g.groupby("weight"):
                line = w.groupby("iteration")[metric].mean()
                ax.plot(line.index, line.values, styles[j % len(styles)], marker="o", ms=3,
                        color=plt.cm.viridis(0.85 * weights.index(weight) / max(1, len(weights) - 1)),  # no pale yellow
                        label=(f"weight {weight:g}" + (" (control)" if weight == 0 else ""))
                        + (f", parent {Path(parent).name}" if c["parent"].nunique() > 1 else ""))
            origin = g[g["origin"]]
            if len(origin):
                ax.plot(origin["iteration"].iloc[:1], origin[metric].iloc[:1], "*", ms=14, color="white",
                        mec="black", mew=0.8, label="parent's last curve point" if j == 0 else None)
        ax.set_xlabel("generator iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return save_png_and_pdf(fig, f"{title}: during the fine-tune, curve evaluations (n generated = "
                                 f"{generated_counts(c)}, one line per weight, mean over its runs)",
                            out / "finetune_curves.png")


def classifier_notes(rows: pd.DataFrame) -> list[str]:
    """What the class-accuracy column means given the classifier each fine-tune's loss used."""
    # the first word of status.json's finetune_classifier: independent | domain | file | none (weight 0)
    used = {c.split(" ")[0] for c in rows.loc[rows["role"] == "fine-tune", "classifier"].astype(str)}
    notes = []
    if "domain" in used:
        notes.append("**Caution:** fine-tunes with classifier `domain` were tuned against the evaluation's own "
                     "classifier, so their class accuracy (and IS, from the same logits) is measured by the "
                     "classifier G was optimised to please and is inflated by construction. FID, intra-FID, the "
                     "diversity ratio, the near-duplicate rate and the mode counts use its features, not its "
                     "decisions, and are the fairer evidence.")
    if "independent" in used:
        notes.append("Classifier `independent`: the loss used a second domain classifier (the evaluation "
                     "classifier's recipe with another seed: its own weights and errors, but the same training "
                     "images), so class accuracy is scored by a classifier G was not tuned against, though not a "
                     "fully independent one.")
    if "file" in used:
        notes.append("Classifier from a file: the loss used the user's classifier; class accuracy is the "
                     "evaluation's own classifier.")
    return notes


def section(done: pd.DataFrame, out_dir: Path, title: str = "", curves: pd.DataFrame | None = None) -> list[str]:
    """The report lines (markdown) of the fine-tune section; [] when no completed run is a fine-tune. `curves`:
    the sweep's curve evaluations (for the figure over the fine-tune's iterations)."""
    if done.empty or "path" not in done:
        return []
    rows = finetune_rows(done)
    if rows.empty:
        return []
    table = finetune_table(rows)
    lines = ["## Classifier fine-tuning (the paper's appendix experiment)", "",
             "Each fine-tune continued its parent's final checkpoint (G, D, optimisers, random stream) adversarially "
             "with G's loss + weight × CE(classifier(G(z, y)), y) (D trained as usual; LR restarted at train.lr "
             "and decayed linearly to 0 over the fine-tune). Weight 0 is the control: the same extra iterations "
             "without the classifier loss. The parent's row is its own final evaluation. The paper reports "
             "more classifiable, better-looking images at the cost of diversity: higher class accuracy with a "
             "lower diversity ratio, a higher near-duplicate rate or fewer modes covered would show that.", "",
             *[n + "\n" for n in classifier_notes(rows) + protocol_notes(rows)],
             table.to_markdown(index=False, disable_numparse=True) + "\n"]
    plot = tradeoff_plot(rows, out_dir, f"{title}: quality against diversity after classifier fine-tuning"
                         if title else "quality against diversity after classifier fine-tuning")
    if plot is not None:
        lines += [f"![finetune tradeoff]({plot.name})", ""]
    plot = curve_plot(rows, curves if curves is not None else pd.DataFrame(), out_dir, title or "fine-tunes")
    if plot is not None:
        lines += ["Over the fine-tune: the curve evaluations (`finetune.curve_points` of them, the curve protocol's "
                  "smaller sample), each weight's line starting at the parent's last curve evaluation.", "",
                  f"![finetune curves]({plot.name})", ""]
    return lines
