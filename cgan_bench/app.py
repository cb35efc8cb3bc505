"""`python -m cgan_bench`: the Hydra entry point. One job = validate -> data -> models -> train -> evaluate.

Read top to bottom: `main` (Hydra) -> `run_job` (the job, usable without Hydra) -> Trainer.fit (train/loop.py)
-> Evaluator.evaluate (metrics/evaluator.py). Everything a job produces lands in its run directory.
"""
import logging
import sys
import time
from importlib.resources import files
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import ConfigError, check_against_data, validate
from .data import DataMissingError, load_dataset
from .heads import UnknownHeadError
from .metrics.evaluator import Evaluator
from .metrics.feature_space import WeightsMissingError, make_feature_space
from .train.loop import Diverged, Trainer
from .train.run_dir import RunDir
from .train.samples import morph_grid, save_png
from .tracking import WandbTracker, resolve_mode

log = logging.getLogger("cgan_bench")
CONF_DIR = str(files("cgan_bench.conf"))
USER_ERRORS = (ConfigError, DataMissingError, WeightsMissingError, UnknownHeadError)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not allowed: no CUDA device is visible (use device=cpu or auto)")
    return torch.device(name)


def run_job(cfg: DictConfig, run_dir: Path, group: str = "single") -> dict | None:
    """Run (or resume, or skip if finished) one training job in `run_dir`; returns the final metrics.
    `group` names the sweep for W&B."""
    run = RunDir(run_dir)
    previous = run.read_status()
    if cfg.resume and previous and previous["state"] == "completed" \
            and previous.get("total_iterations") == cfg.train.iterations:
        finals = [r for r in run.metrics() if r.get("phase") == "final"]
        if finals:
            log.info("%s is already completed; skipping (delete it or set resume=false to train again)", run_dir)
            return finals[-1]
    t_start = time.perf_counter()
    trainer, tracker = None, None
    try:
        validate(cfg)
        device = resolve_device(str(cfg.device))
        d = cfg.dataset
        options = {k: v for k, v in d.items() if k not in ("name", "resolution", "feature_space")}
        train_data = load_dataset(d.name, "train", d.resolution, **options)
        test_data = load_dataset(d.name, "test", d.resolution, **options)
        check_against_data(cfg, len(train_data), train_data.n_classes)
        e = cfg.eval
        space = make_feature_space(e.feature_space, train_data.to(device), test_data.to(device), device,
                                   inception_weights=e.inception_weights, classifier_epochs=e.classifier_epochs,
                                   cache_dir=e.cache_dir)
        real = train_data if e.real_split == "train" else test_data
        if resolve_mode(cfg.wandb.mode) != "disabled":
            tracker = WandbTracker(cfg, run.path, group=group, job_type=cfg.head.name)
        trainer = Trainer(cfg, train_data.to(device), run, device, tracker=tracker)
        if cfg.resume and trainer.resume():
            log.info("resuming %s at iteration %d", run_dir, trainer.iteration)
        trainer.evaluator = Evaluator(e, space, real.to(device), run, device, cfg.model.z_dim, cfg.seed, tracker)
        trainer.fit()
        final = trainer.evaluator.evaluate(trainer.G, trainer.iteration, "final")
        trainer.save_samples("final")
        if train_data.n_classes >= 2:
            save_png(morph_grid(trainer.G, 0, 1, train_data.n_classes, cfg.model.z_dim, device),
                     run.samples / "morph.png")
        trainer.status("completed", 0, t_start)
        if tracker is not None:
            tracker.finish(0)
        return final
    except USER_ERRORS as err:
        run.write_status("failed", 0, int(cfg.train.iterations), time.perf_counter() - t_start, None, str(err))
        raise
    except Diverged as err:
        it = trainer.iteration if trainer else 0
        run.write_status("diverged", it, int(cfg.train.iterations), time.perf_counter() - t_start, None, str(err))
        log.error("run diverged: %s", err)
        if tracker is not None:
            tracker.finish(1)
        return None
    except BaseException as err:
        it = trainer.iteration if trainer else 0
        reason = f"{type(err).__name__}: {err}"
        run.write_status("failed", it, int(cfg.train.iterations), time.perf_counter() - t_start, None, reason)
        if tracker is not None:
            tracker.finish(1)
        raise


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    try:
        multirun = hc.mode == RunMode.MULTIRUN
        group = Path(hc.sweep.dir).name if multirun else Path(hc.runtime.output_dir).name
        final = run_job(cfg, Path(hc.runtime.output_dir), group)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        if multirun:
            return None  # recorded as failed in the run directory; the sweep goes on
        sys.exit(2)
    except Exception:
        if not multirun:
            raise
        # recorded as failed in status.json; keep the sweep (and its final report) going
        log.exception("job failed; the sweep continues")
        return None
    return None if final is None else final.get("fid")
