"""Build the markdown report of a sweep directory: tables, plots and CSVs, written atomically."""
import os
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text
from . import plots, tables
from .collect import load_sweep


def _md(frame: pd.DataFrame, index: bool = False) -> str:
    if frame is None or frame.empty:
        return "_(nothing yet)_\n"
    frame = frame.copy()
    if isinstance(frame.columns, pd.MultiIndex):
        frame.columns = [" ".join(str(p) for p in c if p) for c in frame.columns]
    return frame.to_markdown(index=index, floatfmt=".4g") + "\n"


def build_report(sweep_dir: Path, out_dir: Path, title: str | None = None) -> Path:
    """Read every run under `sweep_dir`, write report.md + runs.csv/curves.csv/per_class.csv + PNGs to `out_dir`."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = load_sweep(sweep_dir)
    runs = frames.runs
    done = tables.with_columns_key(tables.completed(runs)) if not runs.empty else runs
    column_of = dict(zip(done["run"], done["column"])) if not done.empty else {}
    curves, per_class = frames.curves.copy(), frames.per_class.copy()
    for f in (curves, per_class):
        if not f.empty:
            f["column"] = f["run"].map(column_of)

    title = title or sweep_dir.name
    lines = [f"# cgan-bench report: {title}", "",
             f"Sweep directory: `{sweep_dir}`. Built by `python -m cgan_bench.report {sweep_dir}`; every number "
             "below is read from the run directories (`metrics.jsonl`, `per_class.csv`, `status.json`).", ""]
    n_runs, n_done = len(runs), len(done)
    expected = frames.expected_jobs
    lines += [f"Runs: {n_done} completed of {n_runs} found" + (f" ({expected} expected by the sweep)" if expected else "")
              + ". Tables use completed runs only; mean ± std over seeds; **bold** = the best head of a column, "
              "only where it beats the runner-up in a paired t-test over seeds (p < 0.05): no bold on ties.", ""]

    lines += ["## Protocol", "", _md(tables.protocol_card(done, runs)) if not done.empty else "_(no completed run)_\n"]
    floor = tables.noise_floor_table(done)
    if not floor.empty:
        lines += ["## Noise floor (real vs real)", "",
                  "The same metrics between two disjoint random halves of the real training split, sized like the "
                  "protocol where the data allows (else halves): differences between heads smaller than these are "
                  "not evidence. KID's ± is the standard error of its 100 overlapping subsets.", "", _md(floor)]
    lines += ["## Main table (the paper's layout)", "", _md(tables.metric_table(done, tables.PAPER_METRICS), index=True)]
    modes = tables.mode_table(done)
    if not modes.empty:
        lines += ["## Exact mode counts (stacked digits)", "",
                  "Each channel of a generated image read by the digits classifier: the class is the red digit "
                  "(class acc.), the (green, blue) pair is one of 100 modes per class. Modes covered: pairs seen at "
                  "least once among the class's generated images; KL: their histogram against uniform; a class is "
                  "mode-collapsed when it covers under half the modes its real images cover. The last row is "
                  "real held-out images, as many per class as generated: the ceiling.", "", _md(modes, index=True)]
    lines += ["## Intra-class and distribution metrics", "",
              "intra-FID: FID between generated and real images of one class, averaged over classes (the paper's "
              "metric). KID ×10³: torch-fidelity's unbiased KID on subsets of min(1000, n). Density and coverage: "
              "Naeem et al. (2020), k = 5, on the whole sets; within-class coverage: the same coverage inside each "
              "class (on up to `eval.diversity_pairs_max` images per side), averaged. Diversity ratio: mean pairwise "
              "feature distance of generated / real images of a class (1 = as diverse as the data). Near-duplicate "
              "rate: share of a class's generated images whose nearest generated neighbour is closer than 95% of "
              "real images are to theirs (real data: about 0.05); a class above `eval.collapse_threshold` (0.5) "
              "counts as collapsed. Class acc.: the feature space's classifier agrees with the requested label.", "",
              _md(tables.metric_table(done, tables.EXTRA_METRICS), index=True)]
    if not done.empty and done["dataset"].isin(tables.PAPER_VALUES["dataset"]).any():
        lines += ["## Published values", "", f"Source: {tables.PAPER_SOURCE}. Only values we could verify; empty = "
                  "not verified. Protocols differ (the paper: Inception, 10k real vs 5k fake on CIFAR-10), so compare "
                  "with care and only against Inception-space columns.", "",
                  _md(tables.PAPER_VALUES.astype(object).where(tables.PAPER_VALUES.notna(), ""))]
    paired = tables.paired_vs_projection(done) if not done.empty else pd.DataFrame()
    lines += ["## Each head against projection (paired by seed, Holm-corrected)", "",
              "difference = head − projection on the same seed, mean over seeds (KID ×10³). Per metric the heads "
              "form one family: `p_holm` is the paired t-test's p-value after Holm's correction, the interval "
              "[ci_low, ci_high] is the simultaneous 95% (Bonferroni) interval, `effect_dz` the mean difference "
              "over the differences' std. `reference`: the real-vs-real noise floor (FID, intra-FID, KID) or the "
              "real ceiling (modes, KL). A verdict other than \"no clear difference\" needs p_holm < 0.05.", "",
              _md(paired)]

    lines += ["## Figures", ""]
    for column in sorted(done["column"].unique()) if not done.empty else []:
        lines += [f"### {column}", ""]
        for path in (plots.curve_plot(curves, column, out_dir) if not curves.empty else None,
                     plots.per_class_plot(per_class, column, out_dir) if not per_class.empty else None):
            if path is not None:
                lines += [f"![{path.stem}]({path.name})", ""]
        images = plots.copy_run_images(done, column, out_dir)
        if images:
            lines += ["Final samples (rows = classes, same z down each column), lowest seed of each head:", ""]
            for head, files in images.items():
                if "samples" in files:
                    lines += [f"**{head}**", "", f"![samples {head}]({files['samples'].name})", ""]
            morphs = {h: f["morph"] for h, f in images.items() if "morph" in f}
            if morphs:
                lines += ["Category morphing (fixed z per row; the generator's conditional-BN parameters mixed from "
                          "class 0 to class 1 left to right):", ""]
                lines += [f"**{h}** ![morph {h}]({p.name})" for h, p in morphs.items()] + [""]

    lines += ["## Run status", "", _md(tables.status_table(runs))]
    atomic_write_text(out_dir / "runs.csv", runs.to_csv(index=False))
    atomic_write_text(out_dir / "curves.csv", curves.drop(columns=["column"], errors="ignore").to_csv(index=False))
    atomic_write_text(out_dir / "per_class.csv", per_class.drop(columns=["column"], errors="ignore").to_csv(index=False))
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    _link(sweep_dir / "report.md", report)
    return report


def _link(link: Path, target: Path) -> None:
    """Point the sweep directory at its report (a relative symlink, replaced atomically)."""
    if link.resolve() == target.resolve():
        return
    tmp = link.with_name(".report.md.link")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target.resolve(), link.parent.resolve()), tmp)
    os.replace(tmp, link)
