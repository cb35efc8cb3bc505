"""The report's figures (matplotlib, Agg): curves over training, per-class bars, sample grids, morphing."""
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .tables import HEAD_ORDER  # noqa: E402


def _heads(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["head"].unique(), key=lambda h: (HEAD_ORDER.index(h) if h in HEAD_ORDER else 99, h))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _save(fig, title: str, path: Path) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curve_plot(curves: pd.DataFrame, column: str, out: Path) -> Path | None:
    """FID and IS against iteration, one line per head: mean over seeds with a min-max band."""
    c = curves[(curves["column"] == column) & (curves["phase"] == "curve")]
    if c.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in ((axes[0], "fid", "FID (lower is better)"), (axes[1], "is_mean", "IS (higher is better)")):
        for head in _heads(c):
            g = c[c["head"] == head].groupby("iteration")[metric].agg(["mean", "min", "max"]).reset_index()
            ax.plot(g["iteration"], g["mean"], marker="o", ms=3, label=head)
            ax.fill_between(g["iteration"], g["min"], g["max"], alpha=0.2)
        ax.set_xlabel("generator iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return _save(fig, f"{column}: curve evaluations (mean over seeds, band = min..max)",
                 out / f"curves_{_slug(column)}.png")


def per_class_plot(per_class: pd.DataFrame, column: str, out: Path) -> Path | None:
    """Per-class intra-FID and diversity ratio for each head, classes sorted by the projection head's value."""
    p = per_class[per_class["column"] == column]
    if p.empty:
        return None
    means = p.groupby(["head", "class"])[["intra_fid", "diversity_ratio"]].mean().reset_index()
    heads = _heads(means)
    ref = "projection" if "projection" in heads else heads[0]
    fig, axes = plt.subplots(2, 1, figsize=(11, 7))
    for ax, metric, label in ((axes[0], "intra_fid", "intra-FID (lower is better)"),
                              (axes[1], "diversity_ratio", "diversity ratio (1 = as diverse as real)")):
        order = means[means["head"] == ref].sort_values(metric)["class"].tolist()
        pos = {c: i for i, c in enumerate(order)}
        width = 0.8 / len(heads)
        for k, head in enumerate(heads):
            g = means[means["head"] == head]
            ax.bar([pos[c] + (k - (len(heads) - 1) / 2) * width for c in g["class"]], g[metric], width, label=head)
        if metric == "diversity_ratio":
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([str(c) for c in order], fontsize=7 if len(order) > 20 else 9)
        ax.set_ylabel(label)
        ax.set_xlabel(f"class (sorted by {ref}'s value)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(ncol=len(heads))
    return _save(fig, f"{column}: per-class statistics (mean over seeds)", out / f"per_class_{_slug(column)}.png")


def copy_run_images(done: pd.DataFrame, column: str, out: Path) -> dict[str, dict[str, Path]]:
    """Final sample grid and morphing figure of each head's lowest-seed completed run."""
    images = {}
    for head, g in done[done["column"] == column].groupby("head"):
        run = Path(g.sort_values("seed").iloc[0]["path"])
        for kind, name in (("samples", "final.png"), ("morph", "morph.png")):
            src = run / "samples" / name
            if src.exists():
                dst = out / f"{kind}_{_slug(column)}_{head}.png"
                shutil.copyfile(src, dst)
                images.setdefault(head, {})[kind] = dst
    return images
