"""`python -m cgan_bench`: the Hydra entry point. One job = validate -> data -> models -> train -> evaluate.

Read top to bottom: `cli` (checks group names, then Hydra) -> `main` (one Hydra job) -> `run_job` (the job,
usable without Hydra) -> Trainer.fit (train/loop.py) -> Evaluator.evaluate (metrics/evaluator.py).
Everything a job produces lands in its run directory.
"""
import errno
import logging
import os
import shutil
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, check_against_data, check_group_overrides, check_key_overrides, validate
from .data import DataMissingError, load_dataset
from .heads import UnknownHeadError
from .io import atomic_write_text
from .metrics.feature_space import WeightsMissingError, make_feature_space
from .tracking import WandbTracker, resolve_mode
from .train.checkpoint import CheckpointUnreadable
from .train.loop import Diverged, Preempted, PreemptionSignals, ResumeConfigMismatch, ResumePastBudget, Trainer
from .train.run_dir import RunDir
from .train.run_lock import RunDirBusy, RunDirLock
from .train.samples import morph_grid, save_png

log = logging.getLogger("cgan_bench")
CONF_DIR = str(files("cgan_bench.conf"))
USER_ERRORS = (ConfigError, DataMissingError, WeightsMissingError, UnknownHeadError, ResumeConfigMismatch,
               RunDirBusy, CheckpointUnreadable)
# A run directory that cannot be written: disk full, read-only, no permission, quota (one line, exit code 2).
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM}


class CannotWrite(OSError):
    """Writing the run directory failed for a reason the user fixes (a full disk, a read-only location...)."""

    def __str__(self) -> str:
        return str(self.strerror)


def cannot_write(err: OSError, run_dir: Path, setting: str = "hydra.run.dir") -> CannotWrite | None:
    """The one-line error for a failed write, or None where it is no write error of the run's (EACCES reading
    a file elsewhere, an errno outside WRITE_ERRNOS)."""
    if err.errno not in WRITE_ERRNOS or isinstance(err, CannotWrite):
        return None
    path = Path(os.fsdecode(err.filename)) if err.filename else Path(run_dir)
    inside = path.absolute().is_relative_to(Path(run_dir).absolute())
    if not inside and err.errno in (errno.EACCES, errno.EPERM):
        return None
    fix = "free space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    advice = f"{fix} or choose another {setting}" if inside else fix
    return CannotWrite(err.errno, f"cannot write {path}: {err.strerror or os.strerror(err.errno)} ({advice})")


USER_ERRORS = (*USER_ERRORS, CannotWrite)
# Exit codes of a single run: 0 completed (or preempted: rerun to resume), 1 crashed (traceback),
# 2 refused (a user error: one line on stderr), 3 diverged (one line on stderr; recorded in status.json).
EXIT_USER_ERROR, EXIT_DIVERGED = 2, 3


def resolve_device(name: str, job_num: int = 0) -> torch.device:
    """auto = CUDA if visible; several GPUs are shared round-robin by job number (parallel launchers)."""
    if name == "auto":
        n_gpus = torch.cuda.device_count()
        return torch.device(f"cuda:{job_num % n_gpus}" if n_gpus else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not allowed: no CUDA device is visible (use device=cpu or auto)")
    return torch.device(name)


def start_over(run: RunDir) -> None:
    """resume=false: forget everything this run directory holds from an earlier attempt."""
    for name in ("checkpoints", "samples"):
        shutil.rmtree(run.path / name, ignore_errors=True)
    for f in (run.metrics_file, run.per_class_file, run.status_file):
        f.unlink(missing_ok=True)


def run_job(cfg: DictConfig, run_dir: Path, group: str = "single", job_num: int = 0,
            hydra_files: dict[str, str] | None = None) -> dict | None:
    """Run (or resume, or skip if finished) one training job in `run_dir`; returns the final metrics.
    A diverged run is recorded in status.json, then Diverged is raised.
    `group` names the sweep for W&B. The job holds the run directory's lock (train/run_lock.py) from before it
    reads anything there until it ends; if another job holds it, RunDirBusy is raised and nothing is written.
    `hydra_files` (path relative to run_dir -> text) is what Hydra wrote there for this job: rewritten before the
    lock is released if a refused job's Hydra overwrote it meanwhile."""
    try:
        with RunDirLock(run_dir):
            try:
                return _run_job_locked(cfg, run_dir, group, job_num)
            finally:
                restore_files(Path(run_dir), hydra_files or {})
    except OSError as err:  # checkpoints are written atomically: the last complete one is still there
        refusal = cannot_write(err, Path(run_dir))
        if refusal is None:
            raise
        raise refusal from err


def final_evaluation(trainer: Trainer) -> dict:
    """The final evaluation, preemptible like training: SIGTERM/SIGUSR1 stop it between generation batches,
    the run is marked `preempted` (its last checkpoint is at the final iteration) and a rerun evaluates again."""
    from .metrics.evaluator import EvaluationStopped
    with PreemptionSignals() as preemption:
        try:
            return trainer.evaluator.evaluate(trainer.G, trainer.iteration, "final", stop=lambda: preemption.signal)
        except EvaluationStopped:
            trainer.status("preempted", reason=f"signal {preemption.signal.name} during the final evaluation")
            raise Preempted(preemption.signal, preemption.previous_handler) from None


def restore_files(run_dir: Path, files_: dict[str, str]) -> None:
    """Rewrite each file under run_dir whose text differs (best effort: never masks the job's own outcome)."""
    for name, text in files_.items():
        path = run_dir / name
        try:
            if not path.exists() or path.read_text() != text:
                atomic_write_text(path, text)
                log.info("restored %s (overwritten by a job refused for this run directory)", path)
        except OSError as err:
            log.warning("could not restore %s: %s", path, err)


def _run_job_locked(cfg: DictConfig, run_dir: Path, group: str, job_num: int) -> dict | None:
    run = RunDir(run_dir)
    previous = run.read_status()
    if cfg.resume and previous and previous["state"] == "completed" \
            and previous.get("total_iterations") == cfg.train.iterations:
        finals = [r for r in run.metrics() if r.get("phase") == "final"]
        if finals:
            log.info("%s is already completed; skipping (delete it or set resume=false to train again)", run_dir)
            return finals[-1]
    from .metrics.evaluator import Evaluator  # torch-fidelity, pandas: only once a job really runs
    t_start = time.perf_counter()
    trainer, tracker = None, None
    try:
        validate(cfg)
        if not cfg.resume:
            start_over(run)
        device = resolve_device(str(cfg.device), job_num)
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
        trainer = Trainer(cfg, train_data.to(device), run, device)
        if cfg.resume and trainer.resume():
            log.info("resuming %s at iteration %d", run_dir, trainer.iteration)
        if resolve_mode(cfg.wandb.mode) != "disabled":
            tracker = trainer.tracker = WandbTracker(cfg, run.path, group=group, job_type=cfg.head.name)
        trainer.evaluator = Evaluator(e, space, real.to(device), run, device, cfg.model.z_dim, cfg.seed, tracker,
                                      held_out=test_data.to(device))
        trainer.fit()
        final = final_evaluation(trainer)
        trainer.save_samples("final")
        if train_data.n_classes >= 2:
            save_png(morph_grid(trainer.G, 0, 1, train_data.n_classes, cfg.model.z_dim, device,
                                channels_apart=bool(d.get("channels_apart", False))),
                     run.samples / "morph.png")
        trainer.status("completed")
        if tracker is not None:
            tracker.finish(0)
        return final
    except Preempted:
        if tracker is not None:
            tracker.finish(0)
        raise
    except USER_ERRORS as err:
        # a refusal never rewrites what the directory holds (ResumePastBudget), nor marks a completed run failed
        if not isinstance(err, ResumePastBudget) and (run.read_status() or {}).get("state") != "completed":
            run.write_status("failed", 0, int(cfg.train.iterations), time.perf_counter() - t_start, None, str(err))
        raise
    except Diverged as err:
        trainer.status("diverged", reason=str(err))
        log.error("run diverged: %s (the last good checkpoint is kept)", err)
        if tracker is not None:
            tracker.finish(1)
        raise
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
    multirun = hc.mode == RunMode.MULTIRUN
    group = Path(hc.sweep.dir).name if multirun else Path(hc.runtime.output_dir).name
    job_num = hc.job.num if multirun else 0
    hydra_files = {}
    if hc.output_subdir is not None:  # what Hydra just wrote to the run directory (hydra.core.utils.run_job)
        sub = Path(hc.output_subdir)
        hydra_files = {str(sub / "config.yaml"): OmegaConf.to_yaml(cfg),
                       str(sub / "hydra.yaml"): OmegaConf.to_yaml(HydraConfig.instance().cfg),
                       str(sub / "overrides.yaml"): OmegaConf.to_yaml(hc.overrides.task)}
    try:
        final = run_job(cfg, Path(hc.runtime.output_dir), group, job_num, hydra_files)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        if multirun:
            return None  # recorded as failed in the run directory (busy: left to its holder); the sweep goes on
        sys.exit(EXIT_USER_ERROR)
    except Diverged as err:
        if multirun:
            return None  # recorded as diverged in status.json; the sweep goes on and its report lists it
        print(f"error: run diverged: {err}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except Preempted as p:
        print(f"{p}: checkpoint written, status 'preempted'; rerun the same command to resume", file=sys.stderr)
        if callable(p.previous_handler):  # e.g. submitit's handler: requeue the job, which then resumes
            p.previous_handler(p.signal, None)
        if multirun:
            return None
        sys.exit(0)
    except Exception:
        if not multirun:
            raise
        # recorded as failed in status.json; keep the sweep (and its final report) going
        log.exception("job failed; the sweep continues")
        return None
    if final is not None:
        print(final_summary(final, Path(hc.runtime.output_dir)), file=sys.stderr)
    return None if final is None else final.get("fid")


def final_summary(r: dict, run_dir: Path) -> str:
    """The final evaluation in a few lines (stderr, beside the progress bar), each number with its yardstick."""
    lines = [f"final evaluation at iteration {r['iteration']} ({r['feature_space']} space, {r['n_generated']} "
             f"generated, FID on {r['n_real']} real vs {r['n_fake']} generated):",
             f"  FID {r['fid']:.2f} (real vs real {r.get('floor_fid', float('nan')):.2f}) | intra-FID "
             f"{r['intra_fid_mean']:.2f} (real vs real {r.get('floor_intra_fid_mean', float('nan')):.2f}) | "
             f"KID x10^3 {1e3 * r['kid_mean']:.2f} ± {1e3 * r.get('kid_sem', float('nan')):.2f} | IS {r['is_mean']:.3f}",
             f"  class accuracy {r['class_accuracy']:.3f} | precision {r['precision']:.3f} recall {r['recall']:.3f} | "
             f"density {r.get('density', float('nan')):.3f} coverage {r.get('coverage', float('nan')):.3f} | "
             f"collapsed classes {r['collapsed_classes']}"]
    if "modes_covered_mean" in r:
        lines.append(f"  modes covered per class {r['modes_covered_mean']:.1f}/100 (real {r['real_modes_covered_mean']:.1f}) | "
                     f"total {r['modes_total']}/1000 (real {r['real_modes_total']}) | KL to uniform "
                     f"{r['mode_kl_mean']:.3f} nats (real {r['real_mode_kl_mean']:.3f}) | mode-collapsed classes "
                     f"{r['mode_collapsed_classes']}")
    lines.append(f"  run directory: {run_dir}")
    return "\n".join(lines)


class RunDirWritable(Callback):
    """Hydra makes the run (sweep) directory and writes .hydra/ there before a job starts: probe it first, so a
    full disk or an unwritable location is one line and exit code 2 instead of Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._probe(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._probe(config, "hydra.sweep.dir")

    @staticmethod
    def _probe(config: DictConfig, key: str) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra's run_job does next: resolves ${hydra:...}, ${now:...}
        path = Path(str(OmegaConf.select(config, key)))
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=path, prefix=".write_test.")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            refusal = cannot_write(err, Path(os.fsdecode(err.filename or path)), key)
            if refusal is None:
                raise
            print(f"error: {refusal}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)


def cli() -> None:
    """Unknown config-group options (head=nope) and keys no config defines (+train.iteration=5) get one line and
    exit code 2 before Hydra starts."""
    try:
        check_group_overrides(sys.argv[1:], Path(CONF_DIR))
        check_key_overrides(sys.argv[1:], Path(CONF_DIR))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()
