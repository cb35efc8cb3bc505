"""`python -m cgan_bench` end to end: every head writes the run-directory contract; errors are clear; resume works."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

import cgan_bench
from cgan_bench.heads import HEADS
from conftest import SMOKE, run_cli

CONTRACT = ["status.json", "metrics.jsonl", "per_class.csv", "checkpoints/last.pt", "samples/final.png",
            ".hydra/config.yaml", ".hydra/overrides.yaml"]


def check_run_dir(run_dir, iterations=2):
    for name in CONTRACT:
        assert (run_dir / name).exists(), f"{run_dir} lacks {name}"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["iteration"] == iterations
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["phase"] == "train"]
    assert [r["iteration"] for r in train] == list(range(1, iterations + 1))
    assert all({"d_loss", "g_loss"} <= set(r) for r in train)
    final = [r for r in lines if r["phase"] == "final"]
    assert len(final) == 1 and final[0]["iteration"] == iterations
    per_class = pd.read_csv(run_dir / "per_class.csv")
    assert list(per_class["class"]) == list(range(10))
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == iterations
    grid = Image.open(run_dir / "samples" / "final.png")
    assert grid.size[1] > grid.size[0] * 0.9  # 10 rows (classes) x 10 columns


@pytest.mark.slow
def test_multirun_of_every_head_writes_the_contract(tmp_path):
    heads = ",".join(sorted(HEADS))
    r = run_cli("-m", f"head={heads}", *SMOKE, f"hydra.sweep.dir={tmp_path}")  # its report: tmp_path/report
    assert r.returncode == 0, r.stderr[-3000:]
    run_dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and (p / ".hydra").exists())
    assert len(run_dirs) == len(HEADS)
    for run_dir in run_dirs:
        check_run_dir(run_dir)
    overrides = {d.name: (d / ".hydra" / "overrides.yaml").read_text() for d in run_dirs}
    for name in HEADS:
        assert any(f"head={name}" in o for o in overrides.values())


def test_unknown_head_fails_before_any_work_naming_the_heads(tmp_path):
    r = run_cli("head=nope", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.returncode != 0
    for name in HEADS:
        assert name in r.stderr
    r = run_cli("head.name=nope", f"hydra.run.dir={tmp_path / 'b'}")
    assert r.returncode == 2
    assert "registered heads are" in r.stderr and "projection" in r.stderr
    assert "Traceback" not in r.stderr
    status = json.loads((tmp_path / "b" / "status.json").read_text())
    assert status["state"] == "failed" and "head.name" in status["reason"]
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_a_misspelt_group_option_gets_the_closest_one_suggested():
    from cgan_bench.cli_help import CONF_DIR
    from cgan_bench.config import ConfigError, check_group_overrides
    for arg, suggestion in (("head=projection,projecton", "(did you mean head=projection?)"),
                            ("train=quik", "(did you mean train=quick?)"), ("+adam=paperr", "(did you mean adam=paper?)")):
        with pytest.raises(ConfigError) as err:
            check_group_overrides([arg], CONF_DIR)
        assert str(err.value).endswith(suggestion), str(err.value)
    with pytest.raises(ConfigError) as err:
        check_group_overrides(["head=zzz"], CONF_DIR)
    assert "did you mean" not in str(err.value)  # nothing close: the list of options only


@pytest.mark.slow
def test_resume_continues_at_the_saved_iteration(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli(*SMOKE, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    first = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    r = run_cli(*SMOKE, "train.iterations=4", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr  # Hydra logs to stdout
    assert "resuming" in out and "at iteration 2" in out
    check_run_dir(run_dir, iterations=4)
    previous = torch.load(run_dir / "checkpoints" / "previous.pt", weights_only=True)
    assert previous["iteration"] == 3  # checkpoint_every=1 in smoke; last.pt is 4
    # the weights at iteration 2 were the starting point: the G of the first run is not the final G
    assert not torch.equal(first["G"]["linear.weight"], torch.load(run_dir / "checkpoints" / "last.pt",
                                                                     weights_only=True)["G"]["linear.weight"])
    # a third call with the same budget skips the finished run
    r = run_cli(*SMOKE, "train.iterations=4", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0 and "already completed" in r.stdout + r.stderr


DESIGN_METRICS = ["is_mean", "is_std", "fid", "kid_mean", "kid_std", "precision", "recall", "intra_fid_mean",
                  "diversity_ratio_mean", "class_accuracy", "collapsed_classes", "kid_se", "density", "coverage",
                  "class_coverage_mean", "near_duplicate_rate_mean", "floor_fid", "floor_intra_fid_mean",
                  "floor_kid_mean"]
PROTOCOL_FIELDS = ["feature_space", "n_fake", "n_real", "real_split", "isc_splits"]
PER_CLASS_COLUMNS = ["class", "intra_fid", "diversity_ratio", "near_duplicate_rate", "class_coverage", "accuracy"]


def test_curve_and_final_lines_carry_every_metric_and_protocol_field(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli(*SMOKE, "train.iterations=3", "eval.every=2", "eval.real_split=test", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if x["phase"] in ("curve", "final")]
    assert [(x["phase"], x["iteration"]) for x in evals] == [("curve", 2), ("final", 3)]
    for x in evals:
        for key in DESIGN_METRICS + PROTOCOL_FIELDS:
            assert key in x and x[key] is not None, key
        assert x["real_split"] == "test" and x["feature_space"] == "classifier" and x["n_real"] == 360
        assert 0 < x["eval_generate_s"] < x["eval_s"]  # generation + features, then the metric math
    assert evals[0]["n_generated"] == 50 and evals[1]["n_generated"] == 100  # curve uses fewer samples
    per_class = pd.read_csv(run_dir / "per_class.csv")
    assert list(per_class.columns[:len(PER_CLASS_COLUMNS)]) == PER_CLASS_COLUMNS and len(per_class) == 10


@pytest.mark.slow
def test_installed_wheel_runs_without_the_source_tree(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps", "-q", "-w", str(wheels)],
                   check=True, capture_output=True)
    wheel = next(wheels.glob("cgan_bench-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {"PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import cgan_bench.app as a; print(a.CONF_DIR)"], cwd=tmp_path,
                           capture_output=True, text=True, env={**__import__("os").environ, **env})
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    r = run_cli(*SMOKE, "+sweep=digits", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "completed"


def test_a_checkout_running_another_checkouts_configs_is_warned(tmp_path):
    """A second clone's `python -m cgan_bench` imports its own code but resolves `cgan_bench.conf` through the
    editable install of the first: edits to its conf/ were ignored without a word."""
    from cgan_bench.app import CONF_DIR, configs_of_another_checkout
    assert configs_of_another_checkout(CONF_DIR) is None  # this checkout with its own configs (CI, day to day)
    warning = configs_of_another_checkout(str(tmp_path / "conf"))
    root = Path(cgan_bench.__file__).resolve().parent.parent
    assert warning == (f"warning: this checkout's code ({root}) is running with the configs of {tmp_path / 'conf'}, "
                       f"where pip's editable install points; run `pip install -e .` in {root} to use its own conf/")
