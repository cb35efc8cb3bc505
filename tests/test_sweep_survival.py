"""A joblib worker killed mid-sweep (as by the OOM killer) fails only its own job: a real multirun whose worker
is SIGKILLed, checked from the run directories and the report; the launcher's verdict rules; the lock probe."""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cgan_bench.launch import BrokenPool, death_reason, judge, mark_failed
from cgan_bench.train.run_dir import RunDir
from cgan_bench.train.run_lock import RunDirLock, is_held
from conftest import SMOKE, sweep_folders

REPO = Path(__file__).resolve().parents[1]


def status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.communicate()[1][-3000:]}")
        if condition():
            return
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(what)


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_killed_joblib_worker_fails_its_job_only_and_the_sweep_reports(tmp_path):
    # 4 jobs, 2 at a time: #0 long, #1 short, #2 medium, #3 short. #1 completes, #2 starts; then #0's worker is
    # SIGKILLed while #2 trains (loky then kills #2's worker too) and #3 has not started.
    sweep = tmp_path / "sweep"
    args = ["-m", "train.iterations=400,4,30,5", *SMOKE, "train.checkpoint_every=5",
            "train.log_every=5", "train.sample_every=1000", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}", "sweep_name=survive"]
    runs = sweep_folders(*args[1:])
    proc = subprocess.Popen([sys.executable, "-m", "cgan_bench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_until(lambda: status(runs[1]).get("state") == "completed"
                   and status(runs[2]).get("state") == "running" and status(runs[2])["iteration"] >= 10,
                   proc, "job #1 completed and job #2 checkpointed")
        done_before = (runs[1] / "checkpoints" / "last.pt").stat().st_mtime_ns
        killed = status(runs[0])
        assert killed["state"] == "running" and killed["iteration"] < 400, killed  # still training
        holder = json.loads((runs[0] / ".lock").read_text())["pid"]
        assert holder != proc.pid  # a joblib worker, not the launcher
        os.kill(holder, signal.SIGKILL)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert proc.returncode == 1, err[-3000:]
    assert "1 of 4 jobs did not complete" in err, err[-3000:]
    dead = status(runs[0])
    assert dead["state"] == "failed"
    assert dead["reason"] == "worker process died (SIGKILL, e.g. the OOM killer)"
    assert killed["iteration"] <= dead["iteration"] < 400 and dead["total_iterations"] == 400
    assert not is_held(runs[0])
    for run, iterations in zip(runs[1:], (4, 30, 5)):
        assert status(run)["state"] == "completed" and status(run)["iteration"] == iterations, run
        lines = metric_lines(run)
        assert [x["phase"] for x in lines].count("final") == 1, run  # one result each, none lost
        train_its = [x["iteration"] for x in lines if x["phase"] == "train"]
        assert train_its == sorted(set(train_its)) and train_its[-1] == iterations, run  # resumed, no repeats
    assert (runs[1] / "checkpoints" / "last.pt").stat().st_mtime_ns == done_before  # not trained again
    assert f"resuming {runs[2]} at iteration" in (runs[2] / "app.log").read_text()  # continued from its checkpoint

    report = sweep / "report" / "report.md"
    assert report.exists()
    table = pd.read_csv(sweep / "report" / "runs.csv")
    assert sorted(table["state"]) == ["completed"] * 3 + ["failed"]
    failed = table[table["state"] == "failed"].iloc[0]
    assert Path(failed["path"]).name == runs[0].name and failed["reason"] == dead["reason"]
    status_section = report.read_text().split("## Run status")[1]
    assert runs[0].name in status_section and "worker process died (SIGKILL" in status_section


def test_the_worker_that_died_first_fails_the_ones_loky_stopped_go_again():
    broken = BrokenPool(running={0: 101, 2: 102, 5: None}, died_first={101: -9})
    verdict = judge(broken, Counter())
    assert verdict.failed == {0: "worker process died (SIGKILL, e.g. the OOM killer)"}
    assert verdict.relaunch == [2, 5]


def test_an_unexplained_break_retries_each_running_job_once():
    deaths = Counter()
    first = judge(BrokenPool(running={0: 1, 1: 2}, died_first=None, error="boom\nmore"), deaths)
    assert first.failed == {} and first.relaunch == [0, 1]
    second = judge(BrokenPool(running={1: 3}, died_first={}, error="boom"), deaths)
    assert second.relaunch == [] and second.failed == {1: "worker process died 2 times while this job ran (boom)"}
    assert deaths == Counter({0: 1, 1: 2})


@pytest.mark.parametrize("code, reason", [(-signal.SIGKILL, "worker process died (SIGKILL, e.g. the OOM killer)"),
                                          (-signal.SIGSEGV, "worker process died (SIGSEGV)"),
                                          (3, "worker process exited with code 3")])
def test_death_reasons_name_the_signal(code, reason):
    assert death_reason(code) == reason


def test_mark_failed_keeps_progress_and_never_overwrites_a_completed_run(tmp_path):
    run = RunDir(tmp_path / "a")
    run.write_status("running", 35, 400, 12.5, 3.0, train_precision="fp32")
    assert mark_failed(run.path, "worker process died (SIGKILL, e.g. the OOM killer)", 999)
    s = run.read_status()
    assert (s["state"], s["iteration"], s["total_iterations"], s["wall_s"], s["train_precision"]) == \
        ("failed", 35, 400, 12.5, "fp32")
    assert s["reason"] == "worker process died (SIGKILL, e.g. the OOM killer)"
    fresh = tmp_path / "b"  # died before training wrote a status: the job's own budget is recorded
    assert mark_failed(fresh, "worker process died (SIGKILL, e.g. the OOM killer)", 7)
    assert (RunDir(fresh).read_status()["iteration"], RunDir(fresh).read_status()["total_iterations"]) == (0, 7)
    done = RunDir(tmp_path / "c")
    done.write_status("completed", 4, 4, 1.0, 2.0)
    assert not mark_failed(done.path, "worker process died (SIGKILL)", 4)
    assert done.read_status()["state"] == "completed"


def test_is_held_sees_a_live_holder_only(tmp_path):
    assert not is_held(tmp_path)  # no lock file yet
    code = f"from cgan_bench.train.run_lock import RunDirLock; import time\nwith RunDirLock({str(tmp_path)!r}):\n" \
           "    print('held', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_held(tmp_path)
        holder.send_signal(signal.SIGKILL)  # the kernel releases a dead holder's lock
        holder.wait()
        assert not is_held(tmp_path)
        with RunDirLock(tmp_path):  # and the probe left it free
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
