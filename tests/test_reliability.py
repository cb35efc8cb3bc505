"""Failure modes: killed and resumed runs are bit-identical, SIGTERM preempts cleanly, divergence and crashes
are recorded, corrupt checkpoints fall back, bad input is one line with exit code 2, launchers work."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cgan_bench.train.checkpoint import load_checkpoint, save_checkpoint
from conftest import SMOKE, run_cli, sweep_folders

LONG = [*SMOKE, "train.iterations=60", "train.checkpoint_every=5", "train.log_every=5", "train.sample_every=1000"]


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cgan_bench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_iteration(run_dir: Path, iteration: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"job ended early: {proc.communicate()[1][-2000:]}"
        try:
            status = json.loads((run_dir / "status.json").read_text())
            if status["state"] == "running" and status["iteration"] >= iteration:
                return status["iteration"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{run_dir} never reached iteration {iteration}")


def sigterm_until_preempted(proc: subprocess.Popen, run_dir: Path, timeout: float) -> dict:
    """SIGTERM the job, which must stop cleanly (exit 0, one line, no traceback); its status.json."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    assert "preempted by SIGTERM" in err and "Traceback" not in err
    return json.loads((run_dir / "status.json").read_text())


def final_metrics(run_dir: Path) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [x for x in lines if x["phase"] == "final"]
    assert len(final) == 1
    return {k: v for k, v in final[0].items() if k not in ("eval_s", "eval_generate_s")}  # timings


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    r = run_cli(*LONG, f"hydra.run.dir={straight}")
    assert r.returncode == 0, r.stderr[-2000:]

    proc = start_cli(*LONG, f"hydra.run.dir={killed}")
    wait_for_iteration(killed, 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = load_checkpoint(killed / "checkpoints")["iteration"]
    assert 10 <= at_kill < 60

    r = run_cli(*LONG, f"hydra.run.dir={killed}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"at iteration {at_kill}" in r.stdout + r.stderr
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    for net in ("G", "D"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"
    assert final_metrics(straight) == final_metrics(killed)
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if x["phase"] == "train"] == list(range(5, 61, 5))


@pytest.mark.slow
def test_sigterm_checkpoints_and_marks_preempted_then_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_cli(*LONG, f"hydra.run.dir={run_dir}")
    wait_for_iteration(run_dir, 6, proc)
    status = sigterm_until_preempted(proc, run_dir, timeout=120)
    assert status["state"] == "preempted" and "SIGTERM" in status["reason"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["iteration"] == status["iteration"] < 60  # the checkpoint is exactly where it stopped
    r = run_cli(*LONG, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0 and json.loads((run_dir / "status.json").read_text())["state"] == "completed"


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_marks_preempted_then_rerun_evaluates(tmp_path):
    """Slurm's SIGTERM can land in the final evaluation (minutes at the paper's protocol): the run says
    `preempted` (not a stale `running` and exit 143), writes no partial evaluation, and a rerun evaluates."""
    run_dir = tmp_path / "run"
    args = [*SMOKE, "train.iterations=2", "eval.n_generated=50000", f"hydra.run.dir={run_dir}"]
    proc = start_cli(*args)
    wait_for_iteration(run_dir, 2, proc)
    deadline = time.time() + 120
    while time.time() < deadline:  # the final checkpoint is the last thing training writes
        try:
            if torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2:
                break
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
        time.sleep(0.05)
    time.sleep(1)  # inside the 50000-image evaluation
    status = sigterm_until_preempted(proc, run_dir, timeout=300)
    assert status["state"] == "preempted" and "final evaluation" in status["reason"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [x for x in lines if x["phase"] == "final"] and not (run_dir / "per_class.csv").exists()
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if x["phase"] == "final"] == [2]
    assert [x["iteration"] for x in lines if x["phase"] == "train"] == [1, 2]  # training was not repeated


@pytest.mark.slow
def test_divergence_is_recorded_while_siblings_complete(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("-m", "train.lr=2e-4,1e10", *SMOKE, "train.iterations=6", "train.checkpoint_every=2",
                f"hydra.sweep.dir={sweep}", "sweep_name=div")
    assert r.returncode == 1  # the sweep reports a job that did not complete
    runs = pd.read_csv(sweep / "report" / "runs.csv")
    assert sorted(runs["state"]) == ["completed", "diverged"]
    bad = runs[runs["state"] == "diverged"].iloc[0]
    assert "at iteration" in bad["reason"] and ("nan" in bad["reason"] or "d_real" in bad["reason"])
    # no diverged state is ever checkpointed: any checkpoint left is earlier and finite
    state = load_checkpoint(Path(bad["path"]) / "checkpoints")
    if state is not None:
        assert state["iteration"] < bad["iteration"]
        assert all(torch.isfinite(v).all() for v in state["D"].values() if v.is_floating_point())
    assert "diverged" in (sweep / "report" / "report.md").read_text()


def test_corrupt_last_checkpoint_falls_back_to_the_previous(tmp_path):
    save_checkpoint(tmp_path, {"iteration": 1, "w": torch.ones(3)})
    save_checkpoint(tmp_path, {"iteration": 2, "w": torch.full((3,), 2.0)})
    assert load_checkpoint(tmp_path)["iteration"] == 2
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:40])  # truncated by a crash
    with pytest.warns(UserWarning, match="unreadable"):
        state = load_checkpoint(tmp_path)
    assert state["iteration"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert load_checkpoint(tmp_path / "nothing") is None


@pytest.mark.slow
def test_changed_config_is_refused_on_resume_unless_starting_over(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(*SMOKE, f"hydra.run.dir={run_dir}").returncode == 0
    r = run_cli(*SMOKE, "train.iterations=3", "train.lr=1e-3", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2 and "train.lr" in r.stderr and "resume=false" in r.stderr
    r = run_cli(*SMOKE, "train.iterations=3", "train.lr=1e-3", "resume=false", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if x["phase"] == "train"] == [1, 2, 3]


BAD_INPUTS = [
    (["head=nope"], "head=nope"),
    (["dataset=nope"], "dataset=nope"),
    (["head.name=nope"], "head.name"),
    (["train.n_dis=0"], "train.n_dis"),
    (["train.lr=-1"], "train.lr"),
    (["train.lr=abc"], "train.lr"),
    (["train.beta1=1.5"], "train.beta1"),
    (["train.loss=wasserstein"], "train.loss"),
    (["train.iterations=0"], "train.iterations"),
    (["dataset.resolution=24"], "dataset.resolution"),
    (["dataset=imagefolder"], "dataset.path"),
    (["dataset=imagefolder", "dataset.path=EMPTY"], "dataset.path"),
    (["train.batch_d=100000"], "train.batch_d"),
    (["device=tpu"], "device"),
    (["eval.feature_space=vgg"], "eval.feature_space"),
    (["eval.real_split=val"], "eval.real_split"),
    (["eval.n_generated=5"], "eval.n_generated"),
    (["seed=-1"], "seed"),
    (["model.g_ch=0"], "model.g_ch"),
    (["head=concat", "head.stage=0"], "head.stage"),
    (["+head.depth=3"], "head."),
    (["eval.feature_space=inception", "eval.inception_weights=/nonexistent/inception.pth"], "eval.inception_weights"),
    (["train.iterations=abc"], "train.iterations"),  # its refusal's status line once read it as an int: a traceback
    (["resume=no"], "resume"),  # the string "no" is truthy: it resumed
    (["wandb.mode=offlin"], "wandb.mode"),  # wandb's 33-line validation error, after the data had loaded
]


@pytest.mark.parametrize("overrides,key", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_key_with_exit_code_2(overrides, key, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [o.replace("EMPTY", str(empty)) for o in overrides]
    r = run_cli(*SMOKE, *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and key in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_complete_and_share_one_cache(launcher, tmp_path):
    cache = tmp_path / "cache"  # fresh: both jobs build the classifier and reference features concurrently
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    r = run_cli("-m", "head=projection,concat", *SMOKE, f"hydra/launcher={launcher}", *extra,
                f"hydra.sweep.dir={tmp_path / 'sweep'}", "sweep_name=par",
                env={"CGAN_BENCH_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "sweep" / "report" / "runs.csv")
    assert sorted(runs["head"]) == ["concat", "projection"] and set(runs["state"]) == {"completed"}
    references = list((cache / "reference").glob("*.pt"))
    classifiers = list((cache / "classifiers").glob("*.pt"))
    assert len(references) == 1 and len(classifiers) == 1
    ref = torch.load(references[0], weights_only=True)
    assert ref["features"].shape[0] == ref["labels"].shape[0] == 1437
    finals = [final_metrics(Path(p)) for p in runs["path"]]
    assert finals[0]["n_real"] == finals[1]["n_real"] == 1437


def test_missing_inception_weights_stop_before_training_with_where_to_put_them(tmp_path):
    hub = tmp_path / "torch_home"  # an empty torch cache; no network here, so the download fails fast
    r = run_cli(*SMOKE, "eval.feature_space=inception", f"hydra.run.dir={tmp_path / 'run'}",
                env={"TORCH_HOME": str(hub)})
    assert r.returncode == 2
    assert "weights-inception-2015-12-05-6726825d.pth" in r.stderr and str(hub / "hub" / "checkpoints") in r.stderr
    assert json.loads((tmp_path / "run" / "status.json").read_text())["iteration"] == 0
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_rerun_multirun_skips_completed_jobs(tmp_path):
    args = ["-m", "head=projection,concat", *SMOKE, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert run_cli(*args).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("*/checkpoints/last.pt")}
    r = run_cli(*args)
    assert r.returncode == 0
    assert (r.stdout + r.stderr).count("already completed") == 2
    assert r.stderr.count("stored (completed earlier) final evaluation at iteration 2") == 2  # read, not redone
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing retrained


def hydra_files(run_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((run_dir / ".hydra").iterdir())}


@pytest.mark.slow
def test_a_completed_run_rerun_with_other_settings_is_refused_and_keeps_its_settings(tmp_path):
    """Skipping it would have printed the old FID and let Hydra's rewritten .hydra/ relabel it (the report then
    showed projection's numbers as concat, seed 5). The same settings, or a changed log cadence, still skip, and a
    skip leaves the run's .hydra/ files as they were."""
    run_dir = tmp_path / "run"
    assert run_cli(*SMOKE, f"hydra.run.dir={run_dir}", env={"OMP_NUM_THREADS": "1"}).returncode == 0
    settings, status = hydra_files(run_dir), (run_dir / "status.json").read_text()
    assert json.loads(status)["cpu_threads"] == 1  # CPU numbers reproduce only with the same thread count
    r = run_cli(*SMOKE, "head=concat", "seed=5", f"hydra.run.dir={run_dir}")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert "holds a completed run trained with another config" in lines[0]
    assert "head.name: 'projection' -> 'concat'" in lines[0] and "seed: 0 -> 5" in lines[0]
    assert hydra_files(run_dir) == settings and (run_dir / "status.json").read_text() == status
    r = run_cli(*SMOKE, "train.log_every=2", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0 and "already completed" in r.stdout + r.stderr
    # skipped: the directory still says how its results were made, not how the skipped rerun was called
    assert hydra_files(run_dir) == settings


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_a_refused_rerun_leaves_the_preempted_run_as_it_was(tmp_path):
    """SIGINT stops at the next iteration with a checkpoint (status preempted, exit 0, no traceback), as SIGTERM
    does; a rerun refused for a bad value or another head rewrites neither status.json nor .hydra/; the right
    command then resumes from the checkpoint."""
    run_dir = tmp_path / "run"
    proc = start_cli(*LONG, "train.iterations=2000", f"hydra.run.dir={run_dir}")
    wait_for_iteration(run_dir, 10, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "preempted by SIGINT" in err and "Traceback" not in err, err[-2000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "preempted" and status["iteration"] >= 10
    assert load_checkpoint(run_dir / "checkpoints")["iteration"] == status["iteration"]
    settings, status_text = hydra_files(run_dir), (run_dir / "status.json").read_text()
    for bad in (["train.batch_d=-4"], ["head=concat"]):
        r = run_cli(*LONG, "train.iterations=2000", *bad, f"hydra.run.dir={run_dir}")
        assert r.returncode == 2, r.stderr[-2000:]
        assert hydra_files(run_dir) == settings and (run_dir / "status.json").read_text() == status_text
    r = run_cli(*LONG, "train.iterations=" + str(status["iteration"] + 5), f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"at iteration {status['iteration']}" in r.stdout + r.stderr  # resumed, not started over


@pytest.mark.slow
def test_sigterm_stops_a_sweep_that_runs_its_jobs_in_one_process(tmp_path):
    """Hydra's basic launcher runs the jobs one after another in this process: a signal to it is for the whole
    sweep, so the preempted job's successor must not start (it did, and the sweep ran to its end)."""
    sweep = tmp_path / "sweep"
    proc = start_cli("-m", "head=projection,concat", *LONG, "train.iterations=2000", f"hydra.sweep.dir={sweep}")
    first = sweep_folders("head=projection,concat", *LONG, "train.iterations=2000", f"hydra.sweep.dir={sweep}")[0]
    wait_for_iteration(first, 10, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "the sweep stops here" in err, err[-2000:]
    assert json.loads((first / "status.json").read_text())["state"] == "preempted"
    assert [p.name for p in sweep.iterdir() if p.name.startswith("digits_")] == [first.name]


@pytest.mark.slow
def test_sigterm_to_a_joblib_sweep_preempts_its_workers_and_starts_nothing_more(tmp_path):
    """The workers are processes of their own: with the launcher killed they ran on as orphans, writing their run
    directories. Now they get SIGTERM (checkpoint, `preempted`), the queued job never starts, and the sweep's
    process exits 0 with one line; no process holds a run directory's lock afterwards."""
    from cgan_bench.train.run_lock import RunDirLock
    sweep = tmp_path / "sweep"
    proc = start_cli("-m", "head=projection,concat,acgan", *LONG, "train.iterations=2000", "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}")
    *running, queued = sweep_folders("head=projection,concat,acgan", *LONG, "train.iterations=2000",
                                     f"hydra.sweep.dir={sweep}")
    for run_dir in running:
        wait_for_iteration(run_dir, 10, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "preempted by SIGTERM: the sweep stops here" in err, err[-3000:]
    for run_dir in running:
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "preempted", status
        assert load_checkpoint(run_dir / "checkpoints")["iteration"] == status["iteration"]
        with RunDirLock(run_dir):  # taken at once: no worker still holds it
            pass
    assert not (queued / "status.json").exists()


@pytest.mark.slow
def test_sigterm_while_the_data_and_evaluation_are_prepared_preempts_cleanly(tmp_path):
    """Slurm's SIGTERM (or Ctrl-C) before training, here while the domain classifier trains (for an ImageNet
    folder: the store's first build, hours), killed the job silently, with no status.json (SIGINT: two
    tracebacks). It now stops there with status `preempted`, exit code 0, one line; a rerun goes on."""
    run_dir = tmp_path / "run"
    args = [*SMOKE, "eval.classifier_epochs=400", f"eval.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    proc = start_cli(*args)
    deadline = time.time() + 120
    while time.time() < deadline:
        log_file = run_dir / "app.log"
        if log_file.exists() and "building the domain classifier" in log_file.read_text():
            break
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    time.sleep(1)  # inside the classifier's training
    status = sigterm_until_preempted(proc, run_dir, timeout=120)
    assert status["state"] == "preempted" and "while preparing the data and evaluation" in status["reason"]
    assert not (run_dir / "checkpoints").exists()  # stopped before training
