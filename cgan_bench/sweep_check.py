"""Every job of a sweep checked before the first one runs: a bad value in job 5 of 40 is one line and exit
code 2 at the start, not a refusal hours later after jobs 0-4 trained.

Hydra's basic sweeper expands the overrides (`head=a,b seed=range(3)` and the config's hydra.sweeper.params)
into jobs and composes each job's config only when its batch launches. This callback, at multirun start,
expands them the same way (BasicSweeper.split_arguments), composes each job's config with Hydra's own config
loader (as Sweeper.validate_batch_is_legal does) and runs config.validate on it: the checks a job makes before
it loads data (and, for a fine-tune, that its parent is a completed run of the model it builds). Checks that
need the dataset (batch vs training-set size) still run per job.

A job's folder is named by its settings (overrides.job_folder), so a sweep re-run with more seeds skips its
finished jobs. Two jobs that would share a folder are refused (one line). Runs that completed in the sweep
folder under other names (sweeps from before that naming, when Hydra numbered job folders, or another
hydra.sweep.subdir) would train again in new folders: one warning line (the report counts each seed once).
"""
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from .config import ConfigError, validate
from .train import finetune
from .overrides import compose_job, job_run_dir
from .report.collect import find_run_dirs, read_status
from .train.loop import config_differences, resume_relevant

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override list of each job, in launch order, as Hydra's basic sweeper makes them."""
    # unresolved, as Hydra's sweeper reads them: `head.x=${model.d_ch}` must stay an interpolation per job
    swept = OmegaConf.select(config, "hydra.sweeper.params")
    params = [f"{k}={v}" for k, v in (OmegaConf.to_container(swept, resolve=False) if swept else {}).items()]
    params += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    loader = GlobalHydra.instance().config_loader()
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(params)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


@dataclass
class PlannedJob:
    """A sweep job as the check composed it: its overrides, the folder it will write, what it computes."""
    overrides: list[str]
    folder: Path
    computes: dict  # the resolved settings a resume compares (loop.resume_relevant) and train.iterations


def computed_settings(cfg: DictConfig) -> dict:
    """What a job's config computes: loop.resume_relevant (where it writes or logs left out) and its budget
    (compared by loop.config_differences, which reads paths in one spelling)."""
    return {**resume_relevant(cfg), "train.iterations": OmegaConf.select(cfg, "train.iterations")}


def check_jobs(config: DictConfig, jobs: list[list[str]]) -> tuple[str | None, list[PlannedJob]]:
    """('job N of M (overrides): problem' for the first job whose config fails validation, else None; each job
    checked before it, planned)."""
    loader = GlobalHydra.instance().config_loader()
    planned = []
    for num, job in enumerate(jobs):
        try:
            cfg = compose_job(loader, config, job, num)
            folder, sweep_dir = job_run_dir(cfg), Path(str(cfg.hydra.sweep.dir))
            with open_dict(cfg):
                del cfg["hydra"]  # the job's own settings, as the job sees them
            validate(cfg)
            if OmegaConf.select(cfg, "finetune.parent") is not None:  # a fine-tune: its parent, as the job reads it
                finetune.check_parent(cfg, sweep_dir / "job", warn=False)
            planned.append(PlannedJob(list(job), folder, computed_settings(cfg)))
        except Exception as err:  # a ConfigError; or a deleted key, a broken interpolation the job would stop at
            text = str(err) if isinstance(err, ConfigError) else \
                f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
            return f"sweep job {num} of {len(jobs)} ({' '.join(job)}): {text}", planned
    return None, planned


def first_invalid_job(config: DictConfig, jobs: list[list[str]] | None = None) -> str | None:
    """'job N of M (overrides): problem' for the first job whose config fails validation, else None."""
    return check_jobs(config, sweep_jobs(config) if jobs is None else jobs)[0]


def shared_folder(planned: list[PlannedJob]) -> str | None:
    """One line where two jobs would write to one folder, else None: the second would resume or skip the first.
    They differ only in overrides that folder names leave out (report.collect's neutral ones, e.g. where data is
    read from or how large an evaluation batch is), or in a hydra.sweep.subdir that does not tell them apart."""
    first: dict[Path, int] = {}
    for num, job in enumerate(planned):
        if job.folder in first:
            other = planned[first[job.folder]]
            keys = sorted({o.partition("=")[0].lstrip("+~") for o in set(other.overrides) ^ set(job.overrides)})
            return (f"sweep jobs {first[job.folder]} ({' '.join(other.overrides)}) and {num} "
                    f"({' '.join(job.overrides)}) would write to one folder, {job.folder}: they differ only in "
                    f"{', '.join(keys) or 'nothing'}, which job folder names leave out; run them as separate "
                    "sweeps (hydra.sweep.dir) or name folders apart (hydra.sweep.subdir)")
        first[job.folder] = num
    return None


def completed_runs(sweep_dir: Path) -> list[tuple[str, dict]]:
    """(folder name, what it computed) of each run that completed in the sweep folder and whose config reads."""
    done = []
    for run in find_run_dirs(sweep_dir):
        if read_status(run).get("state") != "completed":
            continue
        try:
            done.append((run.name, computed_settings(OmegaConf.load(run / ".hydra" / "config.yaml"))))
        except Exception:  # unreadable, or an interpolation that no longer resolves: no claim made
            continue
    return done


def repeated_jobs(config: DictConfig, planned: list[PlannedJob]) -> list[tuple[int, str]]:
    """(job number, folder) of each job that computes what a run that completed in the sweep folder under
    another folder name computed (a sweep from before folders were named by settings, when Hydra numbered them;
    the same settings spelled by other overrides, e.g. `train=paper` that dataset=cifar10 picks anyway; another
    hydra.sweep.subdir): it would train again. A job's own folder is resumed or skipped."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    done = completed_runs(sweep_dir) if sweep_dir.is_dir() else []
    repeats = []
    for num, job in enumerate(planned):
        same = [name for name, settings in done if not config_differences(settings, job.computes)]
        if same and job.folder.name not in same:
            repeats.append((num, same[0]))
    return repeats


class SweepJobsValid(Callback):
    """Refuses a sweep (one line, exit code 2, nothing run) when any of its jobs has a setting validation
    refuses. Only for Hydra's basic sweeper: other sweepers choose values as they go."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
            return
        jobs = sweep_jobs(config)
        problem, planned = check_jobs(config, jobs)
        if problem:
            print(f"error: {problem}; nothing was run: fix that value and rerun the sweep", file=sys.stderr)
            sys.exit(2)
        problem = shared_folder(planned)
        if problem:
            print(f"error: {problem}; nothing was run", file=sys.stderr)
            sys.exit(2)
        repeats = repeated_jobs(config, planned)
        if repeats:
            num, folder = repeats[0]
            why, fix = ("older sweeps named folders by job number", "to add seeds to such a sweep, rerun it with "
                        "only the new seeds") if re.match(r"\d+_", folder) else \
                ("the same settings, spelled by other overrides (one equal to its default?)",
                 "drop the overrides that repeat the defaults to reuse those runs")
            print(f"warning: {len(repeats)} of {len(jobs)} jobs repeat runs that completed in "
                  f"{config.hydra.sweep.dir} under other folder names (job {num}: {' '.join(jobs[num])} repeats "
                  f"{folder}: {why}), so they train again in new folders; {fix} "
                  "(Ctrl-C stops this one; finished jobs are kept)", file=sys.stderr)
