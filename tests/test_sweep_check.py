"""A sweep's jobs are checked before the first runs: a bad value in any job is one line and exit code 2 with
nothing run (it used to surface as that job's refusal after the jobs before it had trained); a job's folder is
named by its settings, so a sweep re-run with more seeds skips its finished jobs; two jobs that would share a
folder are refused; jobs that would train again what completed under another folder name are one warning line."""
import hashlib
import json
import os

import pytest
import yaml

from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from cgan_bench.overrides import compose_job, job_folder
from cgan_bench.sweep_check import SweepJobsValid, check_jobs, first_invalid_job, repeated_jobs, shared_folder, sweep_jobs
from conftest import SMOKE, run_cli, sweep_config


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


def test_a_job_folder_is_named_by_its_settings_not_its_place_in_the_sweep():
    assert job_folder("digits", "concat", 3, ["head=concat", "seed=3", "+adam=B", "wandb.mode=disabled",
                                              "+sweep=hparams", "hydra/launcher=joblib"]) == "digits_concat_s3_adam-B"
    assert job_folder("digits", "projection", 0, []) == "digits_projection_s0"
    # sorted, so the order on the command line does not matter
    assert job_folder("digits", "projection", 0, ["train=smoke", "eval=smoke"]) == \
        job_folder("digits", "projection", 0, ["eval=smoke", "train=smoke"]) == "digits_projection_s0_eval-smoke_train-smoke"
    # a path (unsafe in a name and in an override value) or a long value is its hash; a deleted key says so
    parent = "multirun/2026-12-01/digits_projection_s0"
    absolute = os.path.join(os.getcwd(), parent)  # the parent's path in one spelling: relative or absolute alike
    assert job_folder("digits", "projection", 0, [f"finetune.parent={parent}", "finetune.weight=0.1", "~train.lr"]) == \
        job_folder("digits", "projection", 0, [f"finetune.parent={absolute}/", "finetune.weight=0.1", "~train.lr"]) == \
        f"digits_projection_s0_finetune.parent-{hashlib.sha1(absolute.encode()).hexdigest()[:8]}_finetune.weight-0.1_no-train.lr"
    many = [f"train.key_number_{i}=value{i}" for i in range(8)]
    name = job_folder("digits", "projection", 0, many)
    assert name == "digits_projection_s0_" + hashlib.sha1(" ".join(sorted(many)).encode()).hexdigest()[:8]


def test_each_jobs_folder_is_resolved_from_its_own_config_and_a_shared_folder_is_refused(tmp_path):
    with sweep_config("head=projection,concat", "seed=0,1", "+adam=B", f"hydra.sweep.dir={tmp_path}") as cfg:
        problem, planned = check_jobs(cfg, sweep_jobs(cfg))
    assert problem is None and shared_folder(planned) is None
    assert [p.folder.relative_to(tmp_path).as_posix() for p in planned] == [
        "digits_projection_s0_adam-B", "digits_projection_s1_adam-B", "digits_concat_s0_adam-B", "digits_concat_s1_adam-B"]
    with sweep_config("head=projection", "eval.batch_size=64,128", f"hydra.sweep.dir={tmp_path}") as cfg:
        problem, planned = check_jobs(cfg, sweep_jobs(cfg))  # eval.batch_size changes no result
    assert problem is None and shared_folder(planned) == (
        "sweep jobs 0 (head=projection eval.batch_size=64) and 1 (head=projection eval.batch_size=128) would write to "
        f"one folder, {tmp_path}/digits_projection_s0: they differ only in eval.batch_size, which job folder names "
        "leave out; run them as separate sweeps (hydra.sweep.dir) or name folders apart (hydra.sweep.subdir)")
    # a subdir of Hydra's own keys resolves as the launchers resolve it (job.id and job.num set)
    with sweep_config("head=projection,concat", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.id}") as cfg:
        problem, planned = check_jobs(cfg, sweep_jobs(cfg))
    assert problem is None and [p.folder.name for p in planned] == ["0", "1"]  # Hydra's basic launcher: the number
    with sweep_config("head=projection,concat", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.id}",
                      "hydra/launcher=joblib") as cfg:
        problem, planned = check_jobs(cfg, sweep_jobs(cfg))
    assert problem is None and [p.folder.name for p in planned] == [f"{cfg.hydra.job.name}_{n}" for n in (0, 1)]


def fake_run(master, sweep_dir, name: str, overrides: list[str], state: str = "completed") -> None:
    """The files of a finished job folder that the check reads: status.json, and .hydra/ as Hydra writes it
    for these overrides (config.yaml: the job's config; overrides.yaml)."""
    cfg = compose_job(GlobalHydra.instance().config_loader(), master, overrides, 0)
    (sweep_dir / name / ".hydra").mkdir(parents=True)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.save(cfg, sweep_dir / name / ".hydra" / "config.yaml")
    (sweep_dir / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (sweep_dir / name / "status.json").write_text(json.dumps({"state": state}))


def test_jobs_that_repeat_completed_runs_under_other_folder_names_are_found(tmp_path, capsys):
    # a sweep from before folders were named by settings (Hydra numbered them: projection s0 = job 0, concat s0 =
    # job 1), then the same folder with seed=0,1: the finished seeds would train again under their new names
    with sweep_config("head=projection,concat,acgan", "seed=0,1", "train=smoke",
                      f"hydra.sweep.dir={tmp_path}") as cfg:
        fake_run(cfg, tmp_path, "0_digits_projection_s0", ["head=projection", "seed=0", "train=smoke",
                                                           "wandb.mode=disabled"])
        fake_run(cfg, tmp_path, "1_digits_concat_s0", ["head=concat", "seed=0", "train=smoke"])
        fake_run(cfg, tmp_path, "1_digits_acgan_s1", ["head=acgan", "seed=1", "train=smoke"], state="failed")
        jobs = sweep_jobs(cfg)
        assert jobs[2] == ["head=concat", "seed=0", "train=smoke"]
        planned = check_jobs(cfg, jobs)[1]
        # a failed run is not a repeat
        assert repeated_jobs(cfg, planned) == [(0, "0_digits_projection_s0"), (2, "1_digits_concat_s0")]
        fake_run(cfg, tmp_path, "digits_projection_s0_train-smoke", ["head=projection", "seed=0", "train=smoke"])
        assert repeated_jobs(cfg, planned) == [(2, "1_digits_concat_s0")]  # it has its own folder now
    with sweep_config("head=projection,concat", "seed=0", "train=quick", f"hydra.sweep.dir={tmp_path}") as cfg:
        assert repeated_jobs(cfg, check_jobs(cfg, sweep_jobs(cfg))[1]) == []  # other settings: not a repeat
    # the same settings spelled otherwise: train=quick is the default, its folder name says it, the run's does not
    with sweep_config("head=projection", f"hydra.sweep.dir={tmp_path / 'b'}") as cfg:
        fake_run(cfg, tmp_path / "b", "digits_projection_s0", ["head=projection"])
    with sweep_config("head=projection", "train=quick", "train.iterations=1200", f"hydra.sweep.dir={tmp_path / 'b'}") as cfg:
        planned = check_jobs(cfg, sweep_jobs(cfg))[1]
        assert planned[0].folder.name == "digits_projection_s0_train-quick_train.iterations-1200"
        assert repeated_jobs(cfg, planned) == [(0, "digits_projection_s0")]
        SweepJobsValid().on_multirun_start(cfg)  # what the sweep prints before its first job
    assert capsys.readouterr().err == (
        f"warning: 1 of 1 jobs repeat runs that completed in {tmp_path / 'b'} under other folder names (job 0: "
        "head=projection train=quick train.iterations=1200 repeats digits_projection_s0: the same settings, spelled "
        "by other overrides (one equal to its default?)), so they train again in new folders; drop the overrides "
        "that repeat the defaults to reuse those runs (Ctrl-C stops this one; finished jobs are kept)\n")
    with sweep_config("head=projection", "train.iterations=1300", f"hydra.sweep.dir={tmp_path / 'b'}") as cfg:
        assert repeated_jobs(cfg, check_jobs(cfg, sweep_jobs(cfg))[1]) == []  # a longer budget: not a repeat


@pytest.mark.slow
def test_a_sweep_rerun_with_more_seeds_skips_its_finished_jobs_and_warns_about_numbered_folders(tmp_path):
    sweep_dir = tmp_path / "sweep"
    numbered = "hydra.sweep.subdir=${hydra.job.num}_${hydra:runtime.choices.dataset}_${hydra:runtime.choices.head}_s${seed}"
    old = run_cli("-m", "head=projection", "seed=0", *SMOKE, f"hydra.sweep.dir={sweep_dir}", numbered)
    assert old.returncode == 0, old.stderr[-2000:]  # a sweep as they were named before: by job number
    first = run_cli("-m", "head=projection,concat", "seed=0", *SMOKE, f"hydra.sweep.dir={sweep_dir}")
    assert first.returncode == 0, first.stderr[-2000:]
    warnings = [line for line in first.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 1 of 2 jobs repeat runs that completed in {sweep_dir} under other folder names "
                        "(job 0: head=projection seed=0 " + " ".join(SMOKE) + " repeats 0_digits_projection_s0: older "
                        "sweeps named folders by job number), so they train again in new folders; to add seeds to "
                        "such a sweep, rerun it with only the new seeds (Ctrl-C stops this one; finished jobs are "
                        "kept)"], first.stderr[-3000:]
    assert f"to add seeds or heads to this sweep, rerun it with hydra.sweep.dir={sweep_dir} (finished jobs are " \
        "skipped)" in first.stdout + first.stderr
    names = {head: f"digits_{head}_s{{}}_eval-smoke_eval.classifier_epochs-2_train-smoke" for head in ("projection", "concat")}
    finished = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("digits_*/checkpoints/last.pt")}
    assert sorted(p.parent.parent.name for p in finished) == sorted(n.format(0) for n in names.values())
    again = run_cli("-m", "head=projection,concat", "seed=0,1", *SMOKE, f"hydra.sweep.dir={sweep_dir}")
    assert again.returncode == 0 and "warning:" not in again.stderr, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("is already completed; skipping") == 2
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # seed 0 of both heads was not trained again
    for name in names.values():
        assert json.loads((sweep_dir / name.format(1) / "status.json").read_text())["state"] == "completed"
    report = (sweep_dir / "report" / "report.md").read_text()
    # the numbered projection s0 and its new folder: counted once, the newest
    assert "- digits: projection seed 0 completed 2 times; the tables use " + names["projection"].format(0) in report
    assert "concat seed 0 completed 2 times" not in report and "seed 1 completed" not in report


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


@pytest.mark.slow
def test_a_sweep_rerun_whose_jobs_are_refused_exits_2(tmp_path):
    """Rerunning a finished sweep with a setting its folder names leave out (here where the data is) refuses
    every job, rightly; the sweep still ended with exit code 0 and 'to add seeds ... rerun it', as if done."""
    sweep = tmp_path / "sweep"
    first = run_cli("-m", "seed=0", *SMOKE, f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_cli("-m", "seed=0", *SMOKE, f"+dataset.path={tmp_path}", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 2, again.stderr[-3000:]
    assert "error: 1 of the sweep's jobs were refused" in again.stderr and "to add seeds" not in again.stderr
    (run,) = [p for p in sweep.iterdir() if (p / "status.json").exists()]
    assert json.loads((run / "status.json").read_text())["state"] == "completed"  # its results kept
    assert run_cli("-m", "seed=0", *SMOKE, f"hydra.sweep.dir={sweep}").returncode == 0  # the marker is per sweep run
