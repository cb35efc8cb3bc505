"""Every job of a sweep checked before the first one runs: a bad value in job 5 of 40 is one line and exit
code 2 at the start, not a refusal hours later after jobs 0-4 trained.

Hydra's basic sweeper expands the overrides (`head=a,b seed=range(3)` and the config's hydra.sweeper.params)
into jobs and composes each job's config only when its batch launches. This callback, at multirun start,
expands them the same way (BasicSweeper.split_arguments), composes each job's config with Hydra's own config
loader (as Sweeper.validate_batch_is_legal does) and runs config.validate on it: the checks a job makes before
it loads data (and, for a fine-tune, that its parent is a completed run of the model it builds). Checks that
need the dataset (batch vs training-set size) still run per job.

It also warns (one line) where jobs repeat runs that completed in the sweep folder under other job numbers:
Hydra names a job's folder by its number, so a sweep re-run with a longer seed list trains finished seeds
again in new folders instead of skipping them (the report then counts each seed once).
"""
import sys
from pathlib import Path

import yaml

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from .config import ConfigError, validate
from .train import finetune
from .report.collect import find_run_dirs, is_neutral, read_status

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


def first_invalid_job(config: DictConfig, jobs: list[list[str]] | None = None) -> str | None:
    """'job N of M (overrides): problem' for the first job whose config fails validation, else None."""
    loader = GlobalHydra.instance().config_loader()
    jobs = sweep_jobs(config) if jobs is None else jobs
    for num, job in enumerate(jobs):
        try:
            cfg = loader.load_sweep_config(master_config=config, sweep_overrides=list(job))
            sweep_dir = Path(str(cfg.hydra.sweep.dir))
            with open_dict(cfg):
                del cfg["hydra"]  # the job's own settings, as the job sees them
            validate(cfg)
            if OmegaConf.select(cfg, "finetune.parent") is not None:  # a fine-tune: its parent, as the job reads it
                finetune.check_parent(cfg, sweep_dir / "job", warn=False)
        except Exception as err:  # a ConfigError; or a deleted key, a broken interpolation the job would stop at
            text = str(err) if isinstance(err, ConfigError) else \
                f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
            return f"sweep job {num} of {len(jobs)} ({' '.join(job)}): {text}"
    return None


def settings(overrides) -> frozenset:
    """A job's overrides that change what it computes (not where it writes or logs: report.collect's neutral ones)."""
    return frozenset(str(o) for o in overrides if not is_neutral(str(o).partition("=")[0]))


def repeated_jobs(config: DictConfig, jobs: list[list[str]]) -> list[tuple[int, str]]:
    """(job number, folder) of each job whose settings equal those of a run that completed in the sweep folder
    under another job number: it would train again. Only for job folders named by number first (the default
    hydra.sweep.subdir); a folder with this job's number is resumed or skipped, as README says."""
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir", "")
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if not str(subdir).startswith("${hydra.job.num}_") or not sweep_dir.is_dir():
        return []
    done: dict[frozenset, list[str]] = {}
    for run in find_run_dirs(sweep_dir):
        if read_status(run).get("state") != "completed":
            continue
        try:
            overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
        except (OSError, ValueError, yaml.YAMLError):
            continue
        done.setdefault(settings(overrides), []).append(run.name)
    repeats = []
    for num, job in enumerate(jobs):
        folders = done.get(settings(job), [])
        if folders and not any(f.startswith(f"{num}_") for f in folders):
            repeats.append((num, folders[0]))
    return repeats


class SweepJobsValid(Callback):
    """Refuses a sweep (one line, exit code 2, nothing run) when any of its jobs has a setting validation
    refuses. Only for Hydra's basic sweeper: other sweepers choose values as they go."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
            return
        jobs = sweep_jobs(config)
        problem = first_invalid_job(config, jobs)
        if problem:
            print(f"error: {problem}; nothing was run: fix that value and rerun the sweep", file=sys.stderr)
            sys.exit(2)
        repeats = repeated_jobs(config, jobs)
        if repeats:
            num, folder = repeats[0]
            print(f"warning: {len(repeats)} of {len(jobs)} jobs repeat runs that completed in "
                  f"{config.hydra.sweep.dir} under other job numbers (job {num}: {' '.join(jobs[num])} repeats "
                  f"{folder}), "
                  "so they train again in new folders; to add seeds to a sweep, rerun it with only the new seeds "
                  "(Ctrl-C stops this one; finished jobs are kept)", file=sys.stderr)
