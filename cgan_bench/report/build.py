"""Build the markdown report of a sweep directory: tables, plots and CSVs, written atomically."""
import os
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text
from . import finetune, plots, tables
from .collect import load_sweep


NUMBER = re.compile(r"^\**(> )?[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?( ± [-+]?\d+\.?\d*)?\**$")  # "> 1000": a bound


def _md(frame: pd.DataFrame, index: bool = False) -> str:
    """A table as markdown, every cell exactly as the table functions formatted it: tabulate's number parsing
    is off (it would re-format '1007.48' as '1007' and '8.740' as '8.74'), numeric columns are right-aligned."""
    if frame is None or frame.empty:
        return "_(nothing yet)_\n"
    frame = frame.copy()
    if isinstance(frame.columns, pd.MultiIndex):
        frame.columns = [" ".join(str(p) for p in c if p) for c in frame.columns]
    if index:
        frame = frame.reset_index()
    frame = frame.astype(object).map(_text)
    align = tuple("right" if frame[c].ne("").any() and frame[c][frame[c].ne("")].str.match(NUMBER).all() else "left"
                  for c in frame.columns)
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


def _text(value) -> str:
    """A cell the table functions left unformatted: integers as such, missing as empty (floats should have
    been formatted by their table; 4 significant digits is the fallback)."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def build_report(sweep_dir: Path, out_dir: Path, title: str | None = None, link: bool = True) -> Path:
    """Read every run under `sweep_dir`, write report.md + runs.csv/curves.csv/per_class.csv + PNGs to `out_dir`
    (in place; `write_report` is the safe way to (re)build a report folder). `link`: point `<sweep_dir>/report.md`
    at it."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = load_sweep(sweep_dir)
    runs = frames.runs
    done = tables.with_columns_key(tables.completed(runs)) if not runs.empty else runs
    n_completed = len(done)
    done, repeated = tables.one_run_per_seed(done)
    column_of = dict(zip(done["run"], done["column"])) if not done.empty else {}
    curves, per_class = frames.curves.copy(), frames.per_class.copy()
    for f in (curves, per_class):
        if not f.empty:
            f["column"] = f["run"].map(column_of)

    title = title or sweep_dir.name
    lines = [f"# cgan-bench report: {title}", "",
             f"Sweep directory: `{sweep_dir}`. Built by `python -m cgan_bench.report {sweep_dir}`; every number "
             "below is read from the run directories (`metrics.jsonl`, `per_class.csv`, `status.json`).", ""]
    n_runs, n_done = len(runs), n_completed
    expected = frames.expected_jobs
    if expected and n_runs > expected:  # a sweep re-run into this folder (e.g. with more seeds) rewrote multirun.yaml
        expected_text = (f" (the sweep last started in this folder has {expected} job{'s' if expected != 1 else ''}; "
                         "earlier sweeps left the rest)")
    else:
        expected_text = f" ({expected} expected by the sweep)" if expected else ""
    lines += [f"Runs: {n_done} completed of {n_runs} found" + expected_text
              + ". Tables use completed runs only; mean ± std over seeds; **bold** = the best head of a column, "
              "only where it beats every other head in a paired t-test over seeds (p < 0.05 against each, "
              "Holm-corrected over those comparisons): no bold on ties.", ""]
    if repeated:
        lines += ["**Warning: seeds that completed more than once** (in a sweep from before job folders were named "
                  "by their settings, a re-run with a longer seed list renumbered its jobs and Hydra gave them new "
                  "folders; to add seeds to such a sweep, re-run it with only the new ones). Each counts once:", ""] + [f"- {r}" for r in repeated] + [""]

    lines += ["## Protocol", "", _md(tables.protocol_card(done, runs)) if not done.empty else "_(no completed run)_\n"]
    warnings = tables.sample_count_warnings(done) if not done.empty else []
    if warnings:
        lines += ["**Warning: sample counts cut.** The evaluator used fewer images than the protocol asked for "
                  "(the runs' logs say so too):", ""] + [f"- {w}" for w in warnings] + [""]
    floor = tables.noise_floor_table(done)
    if not floor.empty:
        lines += ["## Noise floor (real vs real)", "",
                  "The same metrics between two disjoint random parts of the real split (`real split` above), "
                  "sized like the protocol where the data allows (else the smaller side's size kept and the rest "
                  "on the other, else halves; intra-FID: the two halves of each class's real images, fewer per "
                  "side than the protocol, so it errs high): differences between heads smaller than these are "
                  "not evidence. "
                  "KID's ± is its "
                  "standard error over new draws of both sets, from the spread of its 100 subsets"
                  + (" (each of the size in the last column)" if "KID subset size" in floor else "")
                  + "; on real vs real it overstates, to the safe side."
                  + (" A KID without ± has no error: a set of under 4 images, or runs that recorded only a spread "
                     "from which it cannot be computed." if tables.kid_without_error(floor) else ""), "",
                  _md(floor)]
    lines += ["## Main table (the paper's layout)", "", _md(tables.metric_table(done, tables.PAPER_METRICS), index=True)]
    if "head" in done and (done["head"] == "concat").any():
        lines += ["", CONCAT_STAGE_NOTE]
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
              "metric). KID: torch-fidelity's unbiased KID on subsets of min(1000, n) images (half the "
              "smaller set where that would draw more than half of both sets), ×10³ in Inception space as in the "
              "literature, raw in the classifier spaces (whose features give KIDs in the tens to hundreds). "
              "Density and coverage: "
              "Naeem et al. (2020), k = 5, on the whole sets; within-class coverage: the same coverage inside each "
              "class (on up to `eval.diversity_pairs_max` images per side), averaged. Diversity ratio: mean pairwise "
              "feature distance of generated / real images of a class (1 = as diverse as the data). Near-duplicate "
              "rate: share of a class's generated images whose nearest generated neighbour is closer than 95% of "
              "real images are to theirs (real data: about 0.05); a class above `eval.collapse_threshold` (0.5) "
              "counts as collapsed. Class acc.: the feature space's classifier agrees with the requested label.", "",
              _md(tables.metric_table(done, tables.EXTRA_METRICS), index=True)]
    best = tables.best_vs_final_table(done)
    if not best.empty:  # only runs that kept a best checkpoint (eval.best_metric)
        lines += ["## Best checkpoint vs final", "",
                  "The generator with the best curve score (`eval.best_metric`, chosen among the curve evaluations, "
                  "the final generator included) evaluated again with the final protocol, beside the final "
                  "generator (the paper scored its AC-GAN \"at its prime\"). Choosing the best on the curve and "
                  "then scoring it flatters it slightly; the tables above use the final generator only. "
                  "`best = final`: runs whose best was their last iteration.", "", _md(best)]
    lines += finetune.section(done, out_dir, title, curves)  # only for runs made with finetune.parent
    published = tables.published_values(done)
    if not published.empty:
        lines += ["## Published values", "", f"Source: {tables.PAPER_SOURCE}. Only values we could verify; empty = "
                  "not verified. Shown only for datasets this sweep evaluated in Inception space (the paper's); "
                  "protocols still differ (the paper: 10k real vs 5k fake on CIFAR-10), so compare with care.", "",
                  _md(published)]
    paired = tables.paired_vs_projection(done) if not done.empty else pd.DataFrame()
    lines += ["## Each head against projection (paired by seed, Holm-corrected)", "",
              "difference = head − projection on the same seed, mean over seeds (KID in the unit its metric row "
              "names). Per metric the heads "
              "form one family: `p_holm` is the paired t-test's p-value after Holm's correction (where all of a head's "
              "differences are equal, zero variance, the exact sign-flip test's 2 / 2^n instead), the interval "
              "[ci_low, ci_high] is the simultaneous 95% (Bonferroni) interval, `effect_dz` the mean difference "
              "over the differences' std. `reference`: the real-vs-real noise floor (FID, intra-FID, KID) or the "
              "real ceiling (modes, KL). A verdict other than \"no clear difference\" needs p_holm < 0.05; on "
              "FID and intra-FID it adds \"by less than the real-vs-real floor\" where the difference is smaller "
              "than the floor (consistent over seeds, but within what two halves of the real data differ by). "
              "How many seeds a verdict needs (the test's power at alpha = 0.05 / the number of heads tested "
              "against projection, Bonferroni, which Holm never needs more than): `detectable` is the smallest "
              "true difference "
              "these seeds would detect with 80% probability at the observed seed-to-seed spread of the "
              "differences, `pairs_80` the seeds (pairs) that would detect the observed difference with 80% "
              "probability (\"> 1000\": no seed budget will). Both come from the few differences at hand, whose "
              "spread is itself uncertain: a planning estimate, not a result.", "",
              _md(tables.format_paired(paired))]
    lines += tables.seed_cost_lines(done) if not paired.empty else []

    lines += ["## Figures", ""]
    for column in sorted(done["column"].unique()) if not done.empty else []:
        lines += [f"### {column}", ""]
        for path in (plots.curve_plot(curves, column, out_dir) if not curves.empty else None,
                     plots.per_class_plot(per_class, column, out_dir) if not per_class.empty else None):
            if path is not None:
                lines += [f"![{path.stem}]({path.name})", ""]
        images = plots.copy_run_images(done, column, out_dir)
        samples = {h: f["samples"] for h, f in images.items() if "samples" in f}
        if samples:
            lines += ["Final samples (rows = classes, same z down each column), lowest seed of each head:", "",
                      image_row(samples, "samples")]
        morphs = {h: f["morph"] for h, f in images.items() if "morph" in f}
        if morphs:
            lines += ["Category morphing (fixed z per row; the generator's conditional-BN parameters mixed from "
                      "one class to another left to right, the classes named in each figure, "
                      "`figures.morph_classes`):", "", image_row(morphs, "morph")]

    lines += ["## Run status", "", _md(tables.status_table(runs))]
    atomic_write_text(out_dir / "runs.csv", runs.to_csv(index=False))
    atomic_write_text(out_dir / "curves.csv", curves.drop(columns=["column"], errors="ignore").to_csv(index=False))
    atomic_write_text(out_dir / "per_class.csv", per_class.drop(columns=["column"], errors="ignore").to_csv(index=False))
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    if link:
        _link(sweep_dir / "report.md", report)
    return report


IMAGES_PER_ROW = 5  # the paper's five heads side by side; more heads continue on a second row


def image_row(images: dict[str, Path], kind: str) -> str:
    """Images side by side: a markdown table with one column per head (its name above its image), at most
    IMAGES_PER_ROW per row, in the tables' head order."""
    heads = sorted(images, key=lambda h: tables.head_sort_key(pd.Series([h])).iloc[0])
    chunks = [heads[i:i + IMAGES_PER_ROW] for i in range(0, len(heads), IMAGES_PER_ROW)]
    width = len(chunks[0])
    rows = []
    for i, chunk in enumerate(chunks):
        pad = [""] * (width - len(chunk))
        names = [f"**{h}**" for h in chunk] + pad
        if i == 0:
            rows += ["| " + " | ".join(names) + " |", "|" + "|".join([":---:"] * width) + "|"]
        else:
            rows.append("| " + " | ".join(names) + " |")
        rows.append("| " + " | ".join([f"![{kind} {h}]({images[h].name})" for h in chunk] + pad) + " |")
    return "\n".join(rows) + "\n"


def _link(link: Path, target: Path) -> None:
    """Point the sweep directory at its report (a relative symlink, replaced atomically)."""
    if link.resolve() == target.resolve():
        return
    tmp = link.with_name(".report.md.link")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target.resolve(), link.parent.resolve()), tmp)
    os.replace(tmp, link)


# ---- where a report may go --------------------------------------------------------------------------------
# A report folder: report.md, the three CSVs and the PNGs named below. Writing one never replaces another
# sweep's report without `overwrite` (report.overwrite=true, --overwrite); the same sweep's is refreshed.

REPORT_NAMES = ("report.md", "runs.csv", "curves.csv", "per_class.csv")
# Hidden concat's injection point below 128px is this harness's guess: said wherever concat runs are reported.
CONCAT_STAGE_NOTE = ("Hidden concat (`concat`) joins the label embedding to the feature map before discriminator block "
                     "`head.stage` (null = the middle of the trunk). The paper's code does so after block 3 of 6 at "
                     "128px; no 32px code was published, so below 128px the stage is a guess: "
                     "`python -m cgan_bench -m +sweep=concat_stage` shows how much it matters.")
REPORT_PNGS = ("curves_*.png", "per_class_*.png", "samples_*.png", "morph_*.png", "finetune_*.png",
               "curves_*.pdf", "per_class_*.pdf", "samples_*.pdf", "morph_*.pdf", "finetune_*.pdf")  # PDFs: for papers
OWN_FOLDER = "report"  # every multirun writes <sweep dir>/report/, linked from <sweep dir>/report.md


class ReportExists(Exception):
    """The destination holds another sweep's report (or is no folder): one line, nothing written there."""


def report_files(folder: Path) -> list[Path]:
    """The files of a report in `folder` (report.md last, so a reader never sees it before its figures)."""
    folder = Path(folder)
    found = {p for pattern in REPORT_PNGS for p in folder.glob(pattern)}
    found |= {folder / n for n in REPORT_NAMES}
    return sorted((p for p in found if p.is_file() or p.is_symlink()), key=lambda p: (p.name == "report.md", p.name))


def built_from(folder: Path) -> Path | None:
    """The sweep directory the report in `folder` was built from (its `Sweep directory:` line, resolved from the
    working directory), or None where there is no readable report.md."""
    try:
        head = (Path(folder) / "report.md").read_text(errors="replace")[:4000]
    except OSError:
        return None
    found = re.search(r"^Sweep directory: `([^`]*)`", head, re.MULTILINE)
    return Path(found.group(1)).resolve() if found else None


def refusal(out_dir: Path, sweep_dir: Path, overwrite: bool, setting: str) -> str | None:
    """Why `sweep_dir`'s report may not be written to `out_dir` (None: it may). A folder that holds no report,
    the sweep's own folder (or one it lies in, e.g. reports/digits holding runs/) and a report built from the
    same sweep are written; another sweep's report only with `setting` (the overwrite option's name)."""
    out_dir, sweep = Path(out_dir), Path(sweep_dir).resolve()
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        return f"{out_dir} exists and is not a folder"
    if sweep.is_relative_to(out_dir.resolve()) or out_dir.resolve() == sweep / OWN_FOLDER or not report_files(out_dir):
        return None
    source = built_from(out_dir)
    if source == sweep or overwrite:
        return None
    return (f"{out_dir} already holds the report of {source or 'another sweep'} "
            f"({setting} replaces it)")


def write_report(sweep_dir: Path, out_dir: Path, title: str | None = None, overwrite: bool = False,
                 setting: str = "--overwrite") -> Path:
    """(Re)build `sweep_dir`'s report into `out_dir`: built beside it, then moved in file by file, the old
    report's files that the new one lacks removed (nothing else in the folder is touched). Raises ReportExists
    where `refusal` says no. `<sweep_dir>/report.md` is linked to it unless that would take the link away from
    the sweep's own report (`<sweep_dir>/report/`) or from another report it points at."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    reason = refusal(out_dir, sweep_dir, overwrite, setting)
    if reason:
        raise ReportExists(reason)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".building-") as tmp:
        build_report(sweep_dir, Path(tmp), title, link=False)
        _install(Path(tmp), out_dir, copy=False)
    report = out_dir / "report.md"
    own, link = sweep_dir / OWN_FOLDER, sweep_dir / "report.md"
    # a copy built elsewhere (e.g. --out /tmp/x) never takes the link from a report that exists: the sweep's
    # own report/ or the one it already points at (the committed examples: runs/report.md -> ../report.md)
    linked_elsewhere = link.is_symlink() and link.exists() and link.resolve() != report.resolve()
    if out_dir.resolve() == own.resolve() or not ((own / "report.md").exists() or linked_elsewhere):
        _link(link, report)
    return report


def publish_report(sweep_dir: Path, target: Path, overwrite: bool = False,
                   setting: str = "report.overwrite=true") -> Path:
    """Copy the sweep's finished report folder (`<sweep_dir>/report/`) to `target` (the same rules as
    write_report; ReportExists where they say no)."""
    reason = refusal(Path(target), Path(sweep_dir), overwrite, setting)
    if reason:
        raise ReportExists(reason)
    Path(target).mkdir(parents=True, exist_ok=True)
    _install(Path(sweep_dir) / OWN_FOLDER, Path(target), copy=True)
    return Path(target) / "report.md"


def _install(src: Path, dst: Path, copy: bool) -> None:
    new = report_files(src)
    names = {p.name for p in new}
    for old in report_files(dst):
        if old.name not in names:
            old.unlink()
    for path in new:
        if copy:
            tmp = dst / f".{path.name}.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, dst / path.name)
        else:
            os.replace(path, dst / path.name)
