"""The report's layout, read back from report.md built from run directories written here: the protocol as
key/value rows, one number format per column (tabulate's re-formatting off), no bold on ties, sample grids
side by side, a warning where the evaluator used fewer images than asked, published values only beside
Inception-space columns of their dataset; and the evaluator's own record and warning of a cut count."""
import json
import logging
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from cgan_bench.report.build import build_report
from cgan_bench.report.tables import UNIT_COLUMNS  # per metric: difference, interval, reference, detectable
from test_verdicts import final_numbers, table

HEADS = ("projection", "concat", "acgan")


def write_run(root, name: str, head: str, seed: int, dataset: str, final: dict, dataset_cfg: dict | None = None,
              images: bool = True, train_cfg: dict | None = None) -> None:
    """A completed run directory as the harness writes it (config, overrides, status, metrics, samples)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "head": {"name": head}, "dataset": {"name": dataset, "resolution": 16, **(dataset_cfg or {})},
           "train": {"n_dis": 2, "batch_d": 64, "batch_g": 128, "lr": 0.002, "beta1": 0.0, "beta2": 0.9,
                     **(train_cfg or {})},
           "model": {"g_ch": 32, "d_ch": 32}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"head={head}", f"seed={seed}",
                                                                   f"dataset={dataset}"]))
    (run / "status.json").write_text(json.dumps({"state": "completed", "iteration": 10, "total_iterations": 10,
                                                 "wall_s": 12.34 + seed, "it_per_s": 0.8 + seed / 7}))
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 10, "phase": "final", **final}) + "\n")
    if images:  # the labelled figures and their pixel grids (*_raw.png) of a current run
        (run / "samples").mkdir()
        for name in ("final", "final_raw", "morph", "morph_raw"):
            Image.new("RGB", (40, 24), (seed * 40, 0, 0)).save(run / "samples" / f"{name}.png")


def protocol(**fields) -> dict:
    base = {"feature_space": "classifier", "n_real": 1797, "n_fake": 5000, "n_generated": 10000,
            "real_split": "train", "isc_splits": 10, "n_real_requested": 10000, "n_fake_requested": 5000,
            "n_generated_requested": 10000, "held_out_split": "test", "classifier_test_accuracy": 0.9812}
    return {**base, **fields}


INTRA_PER_CLASS = "per class: 500 generated vs all real train images of the class (50-60), 3 of 3 classes"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """digits: 3 heads x 3 seeds, n_real cut (10000 asked, 1797 used), collapsed classes tied at 0, class
    accuracy tied at the shown digits, concat clearly worse FID; imagefolder (10% held out): one seed per head,
    IS exactly 8.74 for one head, all real images asked for (no warning)."""
    root = tmp_path_factory.mktemp("layout")
    for head in HEADS:
        for seed in range(3):
            numbers = final_numbers(head, seed)
            acgan = 0.01 + 0.001 * seed  # gaps that vary by seed: identical ones give a sign-flip p of 0.25
            numbers.update(fid=100.0 + seed + {"projection": 0.0, "concat": 50.0 + seed, "acgan": acgan}[head],
                           collapsed_classes=0, class_accuracy=0.95 + (4e-5 if head == "concat" else 0.0),
                           floor_fid=1234.567)
            write_run(root / "sweep", f"d_{head}_{seed}", head, seed, "digits", {**numbers, **protocol()})
        numbers = final_numbers(head, 0)
        numbers.update(is_mean=8.74 if head == "projection" else 8.685, fid=20.5 + HEADS.index(head))
        write_run(root / "sweep", f"i_{head}", head, 0, "imagefolder",
                  {**numbers, **protocol(feature_space="inception", n_real=540, n_real_requested=-1,
                                         classifier_test_accuracy=None, eval_ranks=2,
                                         intra_fid_protocol=INTRA_PER_CLASS)},
                  {"path": "/data/mine", "val_fraction": 0.1}, train_cfg={"joint_d_forward": True})
    return build_report(root / "sweep", root / "report", "layout").read_text()


def tables_in(md: str) -> dict[str, list[list[str]]]:
    """Every markdown table of the report: '<section> #<k>' -> rows of cells (header first, separator dropped)."""
    out = {}
    for section in md.split("\n## ")[1:]:
        heading, lines, k = section.splitlines()[0], section.splitlines(), 0
        block = []
        for line in lines + [""]:
            if line.startswith("|"):
                block.append([c.strip() for c in line.strip().strip("|").split("|")])
            elif block:
                out[f"{heading} #{k}"] = [block[0]] + block[2:]
                block, k = [], k + 1
    return out


NUMERIC = re.compile(r"^-?\d+(\.\d+)?(e[-+]\d+)?( ± \d+(\.\d+)?)?$")


def decimals(cell: str) -> tuple:
    """The format of a numeric cell: decimals of each number in it ('8.740 ± 0.469' -> (3, 3)); None if text."""
    cell = cell.replace("**", "")
    if not NUMERIC.match(cell):
        return None
    return tuple(len(m.group(1) or "") for m in re.finditer(r"-?\d+(?:\.(\d+))?", cell.split("e")[0]))


def significant(cell: str) -> int:
    """Significant digits shown ('0.02053' -> 4, '4.490e-06' -> 4, '1.000' -> 4, '0.000' -> 4)."""
    digits = cell.lstrip("-").split("e")[0].replace(".", "")
    return len(digits.lstrip("0")) if digits.strip("0") else len(digits)


def test_protocol_is_key_value_rows_with_one_column_per_dataset(report):
    rows = tables_in(report)["Protocol #0"]
    header, body = rows[0], rows[1:]
    assert header == ["setting", "digits", "imagefolder"]
    assert all(len(r) == 3 for r in body)
    settings = [r[0] for r in body]
    assert len(settings) == len(set(settings)) >= 15
    card = {r[0]: r[1:] for r in body}
    assert card["n real"] == ["1797", "540"] and card["feature space"] == ["classifier", "inception"]
    assert card["domain classifier held-out acc."] == ["0.981", ""]
    assert card["seeds"] == ["0, 1, 2", "0"] and card["batch D/G"] == ["64/128", "64/128"]
    held_out = card["held-out split (classifier acc., mode ceiling)"]
    assert held_out[0] == "the dataset's test split" and held_out[1].startswith("10% of each class")
    # the per-class intra-FID protocol and a sharded evaluation, where the runs recorded them (imagefolder here)
    assert card["intra-FID"] == ["", INTRA_PER_CLASS] and card["evaluation ranks (sharded)"] == ["", "2"]
    # a training that is not the paper's D step says so (imagefolder's runs here: train.joint_d_forward=true)
    assert card["D calls per D step"] == ["2 (real then fake: the paper's)",
                                          "1 (real and fake together: train.joint_d_forward)"]


def test_a_cut_sample_count_is_a_warning_under_the_protocol(report):
    block = report.split("## Protocol")[1].split("\n## ")[0]
    warnings = [line for line in block.splitlines() if "requested" in line]
    assert warnings == ["- digits: n_real: 10000 requested, 1797 used (all the images of the real train split)"]


def test_every_column_has_one_number_format(report):
    found = tables_in(report)
    assert {"Main table (the paper's layout) #0", "Noise floor (real vs real) #0", "Run status #0"} <= set(found)
    for name, rows in found.items():
        header, body = rows[0], rows[1:]
        if name.startswith("Protocol"):  # key/value: a row is one setting, its cells share a format
            groups = {r[0]: r[1:] for r in body}
        elif name.startswith("Each head against projection"):
            metric = header.index("metric")
            groups = {}
            for j, col in enumerate(header):
                for r in body:
                    key = (col, r[metric]) if col in UNIT_COLUMNS else col
                    groups.setdefault(key, []).append(r[j])
            for col in ("p_holm", "effect_dz"):
                assert all(significant(c) == 4 for c in groups.pop(col) if c), (name, col)
        else:
            groups = {col: [r[j] for r in body] for j, col in enumerate(header)}
        for key, cells in groups.items():
            formats = {decimals(c) for c in cells if c and decimals(c) is not None}
            widths = {d for f in formats for d in f}
            assert len(widths) <= 1, (name, key, cells)
    main = table(report, "Main table").set_index("head")
    assert main.loc["projection", "imagefolder IS"] == "8.740"  # not tabulate's 8.74
    assert main.loc["concat", "imagefolder IS"] == "8.685"
    assert table(report, "Noise floor").set_index("dataset").loc["digits", "FID"] == "1234.57"  # not 1235
    status = table(report, "Run status").set_index("run")
    assert status.loc["d_projection_2", "wall_s"] == "14.3" and status.loc["d_projection_2", "it_per_s"] == "1.09"


def test_bold_only_for_a_winner_not_on_ties(report):
    main = table(report, "Main table").set_index("head")
    extra = table(report, "Intra-class and distribution metrics").set_index("head")
    # every head 0 collapsed classes on every seed: "0.0 ± 0.0" everywhere, no bold
    assert set(extra["digits collapsed classes"]) == {"0.0 ± 0.0"}
    # concat 0.00004 above the others on every seed (a paired test calls it certain), but the table shows a tie
    assert set(extra["digits class acc."]) == {"0.950 ± 0.000"}
    # acgan 0.010-0.012 above projection, concat far above: a paired winner against both (Holm), which the
    # two decimals still show
    assert main.loc["projection", "digits FID"] == "**101.00 ± 1.00**"
    assert sum(c.startswith("**") for c in main["digits FID"]) == 1
    assert not any(c.startswith("**") for c in main["imagefolder FID"])  # one seed: no test, no bold


def test_sample_grids_and_morphs_are_side_by_side(report):
    figures = report.split("## Figures")[1].split("\n## ")[0]
    for kind in ("samples", "morph"):
        rows = [line for line in figures.splitlines() if line.startswith("|") and f"![{kind} " in line]
        assert len(rows) == 2  # one row per dataset column, each with every head's image
        for row in rows:
            assert re.findall(rf"!\[{kind} (\w+)\]", row) == ["concat", "acgan", "projection"]


def published_sweep(root, space: str, held_out: str = "test"):
    for head in ("projection", "concat"):
        numbers = {**final_numbers(head, 0), **protocol(feature_space=space, held_out_split=held_out)}
        write_run(root, f"c_{head}", head, 0, "cifar10", numbers, images=False)
        write_run(root, f"f_{head}", head, 0, "imagefolder", {**numbers, "held_out_split": "val"},
                  {"path": "/data/x", "val_fraction": 0.1}, images=False)
    return build_report(root, root.parent / f"report_{space}", space, link=False).read_text()


def test_published_values_only_beside_inception_columns_of_their_dataset(report, tmp_path):
    assert "## Published values" not in report  # digits and imagefolder: nothing published to compare with
    md = published_sweep(tmp_path / "inception", "inception")
    published = table(md, "Published values")
    assert published.to_dict("records") == [{"dataset": "cifar10", "head": "projection", "IS": "8.62",
                                             "FID": "17.5", "intra-FID": "", "compare with column": "cifar10"}]
    card = {r[0]: r[1:] for r in tables_in(md)["Protocol #0"][1:]}
    assert card["held-out split (classifier acc., mode ceiling)"] == ["the dataset's test split",
                                                                      "the val/ folder (training: train/)"]
    assert "## Published values" not in published_sweep(tmp_path / "classifier", "classifier")


def test_a_copy_built_elsewhere_keeps_the_sweeps_link(tmp_path):
    """The committed examples' layout (reports/x/runs/report.md -> ../report.md): rebuilding into another
    folder to look at it leaves the link alone; a sweep without a report is linked to the new one."""
    from cgan_bench.report.__main__ import main as report_main
    runs = tmp_path / "reports" / "x" / "runs"
    write_run(runs, "r0", "projection", 0, "digits", {**final_numbers("projection", 0), **protocol()}, images=False)
    assert report_main([str(runs), "--out", str(tmp_path / "reports" / "x")]) == 0
    assert (runs / "report.md").is_symlink() and str((runs / "report.md").readlink()) == "../report.md"
    assert report_main([str(runs), "--out", str(tmp_path / "look")]) == 0
    assert (tmp_path / "look" / "report.md").exists() and str((runs / "report.md").readlink()) == "../report.md"
    (tmp_path / "reports" / "x" / "report.md").unlink()  # the link dangles: the new copy takes it
    assert report_main([str(runs), "--out", str(tmp_path / "look")]) == 0
    assert (runs / "report.md").resolve() == (tmp_path / "look" / "report.md").resolve()


# ---- the evaluator records what it was asked for and warns once --------------------------------------------

class MeanStdFeatures(torch.nn.Module):
    """A tiny feature space: per-channel mean and std of the image (6 features), fixed linear logits."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.fc = torch.nn.Linear(6, n_classes)

    def forward(self, x):
        x = x.float() / 255
        f = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
        return f, self.fc(f)


class NoiseGenerator(torch.nn.Module):
    """G(z, y): an 8x8 image from z shifted by the class, in [-1, 1]."""

    def forward(self, z, y):
        return torch.tanh(z[:, :3, None, None].expand(-1, 3, 8, 8) + y[:, None, None, None])


def test_evaluator_records_requested_and_used_counts_and_warns_once(tmp_path, caplog):
    from hydra import compose, initialize_config_dir
    from cgan_bench.app import CONF_DIR
    from cgan_bench.data import ImageData
    from cgan_bench.metrics.evaluator import Evaluator
    from cgan_bench.metrics.feature_space import FeatureSpace
    from cgan_bench.train.run_dir import RunDir
    torch.manual_seed(0)
    labels = torch.arange(3).repeat_interleave(12)
    real = ImageData((torch.rand(36, 3, 8, 8) * 255).to(torch.uint8), labels, 3, "tiny", "train")
    model = MeanStdFeatures(3)
    space = FeatureSpace("tiny", "tiny-mean-std", model, classify=model.fc)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", ["eval=smoke", "eval.n_real=100", "eval.n_fake=100", "eval.n_generated=100",
                                 "eval.kid_subset_size=10"]).eval
    with caplog.at_level(logging.WARNING, logger="cgan_bench.metrics.evaluator"):
        ev = Evaluator(cfg, space, real, RunDir(tmp_path / "run"), torch.device("cpu"), z_dim=4, seed=0,
                       held_out=ImageData(real.images, real.labels, 3, "tiny", "val"))
        for phase in ("curve", "final"):
            ev.evaluate(NoiseGenerator(), 1, phase)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [  # once, at construction: not again per evaluation
        "eval.n_real=100 but the real train split has 36 images: FID/KID/precision/recall use 36",
        "eval.n_generated=100 is not a whole number per class: 99 images are generated",
        "eval.n_fake=100 but eval.n_generated=100 gives 99 class-balanced images: FID/KID/precision/recall use 99"]
    final = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert (final["n_real"], final["n_real_requested"]) == (36, 100)
    assert (final["n_fake"], final["n_fake_requested"]) == (99, 100)
    assert (final["n_generated"], final["n_generated_requested"]) == (99, 100)
    assert final["held_out_split"] == "val"
    assert np.isfinite(final["fid"])


def test_concat_runs_carry_the_note_that_their_stage_is_a_guess(report, tmp_path):
    from cgan_bench.report.build import CONCAT_STAGE_NOTE
    assert CONCAT_STAGE_NOTE in report and "+sweep=concat_stage" in CONCAT_STAGE_NOTE  # this sweep has concat runs
    for seed in range(2):  # a sweep without hidden concat does not get the note
        write_run(tmp_path / "sweep", f"p{seed}", "projection", seed, "digits", {**final_numbers("projection", seed),
                                                                                  **protocol()})
    assert CONCAT_STAGE_NOTE not in build_report(tmp_path / "sweep", tmp_path / "report", "p").read_text()


def test_report_command_titles_a_sweep_by_its_sweep_name(tmp_path):
    from cgan_bench.report.__main__ import main
    write_run(tmp_path / "runs", "p0", "projection", 0, "digits", {**final_numbers("projection", 0), **protocol()})
    (tmp_path / "runs" / "multirun.yaml").write_text(yaml.safe_dump({"sweep_name": "my_study", "seed": 0}))
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# cgan-bench report: my_study\n")
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "rep2"), "--title", "other"]) == 0
    assert (tmp_path / "rep2" / "report.md").read_text().startswith("# cgan-bench report: other\n")


def test_report_command_refuses_a_folder_without_run_directories(tmp_path):
    """A folder holding no run directory (a typo'd or not-yet-started sweep, any other folder) is refused with one
    line naming it and what to pass instead, exit code 2, nothing written (it used to get a report of "Runs: 0
    completed of 0 found"); a sweep whose every job failed has run directories and still gets its report."""
    from cgan_bench.report.__main__ import main
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    (other / "notes").mkdir(parents=True)
    (other / "multirun.yaml").write_text(yaml.safe_dump({"sweep_name": "never_ran"}))  # a sweep with no job yet
    for folder, extra in ((empty, []), (other, []), (other, ["--out", str(tmp_path / "rep")])):
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        r = subprocess.run([sys.executable, "-m", "cgan_bench.report", str(folder), *extra], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        assert r.stderr.startswith(f"error: {folder} holds no run directories") and len(r.stderr.splitlines()) == 1
        assert "a sweep directory such as multirun/" in r.stderr and "folder of run directories" in r.stderr
        assert r.stdout == "" and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    failed = tmp_path / "failed"
    write_run(failed, "0_digits_projection_s0", "projection", 0, "digits", {}, images=False)
    (failed / "0_digits_projection_s0" / "status.json").write_text(json.dumps({"state": "failed", "reason": "boom"}))
    (failed / "0_digits_projection_s0" / "metrics.jsonl").write_text("")
    assert main([str(failed)]) == 0
    assert "Runs: 0 completed of 1 found" in (failed / "report" / "report.md").read_text()
    # one run's own folder: refused (its report would land inside the run), the folder that holds it named
    run = failed / "0_digits_projection_s0"
    r = subprocess.run([sys.executable, "-m", "cgan_bench.report", str(run)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stderr == (f"error: {run} is one run's directory, not a sweep; pass the folder "
                                              f"that holds the runs ({failed.resolve()}); nothing written\n")
    assert not (run / "report").exists() and not (run / "report.md").exists()


def test_the_protocol_names_training_threads_on_a_cpu_where_recorded():
    from cgan_bench.report.tables import device_label
    g = pd.DataFrame({"device": ["cpu", "cpu"], "cpu_threads": [2, 2]})
    assert device_label(g) == "cpu (training: 2 threads)"
    assert device_label(g.assign(cpu_threads=[1, 2])) == "cpu (training: 1, 2 threads)"  # mixed: both shown
    assert device_label(pd.DataFrame({"device": ["cuda:0"], "cpu_threads": [None]})) == "cuda:0"
    assert device_label(pd.DataFrame({"device": ["cpu"]})) == "cpu"  # runs from before it was recorded


def test_a_long_column_name_makes_a_short_unique_figure_file_name():
    """A folder of runs with many differing settings made a figure name over the file system's 255 characters
    (OSError: File name too long); long names keep their start and hash the rest."""
    from cgan_bench.report.plots import _slug
    base = "imagefolder [classifier, 10 real (train) vs 100 fake] " + " ".join(f"key{i}=value{i}" for i in range(40))
    a, b = _slug(base + " train.lr=0.1"), _slug(base + " train.lr=0.2")
    assert len(a) <= 80 and len(b) <= 80 and a != b and a.startswith("imagefolder__classifier")
    assert _slug("digits train.lr=0.0002") == "digits_train_lr_0_0002"  # short names as before
