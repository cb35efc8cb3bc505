"""A sweep's jobs are checked before the first runs: a bad value in any job is one line and exit code 2 with
nothing run (it used to surface as that job's refusal after the jobs before it had trained)."""
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from cgan_bench.cli_help import CONF_DIR
from cgan_bench.sweep_check import first_invalid_job, sweep_jobs
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
