"""A sweep's jobs are checked before the first runs: a bad value in any job is one line and exit code 2 with
nothing run (it used to surface as that job's refusal after the jobs before it had trained); jobs that would
train again what completed in the sweep folder under another job number are one warning line."""
import json

import pytest
import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from cgan_bench.cli_help import CONF_DIR
from cgan_bench.sweep_check import first_invalid_job, repeated_jobs, sweep_jobs
from conftest import SMOKE, run_cli


class sweep_config:
    """The config Hydra composes for `python -m cgan_bench -m OVERRIDES` (as the callback receives it), with
    Hydra initialised on our config folder while the block runs."""

    def __init__(self, *overrides: str):
        self.overrides = list(overrides)

    def __enter__(self):
        self.context = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
        self.context.__enter__()
        return GlobalHydra.instance().config_loader().load_configuration(
            config_name="config", overrides=self.overrides, run_mode=RunMode.MULTIRUN)

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


def test_a_bad_value_in_a_later_job_refuses_the_sweep_before_any_job_runs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    r = run_cli("-m", "head=projection,concat", "seed=0,-1", *SMOKE, f"hydra.sweep.dir={sweep_dir}")
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "sweep job 1 of 4" in errors[0] and "seed=-1" in errors[0], r.stderr[-2000:]
    assert "nothing was run" in errors[0] and "Traceback" not in r.stderr
    assert not list(sweep_dir.glob("**/status.json")) and not list(sweep_dir.glob("**/checkpoints"))


def test_jobs_are_expanded_in_hydras_launch_order_with_the_sweep_configs_params():
    with sweep_config("+sweep=stacked", "seed=0,1") as cfg:  # hydra.sweeper.params: dataset, head (8), seed
        jobs, problem = sweep_jobs(cfg), first_invalid_job(cfg)
    assert len(jobs) == 16
    # the command line's seed=0,1 replaces the config's seed list; the last swept key varies fastest
    assert jobs[0][:3] == ["dataset=stacked_digits", "head=projection", "seed=0"]
    assert jobs[1][:3] == ["dataset=stacked_digits", "head=projection", "seed=1"]
    assert jobs[2][1] == "head=concat"
    assert problem is None


def test_a_bad_setting_shared_by_every_job_names_job_0():
    with sweep_config("head=projection,concat", "train.lr=-1") as cfg:
        problem = first_invalid_job(cfg)
    assert problem.startswith("sweep job 0 of 2 (") and "train.lr=-1" in problem


def test_interpolations_in_overrides_stay_per_job_as_hydra_keeps_them():
    with sweep_config("model=small,sngan", "model.z_dim=${model.g_ch}") as cfg:
        jobs, problem = sweep_jobs(cfg), first_invalid_job(cfg)
    # each job keeps the interpolation (in Hydra's own escaped form), not the value it had in the first job
    assert all(job[-1].startswith("model.z_dim=") and "model.g_ch" in job[-1] for job in jobs)
    assert problem is None


def test_a_job_that_cannot_be_composed_or_read_is_one_line_too():
    with sweep_config("head=projection,concat", "~train.lr") as cfg:  # a key the job needs, deleted
        problem = first_invalid_job(cfg)
    assert problem.startswith("sweep job 0 of 2 (") and "\n" not in problem and "lr" in problem


def fake_run(sweep_dir, name: str, overrides: list[str], state: str = "completed") -> None:
    """The files of a finished job folder that the check reads: status.json and .hydra/overrides.yaml."""
    (sweep_dir / name / ".hydra").mkdir(parents=True)
    (sweep_dir / name / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (sweep_dir / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (sweep_dir / name / "status.json").write_text(json.dumps({"state": state}))


def test_jobs_that_repeat_completed_runs_under_other_job_numbers_are_found(tmp_path):
    # a first sweep (seed=0: projection = job 0, concat = job 1), then the same folder with seed=0,1: concat s0
    # is job 2 now, a new folder; projection s0 keeps job 0 (resumed/skipped)
    fake_run(tmp_path, "0_digits_projection_s0", ["head=projection", "seed=0", "train=smoke", "wandb.mode=disabled"])
    fake_run(tmp_path, "1_digits_concat_s0", ["head=concat", "seed=0", "train=smoke"])
    fake_run(tmp_path, "1_digits_acgan_s1", ["head=acgan", "seed=1", "train=smoke"], state="failed")
    with sweep_config("head=projection,concat,acgan", "seed=0,1", "train=smoke",
                      f"hydra.sweep.dir={tmp_path}") as cfg:
        jobs = sweep_jobs(cfg)
        assert jobs[2] == ["head=concat", "seed=0", "train=smoke"]
        assert repeated_jobs(cfg, jobs) == [(2, "1_digits_concat_s0")]  # a failed run is not a repeat
    with sweep_config("head=projection,concat", "seed=0", "train=quick", f"hydra.sweep.dir={tmp_path}") as cfg:
        assert repeated_jobs(cfg, sweep_jobs(cfg)) == []  # other settings: not a repeat
    with sweep_config("head=projection,concat", "seed=0,1", "train=smoke", f"hydra.sweep.dir={tmp_path}",
                      "hydra.sweep.subdir=${head.name}_${seed}") as cfg:
        assert repeated_jobs(cfg, sweep_jobs(cfg)) == []  # folders not named by job number: no claim made


@pytest.mark.slow
def test_a_sweep_rerun_with_a_longer_seed_list_warns_before_it_trains_again(tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = run_cli("-m", "head=projection,concat", "seed=0", *SMOKE, f"hydra.sweep.dir={sweep_dir}")
    assert first.returncode == 0, first.stderr[-2000:]
    more = run_cli("-m", "head=projection,concat", "seed=1", *SMOKE, f"hydra.sweep.dir={sweep_dir}")
    assert more.returncode == 0 and "warning:" not in more.stderr  # only the new seed: the way to add seeds
    again = run_cli("-m", "head=projection,concat", "seed=0,1", *SMOKE, f"hydra.sweep.dir={sweep_dir}")
    warnings = [line for line in again.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 3 of 4 jobs repeat runs that completed in {sweep_dir} under other job numbers "
                        "(job 1: head=projection seed=1 " + " ".join(SMOKE) + " repeats 0_digits_projection_s1), so they "
                        "train again in new folders; to add seeds to a sweep, rerun it with only the new seeds "
                        "(Ctrl-C stops this one; finished jobs are kept)"], again.stderr[-3000:]
    report = (sweep_dir / "report" / "report.md").read_text()
    assert "- digits: concat seed 0 completed 2 times; the tables use 2_digits_concat_s0 (the newest)" in report


def test_the_finetune_recipe_without_a_parent_is_refused_before_any_job():
    """Without finetune.parent, +sweep=finetune ran 4 identical default trainings (6 minutes) and exited 0."""
    with sweep_config("+sweep=finetune") as cfg:
        problem = first_invalid_job(cfg)
    assert problem.startswith("sweep job 0 of 4 (") and problem.endswith(
        "finetune.parent is required here (+sweep=finetune fine-tunes a finished run): add "
        "finetune.parent=runs/<a completed run>")
    with sweep_config("+sweep=finetune", "finetune.parent=runs/no_such_run") as cfg:
        problem = first_invalid_job(cfg)  # the parent is checked up front too (it failed 4 jobs, exit 1)
    assert problem.startswith("sweep job 0 of 4 (") and problem.endswith(
        "finetune.parent=runs/no_such_run is not allowed: no such directory (give the run directory of a "
        "completed run)")
