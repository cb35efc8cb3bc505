"""The report's figures (matplotlib, Agg): curves over training, per-class bars, sample grids, morphing.
Each is written as NAME.png (linked from report.md) and NAME.pdf beside it (for a paper)."""
import shutil
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import pandas as pd  # noqa: E402

from ..overrides import short_hash  # noqa: E402
from ..train.samples import STABLE_METADATA  # noqa: E402
from .tables import HEAD_ORDER  # noqa: E402


def _heads(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["head"].unique(), key=lambda h: (HEAD_ORDER.index(h) if h in HEAD_ORDER else 99, h))


def _slug(text: str, longest: int = 80) -> str:
    """A column's name as part of a file name; a long one (many swept settings) keeps its start and hashes the
    rest, so that names stay unique and under file systems' 255 characters."""
    slug = "".join(c if c.isalnum() else "_" for c in text).strip("_")
    return slug if len(slug) <= longest else f"{slug[:longest - 9]}_{short_hash(text)}"


def save_png_and_pdf(fig, title: str, path: Path) -> Path:
    """`path` (PNG) and the same figure as PDF beside it; returns the PNG's path."""
    # wrapped to the figure's width (~11 characters per inch at 10 pt): a long column name (a sweep's variant,
    # e.g. `train.joint_d_forward=True`) would otherwise run off both edges
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 11)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.savefig(path.with_suffix(".pdf"), metadata=STABLE_METADATA["pdf"])
    plt.close(fig)
    return path


def generated_counts(frame: pd.DataFrame) -> str:
    return "/".join(str(int(n)) for n in sorted(frame["n_generated"].dropna().unique())) if "n_generated" in frame \
        else "?"


REFERENCE_LINES = {"fid": ("floor_fid", "real vs real FID"),  # the yardstick drawn across a curve panel
                   "modes_covered_mean": ("real_modes_covered_mean", "real ceiling")}


def _reference_lines(ax, rows: pd.DataFrame, metric: str) -> list[Line2D]:
    """A dashed line per distinct real-vs-real floor (FID; curve and final evaluations can differ in sizes, so
    each is labelled with its image counts) or real ceiling (modes); their legend handles."""
    key, label = REFERENCE_LINES.get(metric, (None, None))
    if key not in rows or rows[key].isna().all():
        return []
    sizes = ["floor_n_b", "floor_n_a"] if metric == "fid" and {"floor_n_a", "floor_n_b"} <= set(rows) else []
    handles = []
    for k, (_, r) in enumerate(rows.dropna(subset=[key]).drop_duplicates([key] + sizes).iterrows()):
        style = dict(color="black", lw=1, ls=("--", ":", "-.")[k % 3])
        ax.axhline(r[key], **style)
        counts = f" ({int(r['floor_n_b'])} vs {int(r['floor_n_a'])} images)" if sizes else ""
        if f"{label}{counts}" not in [h.get_label() for h in handles]:  # one legend entry per distinct label
            handles.append(Line2D([], [], **style, label=f"{label}{counts}"))
    return handles


def curve_plot(curves: pd.DataFrame, column: str, out: Path) -> Path | None:
    """FID and IS against iteration, one line per head (mean over seeds, min-max band) for the curve
    evaluations; the final evaluation (its own protocol, often more samples) as a separate star marker; the
    real-vs-real FID floor and the real mode ceiling as dashed lines (closer to them = nearer the data)."""
    c = curves[curves["column"] == column]
    if c.empty or not (c["phase"] == "curve").any():
        return None
    metrics = [("fid", "FID (lower is better)"), ("is_mean", "IS (higher is better)")]
    if "modes_covered_mean" in c and c["modes_covered_mean"].notna().any():
        metrics.append(("modes_covered_mean", "modes covered per class (of 100)"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4))
    curve, final = c[c["phase"] == "curve"], c[c["phase"] == "final"]
    references = []
    for ax, (metric, label) in zip(axes, metrics):
        references += _reference_lines(ax, c, metric)
        for k, head in enumerate(_heads(c)):
            color = f"C{k}"
            g = curve[curve["head"] == head].groupby("iteration")[metric].agg(["mean", "min", "max"]).reset_index()
            ax.plot(g["iteration"], g["mean"], marker="o", ms=3, color=color)
            ax.fill_between(g["iteration"], g["min"], g["max"], color=color, alpha=0.2)
            f = final[final["head"] == head].groupby("iteration")[metric].mean().reset_index()
            ax.plot(f["iteration"], f[metric], marker="*", ms=12, ls="none", color=color, mec="black", mew=0.6)
        ax.set_xlabel("generator iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    # one entry per head (its colour) and one per marker, outside the axes: with 8 heads an inside legend hid
    # the FID curves
    handles = [Line2D([], [], color=f"C{k}", lw=2, label=head) for k, head in enumerate(_heads(c))]
    handles += [Line2D([], [], color="black", marker="o", ms=3, label="curve (mean over seeds)"),
                Line2D([], [], color="white", marker="*", ms=12, ls="none", mec="black", mew=0.6, label="final")]
    handles += references
    axes[-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return save_png_and_pdf(fig, f"{column}: curve evaluations (lines, n generated = {generated_counts(curve)}; "
                                 f"band = min..max over seeds) and final evaluations (stars, n generated = "
                                 f"{generated_counts(final)})", out / f"curves_{_slug(column)}.png")


def per_class_plot(per_class: pd.DataFrame, column: str, out: Path) -> Path | None:
    """Per-class bars for each head (mean over seeds, whiskers min..max over seeds: how far one seed's bar can
    be from another's), one class order for every panel (by the projection
    head's intra-FID); intra-FID on a log axis when heads differ by more than 5x, so a far-off head (`none`)
    does not flatten the others; stacked digits add modes covered with the real ceiling."""
    p = per_class[per_class["column"] == column]
    if p.empty:
        return None
    panels = [("intra_fid", "intra-FID (lower is better)"),
              ("diversity_ratio", "diversity ratio (1 = as diverse as real)")]
    if "modes_covered" in p and p["modes_covered"].notna().any():
        panels.append(("modes_covered", "modes covered (of 100)"))
    by_class = p.groupby(["head", "class"])[[m for m, _ in panels] + (["real_modes_covered"] if len(panels) > 2
                                                                      else [])]
    means, lows, highs = (agg().reset_index() for agg in (by_class.mean, by_class.min, by_class.max))
    heads = _heads(means)
    ref = "projection" if "projection" in heads else heads[0]
    order = means[means["head"] == ref].sort_values("intra_fid")["class"].tolist()
    order += sorted(set(means["class"]) - set(order))  # a class the reference head lacks: last, still one order
    pos = {c: i for i, c in enumerate(order)}
    width = 0.8 / len(heads)
    fig, axes = plt.subplots(len(panels), 1, figsize=(12.5, 3.4 * len(panels)))
    for ax, (metric, label) in zip(axes, panels):
        for k, head in enumerate(heads):
            mine = means["head"] == head
            g, low, high = means[mine], lows[mine][metric].to_numpy(), highs[mine][metric].to_numpy()
            ax.bar([pos[c] + (k - (len(heads) - 1) / 2) * width for c in g["class"]], g[metric], width, label=head,
                   yerr=[g[metric].to_numpy() - low, high - g[metric].to_numpy()],
                   error_kw=dict(elinewidth=0.6, ecolor="black", capsize=0))
        if metric == "diversity_ratio":
            ax.axhline(1.0, color="black", lw=0.8, ls="--", label="real data")
        if metric == "modes_covered":
            ceiling = means[means["head"] == ref].set_index("class")["real_modes_covered"]
            ax.plot([pos[c] for c in ceiling.index], ceiling.values, "k_", ms=20, mew=2, label="real ceiling")
        positive = means[metric][means[metric] > 0]
        if metric == "intra_fid" and len(positive) and positive.max() > 5 * positive.min():
            ax.set_yscale("log")
            label += ", log scale"
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([str(c) for c in order], fontsize=7 if len(order) > 20 else 9)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[-1].set_xlabel(f"class (sorted by {ref}'s intra-FID)")
    for ax in axes:  # outside the axes, so no legend hides a bar or the ceiling
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0)
    seeds = p.groupby("head")["seed"].nunique() if "seed" in p else pd.Series(dtype=int)
    spread = "; whiskers = min..max over seeds" if len(seeds) and seeds.max() > 1 else ""
    return save_png_and_pdf(fig, f"{column}: per-class statistics (bars = mean over seeds{spread})",
                            out / f"per_class_{_slug(column)}.png")


def copy_run_images(done: pd.DataFrame, column: str, out: Path) -> dict[str, dict[str, Path]]:
    """The labelled final sample grid and morphing figure of each head's lowest-seed completed run, as
    samples_COLUMN_HEAD.png/.pdf and morph_COLUMN_HEAD.png/.pdf. Runs write them (samples/final.png/.pdf,
    morph.png/.pdf beside the pixel grids *_raw.png); a run from before the labelled figures (no final_raw.png:
    its final.png and morph.png are pixel grids) is labelled here: class indices on the rows, morphing 0 -> 1."""
    images = {}
    for head, g in done[done["column"] == column].groupby("head"):
        row = g.sort_values("seed").iloc[0]
        run = Path(row["path"]) / "samples"
        for kind, name in (("samples", "final"), ("morph", "morph")):
            dst = out / f"{kind}_{_slug(column)}_{head}.png"
            if (run / f"{name}_raw.png").exists() and (run / f"{name}.png").exists():
                for suffix in (".png", ".pdf"):
                    if (run / f"{name}{suffix}").exists():
                        shutil.copyfile(run / f"{name}{suffix}", dst.with_suffix(suffix))
            elif (run / f"{name}.png").exists():
                _label_old_grid(run / f"{name}.png", kind, row, dst)
            else:
                continue
            images.setdefault(head, {})[kind] = dst
    return images


def _label_old_grid(src: Path, kind: str, run: pd.Series, dst: Path) -> None:
    """A pixel grid of an older run as a labelled figure (dst .png and .pdf)."""
    from ..train.samples import (GRID_COLS, MORPH_STEPS, MORPH_Z, class_grid_figure, grid_classes, morph_figure,
                                 read_png, run_title, save_figure)
    grid = read_png(src)
    title = run_title(run["head"], run["dataset"], int(run["iteration"]), int(run["seed"]))
    if kind == "morph":
        save_figure(morph_figure(grid, "0", "1", title, MORPH_Z, MORPH_STEPS), dst, dst.with_suffix(".pdf"))
        return
    cell = int(run["resolution"]) + 1  # one image and its padding line
    apart = (grid.shape[1] - 1) // GRID_COLS > cell  # stacked digits: each image 3x as wide
    per_class = Path(run["path"]) / "per_class.csv"
    n_rows = (grid.shape[0] - 1) // cell
    classes = grid_classes(len(pd.read_csv(per_class)) if per_class.exists() else n_rows)
    if len(classes) != n_rows:  # cannot tell which classes the rows are
        classes = list(range(n_rows))
    names = [str(c) for c in range(max(classes) + 1)]
    save_figure(class_grid_figure(grid, names, classes, GRID_COLS, title, apart), dst, dst.with_suffix(".pdf"))
