"""Nothing lost, nothing mixed: shareable caches (lock-free reads, umask modes, corrupt entries rebuilt) and honest
states (unreadable checkpoints refused, stale metrics dropped, a diverged run exits 3, a shrunk budget refused).
Each fault is provoked; the tests check the exit code, the one stderr line, status.json and that no finished
result was lost."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cgan_bench.data import load_dataset
from cgan_bench.io import atomic_write_json, atomic_write_text
from cgan_bench.metrics import cache as cache_module
from cgan_bench.metrics.classifier import load_or_train_classifier
from cgan_bench.metrics.feature_space import make_feature_space
from cgan_bench.metrics.reference import load_or_compute_noise_floor, load_or_compute_reference, reference_path
from cgan_bench.train.checkpoint import CheckpointUnreadable, load_checkpoint, save_checkpoint
from cgan_bench.train.run_dir import RunDir
from cgan_bench.train.samples import save_png
from conftest import SMOKE, run_cli

CPU = torch.device("cpu")


# ---- A. shareable caches ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train", 16), load_dataset("digits", "test", 16)


def build_caches(cache_dir: Path, digits) -> dict:
    """Classifier, reference features and noise floor for digits, as a smoke evaluation makes them."""
    train, test = digits
    space = make_feature_space("classifier", train, test, CPU, classifier_epochs=1, cache_dir=str(cache_dir))
    ref = load_or_compute_reference(space, train, 500, str(cache_dir))
    floor = load_or_compute_noise_floor(space, train, ref, len(train), 100, 1000, str(cache_dir))
    return {"space": space, "ref": ref, "floor": floor, "reference": reference_path(space, train, str(cache_dir)),
            "classifier": next((cache_dir / "classifiers").glob("*.pt")),
            "floor_file": next((cache_dir / "reference").glob("*.floor-*.json"))}


class LockRefused:
    """Stands in for filelock.FileLock on a read-only cache directory. Tests run as root, and root ignores
    permission bits, so `chmod -R a-w` cannot make the cache read-only here (nor can the tests mount
    anything); taking the lock is made to fail the way it does on a read-only directory instead."""

    def __init__(self, path, *args, **kwargs):
        self.path = path

    def __enter__(self):
        raise PermissionError(13, "Permission denied (read-only cache directory)", self.path)

    def __exit__(self, *exc):
        return False


def test_complete_cache_entries_are_read_without_the_lock(tmp_path, digits, monkeypatch):
    cache = tmp_path / "cache"
    built = build_caches(cache, digits)
    monkeypatch.setattr(cache_module, "FileLock", LockRefused)
    train, test = digits
    model, acc = load_or_train_classifier(train, test, CPU, 1, str(cache))
    assert acc == built["space"].classifier_test_accuracy
    space = make_feature_space("classifier", train, test, CPU, classifier_epochs=1, cache_dir=str(cache))
    ref = load_or_compute_reference(space, train, 500, str(cache))
    assert torch.equal(ref["features"], built["ref"]["features"]) and torch.equal(ref["labels"], train.labels)
    assert load_or_compute_noise_floor(space, train, ref, len(train), 100, 1000, str(cache)) == built["floor"]
    # only a missing entry needs the lock (and on a read-only directory that is an error, not a silent skip)
    with pytest.raises(PermissionError):
        load_or_compute_noise_floor(space, train, ref, len(train), 50, 1000, str(cache))


def test_a_floor_cached_under_an_earlier_sizing_rule_is_rebuilt(tmp_path, digits):
    """Floors were named by the requested sizes, and where real + fake did not fit the split both halves were
    taken (718 vs 719 digits for a 100-image fake side, KID subsets of 359). Now the name carries the sizes used
    (1337 real vs the protocol's 100 fake, KID subsets of all 100), so such a file is never read as today's."""
    cache = tmp_path / "cache"
    built = build_caches(cache, digits)  # 1437 digits, n_real all, n_fake 100
    assert (built["floor"]["floor_n_a"], built["floor"]["floor_n_b"]) == (1337, 100)
    assert built["floor"]["floor_kid_subset_size"] == 100 and built["floor_file"].name.endswith("-r1337-f100-k100.json")
    stale = built["floor_file"].with_name(built["floor_file"].name.replace("-r1337-f100-k100.json", "-r1437-f100-k359.json"))
    stale.write_text(json.dumps({**built["floor"], "floor_fid": 1.0, "floor_n_a": 718, "floor_n_b": 719}))
    built["floor_file"].unlink()
    space, (train, _) = built["space"], digits
    floor = load_or_compute_noise_floor(space, train, built["ref"], len(train), 100, 1000, str(cache))
    assert floor == built["floor"] and built["floor_file"].exists()
    # a floor file from before the subset size was recorded, at sizes that never changed, is kept and completed
    legacy = {k: v for k, v in built["floor"].items() if k != "floor_kid_subset_size"}
    built["floor_file"].write_text(json.dumps(legacy))
    assert load_or_compute_noise_floor(space, train, built["ref"], len(train), 100, 1000, str(cache)) == built["floor"]
    # one from before floor_kid_se, whose subsets held the whole fake side (the old spread cannot give the
    # error): the KID part is recomputed (the intra-FID kept, a marker shows it) and the file completed
    old = {k: v for k, v in built["floor"].items() if k not in ("floor_kid_se", "floor_kid_std")}
    built["floor_file"].write_text(json.dumps({**old, "floor_kid_sem": built["floor"]["floor_kid_std"] / 10,
                                               "floor_intra_fid_mean": 123.0}))
    read = load_or_compute_noise_floor(space, train, built["ref"], len(train), 100, 1000, str(cache))
    assert read == {**built["floor"], "floor_intra_fid_mean": 123.0} and built["floor"]["floor_kid_se"] > 0
    assert json.loads(built["floor_file"].read_text()) == read


def test_corrupt_cache_entries_are_named_moved_aside_and_rebuilt(tmp_path, digits, caplog):
    cache = tmp_path / "cache"
    built = build_caches(cache, digits)
    built["classifier"].write_bytes(b"not a checkpoint at all")
    built["reference"].write_bytes(built["reference"].read_bytes()[:100])  # truncated by a crash
    built["floor_file"].write_text('{"fid": 1.0, "kid')
    with caplog.at_level(logging.WARNING, logger="cgan_bench"):
        again = build_caches(cache, digits)
    for key in ("classifier", "reference", "floor_file"):
        path = built[key]
        assert any(str(path) in r.getMessage() and "moved aside" in r.getMessage() for r in caplog.records), key
        assert len(list(path.parent.glob(f"{path.name}.corrupt-*"))) == 1, key
        assert path.exists()
    assert again["space"].classifier_test_accuracy == built["space"].classifier_test_accuracy  # same recipe
    assert torch.allclose(again["ref"]["features"], built["ref"]["features"])
    assert again["floor"] == built["floor"]
    torch.load(built["classifier"], weights_only=True)  # the rebuilt entries are whole
    torch.load(built["reference"], weights_only=True)
    # and the next load reads them quietly
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cgan_bench"):
        build_caches(cache, digits)
    assert not caplog.records


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomically_written_files_get_the_mode_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        run = RunDir(tmp_path / "run")
        run.write_status("running", 1, 2, 0.1, None)
        run.log({"iteration": 1, "phase": "train"})
        run.drop_metrics_after(0)  # rewritten atomically
        save_checkpoint(run.checkpoints, {"iteration": 1})
        save_checkpoint(run.checkpoints, {"iteration": 2})  # last.pt becomes previous.pt
        save_png(torch.zeros(3, 4, 4, dtype=torch.uint8), run.samples / "final.png")
        atomic_write_text(tmp_path / "reports" / "report.md", "# report\n")
        atomic_write_json(tmp_path / "reports" / "cache.json", {"a": 1})
    finally:
        os.umask(old)
    files = [run.status_file, run.metrics_file, run.checkpoints / "last.pt", run.checkpoints / "previous.pt",
             run.samples / "final.png", tmp_path / "reports" / "report.md", tmp_path / "reports" / "cache.json"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: oct(mode) for f in files}
    assert not list(tmp_path.rglob("*.tmp"))


# ---- B. honest states -------------------------------------------------------------------------------------
def test_unreadable_checkpoints_are_refused_not_silently_ignored(tmp_path):
    save_checkpoint(tmp_path, {"iteration": 1})
    save_checkpoint(tmp_path, {"iteration": 2})
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:40])
    with pytest.warns(UserWarning, match="unreadable"):
        assert load_checkpoint(tmp_path)["iteration"] == 1  # a half-written last.pt still falls back
    (tmp_path / "previous.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointUnreadable) as err:
        load_checkpoint(tmp_path)
    msg = str(err.value)
    assert "last.pt" in msg and "previous.pt" in msg and "resume=false" in msg and "\n" not in msg
    assert load_checkpoint(tmp_path / "none") is None


def error_lines(stderr: str) -> list[str]:
    """stderr without tqdm's progress bar (which draws lines with '|' and carriage returns)."""
    return [line for line in stderr.splitlines() if line.strip() and "|" not in line]


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def snapshot(run_dir: Path) -> dict:
    """Every file a finished run holds (minus Hydra's own and the log), by content."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != ".lock"}


FOUR = [*SMOKE, "train.iterations=4", "train.sample_every=1000"]


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory) -> Path:
    """A run directory that completed 4 iterations (copied by each test that damages or reruns it)."""
    run_dir = tmp_path_factory.mktemp("completed") / "run"
    r = run_cli(*FOUR, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert status_of(run_dir)["state"] == "completed"
    return run_dir


@pytest.mark.slow
def test_both_checkpoints_unreadable_is_refused_then_resume_false_starts_over(completed_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(completed_run, run_dir)
    for name in ("last.pt", "previous.pt"):
        path = run_dir / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:64])  # both damaged (disk trouble, a bad copy)
    before = snapshot(run_dir)
    r = run_cli(*FOUR, "train.iterations=6", f"hydra.run.dir={run_dir}")  # more iterations: not skipped
    assert r.returncode == 2, r.stderr[-2000:]
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "last.pt" in lines[0] and "previous.pt" in lines[0] and "resume=false" in lines[0]
    assert snapshot(run_dir) == before  # nothing trained from 0, the finished result (status included) intact
    assert status_of(run_dir)["state"] == "completed" and status_of(run_dir)["iteration"] == 4

    r = run_cli(*FOUR, "train.iterations=6", "resume=false", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert status_of(run_dir)["state"] == "completed" and status_of(run_dir)["iteration"] == 6
    assert [x["iteration"] for x in metrics_of(run_dir) if x["phase"] == "train"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_fewer_iterations_than_the_checkpoint_is_refused_and_nothing_changes(completed_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(completed_run, run_dir)
    before = snapshot(run_dir)
    r = run_cli(*FOUR, "train.iterations=2", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "iteration 4" in lines[0] and "train.iterations=2" in lines[0] and "resume=false" in lines[0]
    assert snapshot(run_dir) == before  # status.json still "completed, 4 of 4"; the final metrics kept
    assert status_of(run_dir) == status_of(completed_run)
    assert sum(x["phase"] == "final" for x in metrics_of(run_dir)) == 1


@pytest.mark.slow
def test_metrics_of_an_attempt_killed_before_its_first_checkpoint_are_dropped(tmp_path):
    run_dir = tmp_path / "run"
    args = [*SMOKE, "train.iterations=30", "train.checkpoint_every=1000", "train.log_every=1",
            "train.sample_every=1000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "cgan_bench", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if status_of(run_dir)["iteration"] >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "checkpoints").exists()  # killed before the first checkpoint
    assert len([x for x in metrics_of(run_dir) if x["phase"] == "train"]) >= 3  # ... with lines logged

    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert status_of(run_dir)["state"] == "completed" and status_of(run_dir)["iteration"] == 30
    lines = metrics_of(run_dir)
    assert [x["iteration"] for x in lines if x["phase"] == "train"] == list(range(1, 31))  # each once, in order
    assert sum(x["phase"] == "final" for x in lines) == 1


@pytest.mark.slow
def test_a_diverged_single_run_exits_3_with_its_reason(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli(*SMOKE, "train.lr=1e30", f"hydra.run.dir={run_dir}")
    assert r.returncode == 3, r.stderr[-2000:]
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: run diverged: "), r.stderr
    status = status_of(run_dir)
    assert status["state"] == "diverged" and status["reason"] in lines[0] and "at iteration" in status["reason"]
    state = load_checkpoint(run_dir / "checkpoints")  # no diverged state is ever checkpointed
    assert state is None or state["iteration"] < status["iteration"]


@pytest.mark.slow
def test_a_diverged_job_in_a_multirun_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("-m", *SMOKE, "train.lr=1e30,2e-4", f"hydra.sweep.dir={sweep}", "sweep_name=div")
    assert r.returncode == 1, r.stderr[-2000:]  # the report's verdict: a job did not complete
    assert "run diverged" not in r.stderr and "did not complete" in r.stderr
    states = sorted(status_of(p.parent)["state"] for p in sweep.glob("*/status.json"))
    assert states == ["completed", "diverged"]
    assert (sweep / "report" / "report.md").exists()


def test_checkpoints_from_before_a_new_key_resume_only_with_its_old_behaviour():
    """A key added to the configs later (train.compile_mode) is absent from older checkpoints: they resume when
    the key has the value that reproduces the old behaviour, and are refused (naming the key) otherwise."""
    from cgan_bench.train.loop import config_differences
    saved = {"train.lr": 0.002, "train.compile": False}
    assert config_differences(saved, {**saved, "train.compile_mode": "default"}) == []
    changed = config_differences(saved, {**saved, "train.compile_mode": "reduce-overhead"})
    assert changed == ["train.compile_mode: 'default' -> 'reduce-overhead'"]
    assert config_differences(saved, {**saved, "train.lr": 0.001}) == ["train.lr: 0.002 -> 0.001"]
