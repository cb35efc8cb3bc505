"""One job per run directory: a second process is refused with one line naming the holder and exit code 2,
writes nothing, and the first finishes as if alone; the lock never goes stale (SIGKILL releases it)."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cgan_bench.train import run_lock
from cgan_bench.train.run_lock import RunDirBusy, RunDirLock
from conftest import SMOKE

HOLD = "import sys, time; from cgan_bench.train.run_lock import RunDirLock\n" \
       "with RunDirLock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)\n"


def hold_in_child(run_dir: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"  # blocks until the child holds the lock
    return child


def test_a_held_lock_names_its_holder_and_sigkill_releases_it(tmp_path):
    run_dir = tmp_path / "run"
    child = hold_in_child(run_dir)
    try:
        with pytest.raises(RunDirBusy) as busy, RunDirLock(run_dir):
            pass
        msg = str(busy.value)
        assert "\n" not in msg and msg.startswith(f"{run_dir} is in use by another job (host ")
        assert f"host {socket.gethostname()}, pid {child.pid}, started " in msg
        assert "hydra.run.dir" in msg
        assert isinstance(busy.value, ValueError)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    with RunDirLock(run_dir):  # no stale lock after SIGKILL
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
    with RunDirLock(run_dir):  # released on exit, and again
        pass
    with pytest.raises(ZeroDivisionError), RunDirLock(run_dir):  # released on an exception too
        1 / 0
    with RunDirLock(run_dir):
        pass


def test_an_unreadable_holder_file_still_gives_one_line(tmp_path):
    run_dir = tmp_path / "run"
    child = hold_in_child(run_dir)
    try:
        (run_dir / ".lock").write_text("garbage")
        with pytest.raises(RunDirBusy, match=r"is in use by another job \(unknown holder\); wait"), \
                RunDirLock(run_dir):
            pass
    finally:
        child.kill()
        child.wait(timeout=60)


def test_file_systems_without_flock_warn_and_run_unlocked(tmp_path, monkeypatch, caplog):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    with RunDirLock(tmp_path / "run"), RunDirLock(tmp_path / "run"):
        pass
    assert "WITHOUT protection" in caplog.text


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cgan_bench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until_running(run_dir: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"job ended early: {proc.communicate()[1][-2000:]}"
        try:
            if json.loads((run_dir / "status.json").read_text())["state"] == "running":
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{run_dir} never started running")


def snapshot(run_dir: Path) -> dict:
    """Bytes of everything our job writes (not Hydra's .hydra/ and log, which Hydra writes before the lock)."""
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != ".lock"}


@pytest.mark.slow
def test_second_job_on_a_run_directory_is_refused_and_the_first_finishes_intact(tmp_path):
    run_dir = tmp_path / "run"
    args = [*SMOKE, "train.iterations=60", "train.checkpoint_every=10", "train.log_every=10",
            "train.sample_every=1000", f"hydra.run.dir={run_dir}"]
    first = start_cli(*args, "seed=0")
    try:
        wait_until_running(run_dir, first)
        first.send_signal(signal.SIGSTOP)  # holds the lock but writes nothing while the second one tries
        try:
            assert first.poll() is None and json.loads((run_dir / "status.json").read_text())["state"] == "running"
            before = snapshot(run_dir)
            second = subprocess.run([sys.executable, "-m", "cgan_bench", *args, "seed=1"], capture_output=True,
                                    text=True, timeout=600)
            after = snapshot(run_dir)
        finally:
            first.send_signal(signal.SIGCONT)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(f"error: {run_dir} is in use by another job (host ")
        assert f"pid {first.pid}, started " in lines[0]
        assert after == before  # the refused job wrote nothing of ours: status.json still says running
        assert json.loads((run_dir / "status.json").read_text())["state"] == "running"
        _, err = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err[-2000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["iteration"] == 60 and not status["reason"]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["phase"] == "train"] == list(range(10, 61, 10))
    finals = [r for r in records if r["phase"] == "final"]
    assert len(finals) == 1 and finals[0]["iteration"] == 60
    import torch
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    previous = torch.load(run_dir / "checkpoints" / "previous.pt", weights_only=True)
    assert last["iteration"] == 60 and previous["iteration"] == 50
    assert last["config"]["seed"] == previous["config"]["seed"] == 0  # both checkpoints are of the first job
    # Hydra rewrote .hydra/ for the refused job (seed=1) before our lock; the holder restored it on release
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["seed"] == 0
    assert "seed=0" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    # and the lock is free again: a rerun finds the finished job and skips it
    again = subprocess.run([sys.executable, "-m", "cgan_bench", *args, "seed=0"], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "already completed" in again.stdout + again.stderr
