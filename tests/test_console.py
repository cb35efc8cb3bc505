"""What the console says (issue 15, items 3b and 4): our --help and --version, the start block, progress of the
one-time cache work, total wall time in status.json, the refusal of a silent CPU fallback for GPU recipes, the
warning for a sweep recipe without -m, and the `wandb sync` command of an offline run."""
import json
import logging
import time
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from cgan_bench import __version__
from cgan_bench.app import refuse_cpu_fallback, wandb_sync_command
from cgan_bench.cli_help import sweep_without_multirun
from cgan_bench.config import ConfigError
from cgan_bench.data import load_dataset
from cgan_bench.heads import HEADS
from cgan_bench.metrics.classifier import load_or_train_classifier
from cgan_bench.train.run_dir import RunDir, earlier_wall_s
from conftest import SMOKE, run_cli

CONF_DIR = Path(str(files("cgan_bench.conf")))
NO_CUDA = {"CUDA_VISIBLE_DEVICES": ""}  # the refusal is the same on a machine with a GPU


def composed(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=["wandb.mode=disabled", *overrides])


# ---- --help, --version, --hydra-help ------------------------------------------------------------------------

def test_help_is_ours_and_lists_every_group_with_its_options():
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert out.startswith("usage: python -m cgan_bench") and "== Flags ==" not in out  # not Hydra's help
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("__pycache__", "hydra"))
    assert {"dataset", "head", "model", "train", "eval", "sweep", "adam"} <= set(groups)
    rows = {line.split()[0].lstrip("+"): line for line in out.splitlines() if line.startswith("  ") and
            line.split() and line.split()[0].lstrip("+") in groups}
    for group in groups:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        if group == "head":
            options = [o for o in options if o in HEADS]
        listed = [o.strip().rstrip("*") for o in rows[group].split(None, 1)[1].split(",")]
        assert listed == options, (group, rows[group])
    assert "projection*" in rows["head"] and "digits*" in rows["dataset"]  # config.yaml's defaults
    assert rows["sweep"].lstrip().startswith("+sweep") and rows["adam"].lstrip().startswith("+adam")
    for needle in ("-m +sweep=digits", "runs/", "multirun/", "report", "--hydra-help", str(CONF_DIR)):
        assert needle in out, needle


def test_version_and_hydras_own_help_and_cfg_job_still_work():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout == f"cgan-bench {__version__} (torch {torch.__version__})\n"
    r = run_cli("--hydra-help")
    assert r.returncode == 0 and "== Flags ==" in r.stdout and "--hydra-help" in r.stdout
    r = run_cli("train=paper", "--cfg", "job")
    assert r.returncode == 0 and "gpu_recipe: true" in r.stdout and "iterations: 50000" in r.stdout


# ---- GPU recipes: no silent CPU fallback ----------------------------------------------------------------------

def test_the_recipes_say_which_are_sized_for_a_gpu():
    assert composed("train=paper").train.gpu_recipe is True
    assert composed("train=quick").train.gpu_recipe is False and composed("train=smoke").train.gpu_recipe is False
    assert composed("dataset=cifar10").train.gpu_recipe is True  # CIFAR picks train=paper
    assert composed("dataset=imagefolder").train.gpu_recipe is True
    assert composed().train.gpu_recipe is False  # digits: train=quick


def test_only_device_auto_falling_back_to_the_cpu_is_refused():
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    with pytest.raises(ConfigError) as err:
        refuse_cpu_fallback(composed("dataset=cifar10"), cpu)
    assert "is a GPU recipe (50000 iterations) but no CUDA device is visible; set device=cpu" in str(err.value)
    refuse_cpu_fallback(composed("dataset=cifar10", "device=cpu"), cpu)  # asked for: allowed
    refuse_cpu_fallback(composed("dataset=cifar10"), gpu)  # auto found a GPU
    refuse_cpu_fallback(composed("train=quick"), cpu)
    refuse_cpu_fallback(composed("dataset=cifar10", "train=smoke"), cpu)


def test_a_gpu_recipe_without_cuda_is_one_line_and_exit_code_2_before_any_work(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"an earlier attempt's")  # resume=false must not delete it
    r = run_cli("train=paper", "resume=false", f"hydra.run.dir={run}", env=NO_CUDA)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == ["error: train=paper is a GPU recipe (50000 iterations) but no CUDA device is visible; "
                     "set device=cpu to run it on the CPU anyway, or train=quick"], r.stderr[-2000:]
    assert "run directory:" not in r.stdout  # refused before the data (and the start block)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["iteration"] == 0 and "GPU recipe" in status["reason"]
    assert (run / "checkpoints" / "last.pt").read_bytes() == b"an earlier attempt's"  # refused before start_over
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]  # nothing trained
    assert not (run / "metrics.jsonl").exists() and not (run / "samples").exists()


# ---- a run: start block, cache progress, total wall time, the sweep warning ------------------------------------

@pytest.mark.slow
def test_a_smoke_run_says_what_it_does_and_records_its_total_wall_time(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"  # a fresh cache: the one-time work is announced
    started = time.monotonic()
    r = run_cli(*SMOKE, "+sweep=digits", f"eval.cache_dir={cache}", f"hydra.run.dir={run}", env=NO_CUDA)
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr.replace("\r", "\n")
    assert err.splitlines()[0] == ("warning: +sweep=digits is a sweep recipe: without -m it trains one run and "
                                   "writes no report; add -m")
    out = r.stdout  # the log (Hydra: stdout and the run's .log file)
    for line in (f"run directory: {run}", "device: cpu (device=auto: no CUDA device visible)",
                 "training precision: fp32 (train.precision=fp32)",
                 "dataset: digits 16px, 1437 train / 360 test images, 10 classes | feature space: classifier",
                 "training: 2 iterations (train=smoke), head projection, seed 0"):
        assert line in out, line
    assert out.index("run directory:") < out.index("building the domain classifier")  # before the cache work
    for what in ("the domain classifier for digits (2 epochs)", "the reference features of digits train",
                 "the real-vs-real noise floor"):
        assert f"building {what}" in out and f"built {what}" in out, what
    assert f"cached at {cache / 'classifiers'}" in out
    assert "domain classifier (digits)" in err and "epoch=2/2" in err  # the progress bar
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed"
    assert status["wall_s"] <= status["total_wall_s"] <= elapsed
    assert "wandb sync" not in err  # W&B disabled
    # the summary gives every distance its real-vs-real yardstick (classifier space: KID raw, no x10^3)
    final = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"final"' in x)
    assert f"FID {final['fid']:.2f} (real vs real {final['floor_fid']:.2f})" in err
    assert f"KID {final['kid_mean']:.2f} ± {final['kid_se']:.2f} (s.e.; real vs real {final['floor_kid_mean']:.2f})" in err
    summary = err[err.index("final evaluation at iteration 2"):].split("  run directory:")[0]
    app_log = (run / "app.log").read_text()
    assert summary in app_log and summary not in out  # in the run's log file too, not twice on the console


def test_the_warning_for_a_sweep_recipe_without_multirun():
    expected = "warning: +sweep=digits is a sweep recipe: without -m it trains one run and writes no report; add -m"
    assert sweep_without_multirun(["+sweep=digits", "train=smoke"]) == expected
    assert sweep_without_multirun(["-m", "+sweep=digits"]) is None
    assert sweep_without_multirun(["--multirun", "+sweep=digits"]) is None
    assert sweep_without_multirun(["+sweep=digits", "--cfg", "job"]) is None  # trains nothing
    assert sweep_without_multirun(["head=concat", "sweep_name=x"]) is None


# ---- status.json: total_wall_s ---------------------------------------------------------------------------------

def test_total_wall_time_counts_from_the_job_start_and_adds_earlier_attempts(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_status("running", 0, 10, 0.0, None)
    assert "total_wall_s" not in run.read_status()  # no clock started: nothing claimed
    run.start_clock(earlier_wall_s({"state": "preempted", "wall_s": 3.0, "total_wall_s": 7.5}))
    time.sleep(0.01)
    run.write_status("completed", 10, 10, 2.0, 1.0)
    status = run.read_status()
    assert 7.5 + 0.01 <= status["total_wall_s"] < 7.5 + 60 and status["wall_s"] == 2.0
    assert earlier_wall_s({"wall_s": 4.0}) == 4.0  # a status from before total_wall_s: its training time
    assert earlier_wall_s(None) == 0.0


# ---- the one-time cache work -----------------------------------------------------------------------------------

def test_a_fresh_classifier_cache_announces_its_training_and_a_warm_one_is_silent(tmp_path, caplog, capsys):
    train, test = load_dataset("digits", "train", 16), load_dataset("digits", "test", 16)
    with caplog.at_level(logging.INFO, logger="cgan_bench"):
        load_or_train_classifier(train, test, "cpu", 1, str(tmp_path))
    entry = next((tmp_path / "classifiers").glob("*.pt"))
    messages = [r.getMessage() for r in caplog.records]
    assert f"building the domain classifier for digits (1 epochs) (a one-time step; cached at {entry})" in messages
    assert any(m.startswith("built the domain classifier for digits (1 epochs) in ") for m in messages)
    err = capsys.readouterr().err.replace("\r", "\n")
    steps = -(-len(train) // 128)
    assert "domain classifier (digits): 100%" in err and f"{steps}/{steps}" in err and "epoch=1/1" in err

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cgan_bench"):
        load_or_train_classifier(train, test, "cpu", 1, str(tmp_path))
    assert not caplog.records and "domain classifier" not in capsys.readouterr().err


# ---- W&B offline: the sync command -----------------------------------------------------------------------------

def test_the_sync_command_names_the_offline_runs_wandb_wrote(tmp_path):
    assert wandb_sync_command(tmp_path, "offline") is None  # nothing written
    first = tmp_path / "wandb" / "offline-run-20250101_000000-abc"
    second = tmp_path / "wandb" / "offline-run-20250102_000000-abc"  # a resumed attempt
    first.mkdir(parents=True)
    second.mkdir()
    (tmp_path / "wandb" / "latest-run").mkdir()
    assert wandb_sync_command(tmp_path, "offline") == f"wandb sync {first} {second}"
    assert wandb_sync_command(tmp_path, "online") is None and wandb_sync_command(tmp_path, "disabled") is None


def test_the_summary_of_a_run_without_a_noise_floor_is_printed_not_a_crash(tmp_path):
    """A folder too small to split into two real halves has no real-vs-real floor (None in the record): the run's
    last step printed a TypeError traceback after training and evaluation had finished."""
    from cgan_bench.app import final_summary
    record = {"iteration": 2, "feature_space": "classifier", "n_generated": 24, "n_real": 9, "n_fake": 24,
              "fid": 80.5, "floor_fid": None, "intra_fid_mean": 120.0, "floor_intra_fid_mean": None,
              "kid_mean": 0.5, "kid_se": None, "floor_kid_mean": None, "is_mean": 1.5, "class_accuracy": 0.3,
              "precision": 0.1, "recall": 0.2, "density": None, "coverage": 0.1, "collapsed_classes": 1}
    text = final_summary(record, tmp_path)
    assert "FID 80.50 (real vs real nan)" in text and "density nan" in text and str(tmp_path) in text
