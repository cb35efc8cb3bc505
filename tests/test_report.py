"""Sweeps -> report: a real smoke multirun with a failing job, the markdown checked against metrics.jsonl
aggregated here independently; W&B offline files parsed."""
import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from google.protobuf.message import DecodeError
from PIL import Image

from conftest import SMOKE, run_cli
from cgan_bench.report.__main__ import main as report_main


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2 heads x 2 seeds that complete, plus seed=-1 (a bad value) that must fail and be reported. The report is
    written to the sweep's own folder and published (copied) to reports/smoke_test. The check of every job's
    settings at the start (sweep_check) is turned off, so the bad jobs run and fail as a job fails at run time
    (settings only the data can check, a crash)."""
    root = tmp_path_factory.mktemp("sweep")
    sweep_dir, published = root / "multirun", root / "reports" / "smoke_test"
    r = run_cli("-m", "head=projection,concat", "seed=0,1,-1", *SMOKE, "sweep_name=smoke_test",
                f"hydra.sweep.dir={sweep_dir}", f"report.publish={published}", "~hydra.callbacks.sweep_jobs_valid")
    return sweep_dir, sweep_dir / "report", r


def finals_by_head(sweep_dir: Path) -> dict[str, list[dict]]:
    """The final evaluation line of each completed run, read straight from its files."""
    out = {}
    for run in sweep_dir.iterdir():
        if not (run / "status.json").exists():
            continue
        if json.loads((run / "status.json").read_text())["state"] != "completed":
            continue
        head = re.search(r"head=(\w+)", (run / ".hydra" / "overrides.yaml").read_text()).group(1)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        out.setdefault(head, []).append([x for x in lines if x["phase"] == "final"][-1])
    return out


def markdown_table(md: str, heading: str) -> pd.DataFrame:
    block = md.split(f"## {heading}")[1].split("\n## ")[0]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return pd.DataFrame(cells[2:], columns=cells[0])


def parse_cell(cell: str) -> tuple[float, float]:
    mean, std = cell.replace("**", "").split("±")
    return float(mean), float(std)


def test_multirun_exits_nonzero_but_reports_everything(sweep):
    sweep_dir, report_dir, r = sweep
    assert r.returncode == 1, r.stderr[-2000:]  # a job failed: non-zero, after the report was built
    assert "2 of 6 jobs did not complete" in r.stderr
    assert (report_dir / "report.md").exists()
    assert (sweep_dir / "report.md").resolve() == (report_dir / "report.md").resolve()
    published = sweep_dir.parent / "reports" / "smoke_test"  # report.publish: a copy of the whole folder
    assert sorted(p.name for p in published.iterdir()) == sorted(p.name for p in report_dir.iterdir())
    assert (published / "report.md").read_text() == (report_dir / "report.md").read_text()


def test_main_table_matches_independent_aggregation(sweep):
    sweep_dir, report_dir, _ = sweep
    md = (report_dir / "report.md").read_text()
    table = markdown_table(md, "Main table")
    finals = finals_by_head(sweep_dir)
    assert sorted(table["head"]) == sorted(finals) == ["concat", "projection"]
    for head, lines in finals.items():
        row = table[table["head"] == head].iloc[0]
        assert row["seeds"] == "2"
        for column, key, digits in (("digits IS", "is_mean", 3), ("digits FID", "fid", 2)):
            values = np.array([x[key] for x in lines])
            mean, std = parse_cell(row[column])
            assert mean == pytest.approx(values.mean(), abs=0.51 * 10 ** -digits)
            assert std == pytest.approx(values.std(ddof=1), abs=0.51 * 10 ** -digits)
    # bold only where the best head beats the runner-up in a paired t-test over seeds (scipy, here)
    from scipy import stats
    fid_by_seed = {}
    for run in sweep_dir.iterdir():
        if (run / "status.json").exists() and json.loads((run / "status.json").read_text())["state"] == "completed":
            cfg = (run / ".hydra" / "overrides.yaml").read_text()
            key = (re.search(r"head=(\w+)", cfg).group(1), int(re.search(r"seed=(-?\d+)", cfg).group(1)))
            fid_by_seed[key] = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]["fid"]
    best = min(finals, key=lambda h: np.mean([x["fid"] for x in finals[h]]))
    other = next(h for h in finals if h != best)
    p = stats.ttest_rel([fid_by_seed[(best, s)] for s in (0, 1)], [fid_by_seed[(other, s)] for s in (0, 1)]).pvalue
    assert table[table["head"] == best].iloc[0]["digits FID"].startswith("**") == bool(p < 0.05)
    assert not table[table["head"] == other].iloc[0]["digits FID"].startswith("**")


def test_extra_metrics_and_paired_comparison(sweep):
    sweep_dir, report_dir, _ = sweep
    md = (report_dir / "report.md").read_text()
    extra = markdown_table(md, "Intra-class and distribution metrics")
    finals = finals_by_head(sweep_dir)
    for head, lines in finals.items():
        mean, _ = parse_cell(extra[extra["head"] == head].iloc[0]["digits intra-FID"])
        assert mean == pytest.approx(np.mean([x["intra_fid_mean"] for x in lines]), abs=0.006)
    paired = markdown_table(md, "Each head against projection")
    fid_row = paired[(paired["head"] == "concat") & (paired["metric"] == "FID")].iloc[0]
    by_seed = {}
    for run in sweep_dir.iterdir():
        if (run / ".hydra").exists() and (run / "per_class.csv").exists():  # a run (not the report folder)
            cfg = (run / ".hydra" / "overrides.yaml").read_text()
            head = re.search(r"head=(\w+)", cfg).group(1)
            seed = int(re.search(r"seed=(-?\d+)", cfg).group(1))
            final = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
            by_seed[(head, seed)] = final["fid"]
    diffs = [by_seed[("concat", s)] - by_seed[("projection", s)] for s in (0, 1)]
    assert float(fid_row["difference"]) == pytest.approx(np.mean(diffs), rel=1e-3, abs=1e-3)
    assert fid_row["pairs"] == "2"


def test_failed_jobs_appear_in_the_status_table(sweep):
    _, report_dir, _ = sweep
    md = (report_dir / "report.md").read_text()
    status = markdown_table(md, "Run status")
    assert len(status) == 6
    failed = status[status["state"] == "failed"]
    assert len(failed) == 2 and all("seed" in reason for reason in failed["reason"])
    assert (status["state"] == "completed").sum() == 4


def test_csvs_parse_and_plots_are_pngs(sweep):
    _, report_dir, _ = sweep
    runs = pd.read_csv(report_dir / "runs.csv")
    curves = pd.read_csv(report_dir / "curves.csv")
    per_class = pd.read_csv(report_dir / "per_class.csv")
    assert len(runs) == 6 and set(runs["state"]) == {"completed", "failed"}
    assert set(curves["phase"]) == {"final"} and len(curves) == 4
    assert len(per_class) == 4 * 10 and set(per_class["class"]) == set(range(10))
    md = (report_dir / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert any(i.startswith("per_class_") for i in images) and any(i.startswith("samples_") for i in images)
    assert any(i.startswith("morph_") for i in images)
    for name in images:
        with Image.open(report_dir / name) as img:
            img.verify()
            assert img.format == "PNG"


def test_report_cli_rebuilds_and_handles_bad_paths(sweep, tmp_path, capsys):
    sweep_dir, _, _ = sweep
    assert report_main([str(sweep_dir), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").exists()
    assert report_main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


# ---- W&B offline -------------------------------------------------------------------------------------

def read_wandb_records(path: Path) -> list:
    """Parse a .wandb file: a ':W&B' header, then LevelDB-log records (32 KiB blocks) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # the writer has not flushed this record yet
            raise DecodeError(f"{path} ends inside a record")
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding up to the end of a block
            pos += left - 7 - length
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def read_complete(path: Path, wait_s: float = 60.0) -> list:
    """The records of a finished run's .wandb file once W&B's writer (its own service process) has flushed them
    all, i.e. up to the `exit` record it writes last: on a loaded machine finish() can return while the file is
    still being written, which reads as a corrupt or truncated tail or as records missing (CI saw both)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            records = read_wandb_records(path)
            if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
                return records
        except DecodeError:  # google.protobuf's
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def history_rows(records) -> list[dict]:
    """History records as dicts; nested values (images, tables) arrive as key paths and are rebuilt."""
    rows = []
    for r in records:
        if r.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in r.history.item:
            path = [item.key] if item.key else list(item.nested_key)
            node = row
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = json.loads(item.value_json)
        rows.append(row)
    return rows


@pytest.mark.slow
def test_wandb_offline_run_has_group_tags_metrics_and_images(tmp_path):
    run_dir = tmp_path / "run"
    clean_env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # let wandb.mode=offline decide
    r = subprocess.run([sys.executable, "-m", "cgan_bench", *SMOKE, "train.iterations=3", "seed=4",
                        "wandb.mode=offline", f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                       env=clean_env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = read_complete(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == "run" and run.job_type == "projection"
    assert {"digits", "projection", "seed4", "train.iterations=3", "seed=4"} <= set(run.tags)
    history = history_rows(records)
    train = [h for h in history if "train/d_loss" in h]
    assert [h["iteration"] for h in train] == [1, 2, 3]
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["train/d_loss"] for h in train] == pytest.approx([x["d_loss"] for x in logged if x["phase"] == "train"])
    final = [h for h in history if "final/fid" in h]
    assert len(final) == 1 and final[0]["iteration"] == 3
    assert final[0]["final/fid"] == pytest.approx(logged[-1]["fid"])
    assert final[0]["final/per_class"]["_type"] == "table-file" and final[0]["final/per_class"]["nrows"] == 10
    images = [h for h in history if "samples" in h]
    assert images and images[0]["samples"]["_type"] == "image-file"
    pngs = list(run_dir.glob("wandb/offline-run-*/files/media/images/samples_*.png"))
    assert pngs
    with Image.open(pngs[0]) as img:
        assert img.size == Image.open(run_dir / "samples" / "final_raw.png").size  # W&B gets the pixel grid
    keys = {i.key for i in run.config.update}
    assert {"head", "train", "dataset", "seed"} <= keys
    text = "\n".join(p.read_text(errors="ignore") for p in run_dir.rglob("*") if p.is_file() and p.suffix in
                     (".yaml", ".json", ".log", ".jsonl", ".txt"))
    assert "api_key" not in text.lower()


@pytest.mark.slow
def test_each_sweep_job_gets_its_own_wandb_run(tmp_path):
    clean_env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "cgan_bench", "-m", "head=projection,concat", *SMOKE,
                        "wandb.mode=offline", f"hydra.sweep.dir={sweep}"],
                       capture_output=True, text=True, env=clean_env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = {}
    for run_dir in sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").exists()):
        files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, run_dir
        record = next(x.run for x in read_complete(files[0]) if x.WhichOneof("record_type") == "run")
        runs[record.run_id] = (record.job_type, record.run_group)
        history = history_rows(read_complete(files[0]))
        assert [h["iteration"] for h in history if "train/d_loss" in h] == [1, 2]  # only this job's steps
    assert len(runs) == 2  # two distinct runs, not one reused
    assert sorted(job for job, _ in runs.values()) == ["concat", "projection"]
    assert {group for _, group in runs.values()} == {"sweep"}


def test_swept_settings_other_than_head_and_seed_are_kept_apart():
    from cgan_bench.report.collect import variants
    rows = [{"run": f"{i}", "overrides": f"head={h} seed={s} +adam={a} train=smoke"}
            for i, (h, s, a) in enumerate([("projection", 0, "A"), ("projection", 1, "A"), ("concat", 0, "B")])]
    assert variants(rows) == {"0": "+adam=A", "1": "+adam=A", "2": "+adam=B"}
    same = [{"run": "0", "overrides": "head=projection seed=0 train=smoke"},
            {"run": "1", "overrides": "head=concat seed=1 train=smoke"}]
    assert variants(same) == {"0": "", "1": ""}
    # where a run writes its report or logs is no setting: runs merged from two sweeps stay one variant
    merged = [{"run": "0", "overrides": "head=tac seed=0 +sweep=stacked wandb.mode=disabled"},
              {"run": "1", "overrides": "head=tac seed=1 +sweep=stacked report_dir=/tmp/r wandb.mode=offline"},
              {"run": "2", "overrides": "head=tac seed=2 +sweep=stacked hydra.launcher.n_jobs=2 train.lr=0.1"}]
    assert variants(merged) == {"0": "", "1": "", "2": "train.lr=0.1"}


@pytest.mark.slow
def test_an_override_equal_to_the_default_is_no_variant(tmp_path):
    """Three real sweeps into one folder: no lr override, `train.lr=2e-4` (train=smoke's own value) and
    `train.lr=1e-4`. Runs are told apart by the lr they trained with, read from their configs, not by whether
    the command line named it: two variants, the default run labelled as the run that named its value."""
    from cgan_bench.report.collect import load_sweep
    sweep_dir = tmp_path / "grown"
    for seed, extra in ((0, []), (1, ["train.lr=2e-4"]), (2, ["train.lr=1e-4"])):
        r = run_cli("-m", f"seed={seed}", *extra, *SMOKE, "train.iterations=1", f"hydra.sweep.dir={sweep_dir}")
        assert r.returncode == 0, r.stderr[-2000:]
    runs = load_sweep(sweep_dir).runs.set_index("seed")
    assert list(runs.loc[[0, 1, 2], "lr"]) == [2e-4, 2e-4, 1e-4]  # what each trained with, from config.yaml
    # Hydra writes a swept float as it parsed it (`train.lr=0.0002` in overrides.yaml): that spelling labels both
    assert list(runs.loc[[0, 1, 2], "variant"]) == ["train.lr=0.0002", "train.lr=0.0002", "train.lr=0.0001"]
    md = (sweep_dir / "report" / "report.md").read_text()
    table = markdown_table(md, "Main table").set_index("head")
    assert {c.rsplit(" ", 1)[0] for c in table.columns} == {"digits train.lr=0.0001", "digits train.lr=0.0002"}
    assert table.loc["projection", "digits train.lr=0.0002 seeds"] == "2"  # the default run and the named one


def test_protocol_names_the_training_precision(sweep):
    """bf16 changes numbers, so the protocol says which precision trained the runs (read from their configs)."""
    _, report_dir, _ = sweep
    md = (report_dir / "report.md").read_text()
    assert markdown_table(md, "Protocol").columns[0] == "setting"  # key/value rows, one column per dataset
    assert protocol_values(md, "training precision") == ["fp32"]  # train=smoke inherits train=paper's fp32
    assert set(pd.read_csv(report_dir / "runs.csv")["train_precision"]) == {"fp32"}
    committed = Path(__file__).parents[1] / "reports" / "digits" / "report.md"  # train=quick: bf16
    assert protocol_values(committed.read_text(), "training precision") == ["bf16"]


def protocol_values(md: str, setting: str) -> list[str]:
    """One setting of the Protocol table, one value per dataset column."""
    table = markdown_table(md, "Protocol")
    if table.columns[0] == "setting":  # key/value rows
        return list(table.set_index("setting").loc[setting])
    return list(table[setting])  # a committed report built before the key/value layout: one row per dataset


# ---- where reports land ------------------------------------------------------------------------------------

def job_dir(sweep: Path) -> None:
    """One run directory (a job that never started) in `sweep`: the report command refuses a folder without any."""
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "config.yaml").write_text("seed: 0\n")


def test_reports_live_with_their_sweep_and_never_replace_another_sweeps(tmp_path, monkeypatch, capsys):
    """The default output is SWEEP/report (linked from SWEEP/report.md); --out onto another sweep's report is
    refused (exit 2, one line, nothing written) unless --overwrite; the same sweep's report is refreshed."""
    from cgan_bench.report.build import built_from
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        job_dir(tmp_path / name)
        assert report_main([name]) == 0
        assert (tmp_path / name / "report.md").resolve() == (tmp_path / name / "report" / "report.md").resolve()
    assert report_main(["a", "--out", "pub"]) == 0 and built_from(tmp_path / "pub") == tmp_path / "a"
    assert report_main(["a", "--out", "pub"]) == 0  # the same sweep: refreshed
    capsys.readouterr()
    assert report_main(["b", "--out", "pub"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(err) == 1 and err[0].startswith("error: pub already holds the report of") and "--overwrite" in err[0]
    assert built_from(tmp_path / "pub") == tmp_path / "a"
    assert (tmp_path / "b" / "report.md").resolve() == (tmp_path / "b" / "report" / "report.md").resolve()
    assert report_main(["b", "--out", "pub", "--overwrite"]) == 0 and built_from(tmp_path / "pub") == tmp_path / "b"
    # the committed examples' layout: runs inside the report folder, rebuilt with --out as before
    job_dir(tmp_path / "pub2" / "runs")
    assert report_main(["pub2/runs", "--out", "pub2"]) == 0
    assert report_main(["pub2/runs", "--out", "pub2"]) == 0
    assert (tmp_path / "pub2" / "runs").is_dir() and built_from(tmp_path / "pub2") == tmp_path / "pub2" / "runs"
    (tmp_path / "file").write_text("x")
    assert report_main(["a", "--out", "file", "--overwrite"]) == 2


def test_publish_copies_the_report_and_refuses_another_sweeps(tmp_path):
    from omegaconf import OmegaConf
    from cgan_bench.report.build import ReportExists, built_from, publish_report, write_report
    from cgan_bench.report.callback import publish_target
    for name in ("a", "b"):
        write_report(tmp_path / name, tmp_path / name / "report", name)
    target = tmp_path / "reports" / "same"
    publish_report(tmp_path / "a", target)
    assert (target / "report.md").read_text() == (tmp_path / "a" / "report" / "report.md").read_text()
    (target / "notes.txt").write_text("mine")  # files that are no report's are never touched
    with pytest.raises(ReportExists, match="report.overwrite=true"):
        publish_report(tmp_path / "b", target)
    assert built_from(target) == tmp_path / "a"
    publish_report(tmp_path / "b", target, overwrite=True)
    assert built_from(target) == tmp_path / "b" and (target / "notes.txt").read_text() == "mine"
    cfg = OmegaConf.create({"report": {"publish": None, "overwrite": False}, "report_dir": None})
    assert publish_target(cfg, "x") is None
    assert publish_target(OmegaConf.merge(cfg, {"report": {"publish": "out/x"}}), "n") == Path("out/x")
    assert publish_target(OmegaConf.merge(cfg, {"report_dir": "old"}), "n") == Path("old/n")  # deprecated alias


@pytest.mark.slow
def test_two_sweeps_with_the_same_name_keep_their_own_reports(tmp_path):
    """Each sweep's report is in its own folder; publishing to the same place is refused (one warning line,
    the exit code unchanged) until report.overwrite=true; nothing lands in ./reports unless asked."""
    def sweep(name: str, *extra: str):
        r = run_cli("-m", *SMOKE, "train.iterations=1", "sweep_name=same", f"hydra.sweep.dir={name}",
                    "report.publish=published/same", *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout + r.stderr
    from cgan_bench.report.build import built_from
    sweep("first")
    out = sweep("second")
    assert not (tmp_path / "reports").exists()
    for name in ("first", "second"):
        md = (tmp_path / name / "report" / "report.md").read_text()
        assert md.startswith("# cgan-bench report: same") and f"Sweep directory: `{name}`" in md
        assert (tmp_path / name / "report.md").resolve() == (tmp_path / name / "report" / "report.md").resolve()
    refused = [line for line in out.splitlines() if "report not published" in line]
    assert len(refused) == 1 and "published/same already holds the report of" in refused[0], out[-3000:]
    assert built_from(tmp_path / "published" / "same").name == "first"
    sweep("second", "report.overwrite=true")  # its job is already completed: skipped, the report rebuilt
    assert built_from(tmp_path / "published" / "same").name == "second"


@pytest.mark.parametrize("failed_job", [False, True])
def test_a_report_that_cannot_be_built_is_one_line_and_exit_1_and_failed_jobs_still_listed(
        tmp_path, capsys, failed_job):
    """Hydra turns an exception in on_multirun_end into a warning and exit code 0: a sweep whose report failed (here
    for real: a file takes the report folder's path) looked finished, and its failed jobs went unreported."""
    from omegaconf import OmegaConf
    from cgan_bench.report.callback import ReportOnMultirunEnd
    from test_verdicts import write_run
    sweep_dir = tmp_path / "multirun"
    for seed in (0, 1):
        write_run(sweep_dir, "projection", seed)
    if failed_job:
        (sweep_dir / "projection_s1" / "status.json").write_text(json.dumps(
            {"state": "failed", "iteration": 3, "total_iterations": 10, "reason": "provoked"}))
    (sweep_dir / "report").write_text("not a folder")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}, "sweep_name": "t",
                            "report": {"publish": None, "overwrite": False}, "report_dir": None})
    with pytest.raises(SystemExit) as stop:
        ReportOnMultirunEnd().on_multirun_end(cfg)
    assert stop.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("error: the sweep's report could not be built (")
    assert lines[0].endswith(f"rebuild it with `python -m cgan_bench.report {sweep_dir}`")
    assert len(lines) == (2 if failed_job else 1)
    if failed_job:
        assert lines[1] == f"error: 1 of 2 jobs did not complete; their run directories are in {sweep_dir}"
    assert (sweep_dir / "projection_s0" / "metrics.jsonl").exists()  # the finished runs are untouched


def test_a_corrupt_status_file_is_a_job_that_did_not_complete_not_a_silent_exit_0(tmp_path, capsys):
    """A status.json with bytes that are not UTF-8 broke both the report and the job listing after it, and
    Hydra turned that into a warning and exit code 0. Now the run is listed as unknown and the sweep exits 1."""
    from omegaconf import OmegaConf
    from cgan_bench.report.callback import ReportOnMultirunEnd
    from test_verdicts import write_run
    sweep_dir = tmp_path / "multirun"
    for seed in (0, 1):
        write_run(sweep_dir, "projection", seed)
    (sweep_dir / "projection_s1" / "status.json").write_bytes(b'{"state": "compl\xffeted"}')
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}, "sweep_name": "t",
                            "report": {"publish": None, "overwrite": False}, "report_dir": None})
    with pytest.raises(SystemExit) as stop:
        ReportOnMultirunEnd().on_multirun_end(cfg)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert f"error: 1 of 2 jobs did not complete; see {sweep_dir / 'report' / 'report.md'}" in err
    status = markdown_table((sweep_dir / "report" / "report.md").read_text(), "Run status").set_index("run")
    assert status.loc["projection_s1", "state"] == "unknown"
    assert status.loc["projection_s1", "reason"] == "status.json unreadable (UnicodeDecodeError)"
