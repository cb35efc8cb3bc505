"""`python -m cgan_bench`: the Hydra entry point. One job = validate -> data -> models -> train -> evaluate.

Read top to bottom: `cli` (checks group names, then Hydra) -> `main` (one Hydra job) -> `run_job` (the job,
usable without Hydra) -> Trainer.fit (train/loop.py) -> Evaluator.evaluate (metrics/evaluator.py).
Everything a job produces lands in its run directory.
"""
import atexit
import copy
import errno
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .cli_help import CONF_DIR, sweep_without_multirun, usage, version_line
from .config import ConfigError, check_against_data, check_group_overrides, check_key_overrides, validate
from .data import DataMissingError, load_dataset
from .heads import UnknownHeadError
from .io import atomic_write_text
from .metrics.feature_space import WeightsMissingError, inception_weights_path, make_feature_space
from .metrics.kid_error import kid_unit
from .overrides import register_resolver
from .tracking import WandbTracker, resolve_mode
from .train import distributed, finetune
from .train.cuda_graph import check_supported as check_graph_supported
from .train.checkpoint import CheckpointUnreadable, load_best, load_checkpoint
from .train.loop import (Diverged, Preempted, PreemptionSignals, ResumeConfigMismatch, ResumePastBudget, Trainer,
                         check_resumable, refuse_other_config)
from .train.precision import resolve_precision
from .train.run_dir import RunDir, earlier_wall_s
from .train.run_lock import RunDirBusy, RunDirLock
from .train.samples import save_final_figures

log = logging.getLogger("cgan_bench")
USER_ERRORS = (ConfigError, DataMissingError, WeightsMissingError, UnknownHeadError, ResumeConfigMismatch,
               RunDirBusy, CheckpointUnreadable)
# A run directory that cannot be written: disk full, read-only, no permission, quota, a file where a folder of
# its path should be, a folder that cannot be made (one line, exit code 2).
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM, errno.ENOTDIR, errno.ENOENT}
PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENOENT}  # outside the run directory: not ours


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
    if (not inside and err.errno in PATH_ERRNOS) or (err.errno in (errno.ENOTDIR, errno.ENOENT) and not err.filename):
        return None
    if err.errno in (errno.ENOTDIR, errno.ENOENT):  # the path itself: a file in it, a folder that cannot be made
        what = ("a file stands where its path needs a folder" if err.errno == errno.ENOTDIR
                else "its folder cannot be made")
        return CannotWrite(err.errno, f"cannot write {path}: {what}; choose another {setting}")
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


def recipe_choice(group: str) -> str | None:
    """The option Hydra composed for a config group (`paper` for train=paper); None outside a Hydra job."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def refuse_cpu_fallback(cfg: DictConfig, device: torch.device) -> None:
    """device=auto found no CUDA device, and the train recipe is sized for a GPU (train.gpu_recipe: the paper's
    50k iterations would take days on a CPU): refuse (one line, exit code 2) instead of silently falling back.
    An explicit device=cpu runs it anyway."""
    if str(cfg.device) != "auto" or device.type != "cpu" or not cfg.train.get("gpu_recipe", False):
        return
    recipe = recipe_choice("train")
    name = f"train={recipe}" if recipe else "this train recipe (train.gpu_recipe=true)"
    raise ConfigError(f"{name} is a GPU recipe ({cfg.train.iterations} iterations) but no CUDA device is visible; "
                      f"set device=cpu to run it on the CPU anyway, or train=quick")


def refuse_unsupported_graph(cfg: DictConfig, device: torch.device) -> None:
    """train.cuda_graph=true where it cannot run (train/cuda_graph.py): one line before the data is loaded. A
    dataset that dataset.storage=auto streams is only known once loaded; the Trainer refuses it then."""
    streamed = cfg.dataset.get("storage", "auto") == "stream"
    refusal = check_graph_supported(cfg, device, distributed.world_size(), streamed)
    if refusal:
        raise ConfigError(refusal)


def describe_device(device: torch.device, requested: str) -> str:
    """`cuda:0 (NVIDIA H100 80GB HBM3)`, `cpu (device=auto: no CUDA device visible)`, `cpu`."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if requested == "auto":
        return f"{device} (device=auto: no CUDA device visible)"
    return str(device)


def start_block(cfg: DictConfig, run_dir: Path, device: torch.device, train_data, test_data) -> str:
    """What this job is about to do, in a few lines (logged once its data is loaded, before cache work)."""
    t, d, e = cfg.train, cfg.dataset, cfg.eval
    recipe = recipe_choice("train")
    return "\n".join([
        f"run directory: {run_dir}",
        f"  device: {describe_device(device, str(cfg.device))} | training precision: "
        f"{resolve_precision(t.precision, device)} (train.precision={t.precision})",
        f"  dataset: {d.name} {d.resolution}px, {len(train_data)} train / {len(test_data)} test images, "
        f"{train_data.n_classes} classes{storage_text(cfg, train_data)} | feature space: {e.feature_space}",
        f"  training: {t.iterations} iterations{f' (train={recipe})' if recipe else ''}, head {cfg.head.name}, "
        f"seed {cfg.seed}"])


def storage_text(cfg: DictConfig, data) -> str:
    """An image folder's storage as resolved (`auto` depends on the machine's free memory)."""
    if "storage" not in cfg.dataset:
        return ""
    resolved = "stream" if getattr(data, "store", None) is not None else "device"
    return f", storage {resolved} (dataset.storage={cfg.dataset.storage})"


def start_over(run: RunDir) -> None:
    """resume=false: forget everything this run directory holds from an earlier attempt."""
    for name in ("checkpoints", "samples"):
        shutil.rmtree(run.path / name, ignore_errors=True)
    for f in (run.metrics_file, run.per_class_file, run.per_class_best_file, run.status_file, run.accepted_file):
        f.unlink(missing_ok=True)


def run_job(cfg: DictConfig, run_dir: Path, group: str = "single", job_num: int = 0,
            hydra_files: dict[str, str] | None = None) -> dict | None:
    """Run (or resume, or skip if finished) one training job in `run_dir`; returns the final metrics.
    A diverged run is recorded in status.json, then Diverged is raised.
    `group` names the sweep for W&B. The job holds the run directory's lock (train/run_lock.py) from before it
    reads anything there until it ends; if another job holds it, RunDirBusy is raised and nothing is written.
    `hydra_files` (path relative to run_dir -> text) is what Hydra wrote there for this job. Once the job is
    accepted they are kept (RunDir.keep_accepted); when the lock is released, the directory's Hydra files are
    those of the job it last accepted: a refused job (a busy directory, another config, a bad value) leaves
    the settings its results were made with. A directory that never accepted a job keeps this job's.
    A multi-process run (train/distributed.py): rank 0 runs the job; the other ranks only train (_run_job_worker)."""
    if not distributed.is_main():
        return _run_job_worker(cfg, job_num)
    try:
        with RunDirLock(run_dir):
            run = RunDir(run_dir)
            try:
                return _run_job_locked(cfg, run, group, job_num, hydra_files or {})
            finally:
                restore_files(Path(run_dir), run.accepted() or hydra_files or {})
    except OSError as err:  # checkpoints are written atomically: the last complete one is still there
        refusal = cannot_write(err, Path(run_dir))
        if refusal is None:
            raise
        raise refusal from err


def final_evaluation(trainer: Trainer) -> dict:
    """The final evaluation, preemptible like training: SIGTERM/SIGUSR1/SIGUSR2 stop it between generation batches,
    the run is marked `preempted` (its last checkpoint is at the final iteration) and a rerun evaluates again."""
    from .metrics.evaluator import EvaluationStopped
    with PreemptionSignals() as preemption:
        try:
            return trainer.evaluator.evaluate(trainer.G, trainer.iteration, "final", stop=lambda: preemption.signal)
        except EvaluationStopped:
            trainer.status("preempted", reason=f"signal {preemption.signal.name} during the final evaluation")
            raise Preempted(preemption.signal, preemption.previous_handler) from None


def best_evaluation(trainer: Trainer, final: dict) -> dict | None:
    """The best curve checkpoint (checkpoints/best.pt, chosen by eval.best_metric) evaluated with the final
    protocol: a metrics line with phase "best" (its `iteration` is the run's last, `best_iteration` the
    generator's) and per_class_best.csv; preemptible like the final evaluation. Where the best is the final
    generator, the final line is written again as the best one (same weights, same noise: the same numbers).
    None where no best is kept (eval.best_metric null, or no curve evaluation).
    A multi-process run: rank 0 decides (it alone reads the run directory) and every rank takes part in the
    evaluation (sharded, metrics/evaluator.py)."""
    from .metrics.evaluator import EvaluationStopped
    plan = _best_plan(trainer, final) if trainer.main else None
    if distributed.world_size() > 1:
        plan = distributed.broadcast_state(plan)
    if plan is None:
        return None
    extra, run = plan["extra"], trainer.run
    if extra["best_is_final"]:
        record = {**final, "phase": "best", **extra}
        if trainer.main:
            run.log(record)
            atomic_write_text(run.per_class_best_file, run.per_class_file.read_text())
            if trainer.tracker is not None:
                trainer.tracker.log(record)
    else:
        G = copy.deepcopy(trainer.G)
        G.load_state_dict(plan["G"])
        with PreemptionSignals() as preemption:
            try:
                record = trainer.evaluator.evaluate(G, trainer.iteration, "best", stop=lambda: preemption.signal,
                                                    extra=extra)
            except EvaluationStopped:
                trainer.status("preempted", reason=f"signal {preemption.signal.name} during the evaluation of "
                                                   f"the best checkpoint")
                raise Preempted(preemption.signal, preemption.previous_handler) from None
    log.info("best checkpoint by curve %s: iteration %d%s; final protocol: FID %.2f, IS %.3f (final model: FID "
             "%.2f, IS %.3f)", extra["best_metric"], extra["best_iteration"], " (the final generator)"
             if extra["best_is_final"] else "", record["fid"], record["is_mean"], final["fid"], final["is_mean"])
    return record


def _best_plan(trainer: Trainer, final: dict) -> dict | None:
    """Rank 0: {'extra': the best line's fields, 'G': the best generator's weights (None where it is the final
    generator)}, or None where there is no best to evaluate."""
    best, run = trainer.best, trainer.run
    if best is None or best["iteration"] is None:
        return None
    saved = load_best(run.checkpoints, map_location=trainer.device)
    if saved is None or saved.get("iteration") != best["iteration"]:
        log.warning("%s does not hold the best generator the run recorded (iteration %s): no best evaluation",
                    run.checkpoints / "best.pt", best["iteration"])
        return None
    extra = {"best_iteration": best["iteration"], "best_metric": best["metric"], "best_curve_score": best["score"],
             "best_since": best["since"], "best_is_final": best["iteration"] == final["iteration"]}
    return {"extra": extra, "G": None if extra["best_is_final"] else saved["G"]}


def restore_files(run_dir: Path, files_: dict[str, str]) -> None:
    """Rewrite each file under run_dir whose text differs (best effort: never masks the job's own outcome)."""
    restored = []
    for name, text in files_.items():
        path = run_dir / name
        try:
            if not path.exists() or path.read_text() != text:
                atomic_write_text(path, text)
                restored.append(name)
        except OSError as err:
            log.warning("could not restore %s: %s", path, err)
    if restored:
        log.info("restored %s in %s as the job that made its results wrote them (Hydra rewrote them for this job, "
                 "which was refused or skipped)", ", ".join(restored), run_dir)


def _run_job_worker(cfg: DictConfig, job_num: int) -> None:
    """A rank other than 0 of a multi-process run: the same training steps and evaluations as rank 0
    (_run_job_locked), in the same order of collectives. Rank 0 alone reads and writes the run directory and logs;
    this rank writes nothing there (caches: only what rank 0 has not built, e.g. its own classes' statistics)."""
    from .metrics.evaluator import Evaluator
    validate(cfg)
    distributed.check_config(cfg)
    device = distributed.rank_device(resolve_device(str(cfg.device), job_num))
    distributed.barrier()  # rank 0 has loaded the data (and downloaded it where needed)
    d, e = cfg.dataset, cfg.eval
    options = {k: v for k, v in d.items() if k not in ("name", "resolution", "feature_space")}
    train_data = load_dataset(d.name, "train", d.resolution, **options)
    test_data = load_dataset(d.name, "test", d.resolution, **options)
    distributed.barrier()  # rank 0 has built the feature space (weights, domain classifier): read from the cache
    space = make_feature_space(e.feature_space, train_data.to(device), test_data.to(device), device,
                               inception_weights=e.inception_weights, classifier_epochs=e.classifier_epochs,
                               cache_dir=e.cache_dir)
    real = train_data if e.real_split == "train" else test_data
    trainer = Trainer(cfg, train_data.to(device), None, device)
    trainer.share_state()
    trainer.evaluator = Evaluator(e, space, real.to(device), None, device, cfg.model.z_dim, cfg.seed,
                                  held_out=test_data.to(device))
    trainer.fit()
    final = final_evaluation(trainer)
    best_evaluation(trainer, final)


def completed_run(cfg: DictConfig, run: RunDir, previous: dict | None) -> dict | None:
    """The final metrics of the completed run this job would only repeat (resume=true, the same budget and the
    same settings: it is skipped), else None. The same budget with other settings is refused: skipping would
    label the old results with the new settings."""
    if not (cfg.resume and previous and previous["state"] == "completed"
            and previous.get("total_iterations") == cfg.train.iterations):
        return None
    finals = [r for r in run.metrics() if r.get("phase") == "final"]
    if not finals:
        return None
    try:  # its config only; None where the checkpoints were deleted
        state = load_checkpoint(run.checkpoints, mmap=True)
    except CheckpointUnreadable:  # a finished run needs none to be skipped; its settings cannot be checked then
        state = None
    if state is not None:
        refuse_other_config(state, cfg, f"{run.path} holds a completed run", "choose another hydra.run.dir (or "
                            "hydra.sweep.dir), or rerun with resume=false to train this directory again")
    return finals[-1]


def record_refusal(run: RunDir, cfg: DictConfig, err: Exception) -> None:
    """status.json says why a job was refused, where the directory holds no earlier attempt's work (a new run
    directory: the sweep's report lists the job and the reason). A refusal never rewrites an earlier attempt's
    status (its iteration, its checkpoint are what a corrected rerun continues) nor a past-budget resume's."""
    previous = run.read_status() or {}
    if isinstance(err, ResumePastBudget) or previous.get("state") == "completed" or previous.get("iteration"):
        return
    total = OmegaConf.select(cfg, "train.iterations", default=0)
    run.write_status("failed", 0, total if isinstance(total, int) else 0, 0.0, None, str(err))


def refuse_before_the_data(cfg: DictConfig, run: RunDir) -> None:
    """What the job would refuse after loading the data, refused first: loading can be hours (an ImageNet store's
    first build, a domain classifier). A checkpoint trained with other settings or past the budget, and missing
    Inception weights (one line each, exit code 2); an image folder checks the weights itself, once its folder
    checks (cheap, and what a new user gets wrong first) have passed and before decoding (check_weights)."""
    if cfg.resume:
        state = load_checkpoint(run.checkpoints, mmap=True)  # the config only: tensors stay on disk
        if state is not None:
            check_resumable(state, cfg, run.path)
    if cfg.dataset.name != "imagefolder":
        check_weights(cfg)


def check_weights(cfg: DictConfig) -> None:
    """Missing Inception weights: one line (WeightsMissingError), where the job would evaluate with them."""
    if cfg.eval.feature_space == "inception":
        inception_weights_path(cfg.eval.inception_weights)


def _run_job_locked(cfg: DictConfig, run: RunDir, group: str, job_num: int, hydra_files: dict[str, str]
                    ) -> dict | None:
    run_dir = run.path
    from .metrics.evaluator import Evaluator  # torch-fidelity, pandas: only once a job really runs
    t_start = time.perf_counter()
    trainer, tracker, previous = None, None, run.read_status()
    preparing = PreemptionSignals(stop_at_once=True)
    try:
        validate(cfg)  # before anything reads the directory: `resume=no` must not skip or resume
        parent = finetune.begin(cfg, run)  # a fine-tune: its parent checked, train.iterations set
        done = completed_run(cfg, run, previous)
        if done is not None:  # skipped: the directory keeps the Hydra files of the job that made its results
            if not run.accepted():  # (a directory from before the copies: the rerun's are the closest there are)
                run.keep_accepted(hydra_files)
            log.info("%s is already completed; skipping (delete it or set resume=false to train again)", run_dir)
            return {**done, "stored": True}  # the summary says these numbers were read, not computed now
        run.start_clock(earlier_wall_s(previous) if cfg.resume else 0.0)  # status.json's total_wall_s from here
        distributed.check_config(cfg)
        device = distributed.rank_device(resolve_device(str(cfg.device), job_num))
        refuse_cpu_fallback(cfg, device)  # before start_over: a refused resume=false run deletes nothing
        refuse_unsupported_graph(cfg, device)
        if not cfg.resume:
            start_over(run)
        # Slurm's SIGTERM/SIGUSR2 or Ctrl-C while the data and the evaluation are prepared (an ImageNet store's
        # first build: hours) stop the job cleanly there: every step is cached or resumable. fit() takes over.
        preparing.__enter__()
        refuse_before_the_data(cfg, run)
        d = cfg.dataset
        options = {k: v for k, v in d.items() if k not in ("name", "resolution", "feature_space")}
        options["before_decoding"] = lambda: check_weights(cfg)
        train_data = load_dataset(d.name, "train", d.resolution, **options)
        test_data = load_dataset(d.name, "test", d.resolution, **options)
        distributed.barrier()  # the other ranks load the data once rank 0 has (downloads, stores)
        check_against_data(cfg, len(train_data), train_data.n_classes)
        log.info("%s", start_block(cfg, run.path, device, train_data, test_data))
        e = cfg.eval
        space = make_feature_space(e.feature_space, train_data.to(device), test_data.to(device), device,
                                   inception_weights=e.inception_weights, classifier_epochs=e.classifier_epochs,
                                   cache_dir=e.cache_dir)
        distributed.barrier()  # the other ranks now read the feature space from the cache (_run_job_worker)
        real = train_data if e.real_split == "train" else test_data
        trainer = Trainer(cfg, train_data.to(device), run, device)
        if parent is not None:  # its schedule and classifier loss first: a resumed fine-tune continues them
            finetune.attach(trainer, parent, space, train_data.to(device), test_data.to(device))
        if cfg.resume and trainer.resume():
            log.info("resuming %s at iteration %d", run_dir, trainer.iteration)
            if (previous or {}).get("state") == "completed":  # a larger train.iterations: the run goes on
                log.info("extending the completed run from %d to %d iterations: its final evaluation at %d will be "
                         "replaced by one at %d", trainer.iteration, cfg.train.iterations, trainer.iteration,
                         cfg.train.iterations)
        elif parent is not None:
            finetune.start_from_parent(trainer, parent)
            log.info("fine-tuning %s from %s at iteration %d", run_dir, parent.path, trainer.iteration)
        run.keep_accepted(hydra_files)  # every refusal is behind us: this job's settings are the directory's
        trainer.share_state()  # a multi-process run: every rank continues from rank 0's state
        if resolve_mode(cfg.wandb.mode) != "disabled":
            tracker = trainer.tracker = WandbTracker(cfg, run.path, group=group, job_type=cfg.head.name)
        trainer.evaluator = Evaluator(e, space, real.to(device), run, device, cfg.model.z_dim, cfg.seed, tracker,
                                      held_out=test_data.to(device))
        preparing.restore()
        trainer.fit()
        final = final_evaluation(trainer)
        best_evaluation(trainer, final)
        trainer.save_samples("final_raw")  # the pixel grid; then the labelled final.png/.pdf and morph.png/.pdf
        save_final_figures(trainer.G, run.samples, train_data.class_names, cfg, trainer.iteration, device)
        trainer.status("completed")
        if tracker is not None:
            tracker.image_file("morph", run.samples / "morph.png", trainer.iteration,
                               caption="category morphing: fixed z per row, class a -> class b")
            tracker.finish(0)
        return final
    except Preempted as p:
        if preparing.signal is not None:  # stopped before training, where fit() writes no status
            it = trainer.iteration if trainer else int((previous or {}).get("iteration") or 0)
            run.write_status("preempted", it, int(cfg.train.iterations), time.perf_counter() - t_start, None,
                             f"signal {p.signal.name} while preparing the data and evaluation (rerun to go on: "
                             "finished steps are cached)")
        if tracker is not None:
            tracker.finish(0)
        raise
    except USER_ERRORS as err:
        record_refusal(run, cfg, err)
        raise
    except Diverged as err:
        trainer.status("diverged", reason=str(err))
        log.error("run diverged: %s (the last good checkpoint is kept)", err)
        if tracker is not None:
            tracker.finish(1)
        raise
    except BaseException as err:
        # before a Trainer resumed, the directory's progress is the earlier attempt's: keep its iteration
        it = trainer.iteration if trainer else int((previous or {}).get("iteration") or 0)
        reason = f"{type(err).__name__}: {err}"
        run.write_status("failed", it, int(cfg.train.iterations), time.perf_counter() - t_start, None, reason)
        if tracker is not None:
            tracker.finish(1)
        raise
    finally:
        preparing.restore()  # the next job of an in-process sweep finds the handlers this one found


register_resolver()  # hydra.sweep.subdir names job folders with it (here and in every worker that imports main)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    # the W&B group: a sweep's sweep_name (else its folder's name); a single run: its run directory's name
    group = (cfg.get("sweep_name") or Path(hc.sweep.dir).name) if multirun else Path(hc.runtime.output_dir).name
    job_num = hc.job.num if multirun else 0
    if multirun and distributed.refuses_multirun():  # a submitit job's tasks may: they are one run's ranks
        print("error: a multirun sweep cannot run as several processes (torchrun/srun); launch each run of the "
              "sweep with torchrun, or the sweep with hydra/launcher=slurm_gpus (one multi-GPU Slurm job per run)",
              file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if distributed.setup(str(cfg.device)):  # several processes (torchrun/srun/submitit): join the process group
        atexit.register(distributed.teardown)
    hydra_files = {}
    if hc.output_subdir is not None:  # what Hydra just wrote to the run directory (hydra.core.utils.run_job)
        sub = Path(hc.output_subdir)
        hydra_files = {str(sub / "config.yaml"): OmegaConf.to_yaml(cfg),
                       str(sub / "hydra.yaml"): OmegaConf.to_yaml(HydraConfig.instance().cfg),
                       str(sub / "overrides.yaml"): OmegaConf.to_yaml(hc.overrides.task)}
    try:
        final = run_job(cfg, Path(hc.runtime.output_dir), group, job_num, hydra_files)
    except USER_ERRORS as err:
        if distributed.env_world()[0] == 0:  # every rank refuses alike: rank 0 says it, once
            print(f"error: {err}", file=sys.stderr)
        if multirun:
            from .report.callback import note_refusal  # pandas: imported only where a sweep needs it
            note_refusal(Path(hc.sweep.dir), Path(hc.runtime.output_dir), str(err))  # the sweep's exit code: 2
            return None  # recorded as failed in the run directory (busy: left to its holder); the sweep goes on
        sys.exit(EXIT_USER_ERROR)
    except Diverged as err:
        if multirun:
            return None  # recorded as diverged in status.json; the sweep goes on and its report lists it
        print(f"error: run diverged: {err}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except Preempted as p:
        print(f"{p}: its progress is saved (status 'preempted'); rerun the same command to resume", file=sys.stderr)
        if callable(p.previous_handler):  # e.g. submitit's handler: requeue the job, which then resumes
            p.previous_handler(p.signal, None)
        if multirun and not runs_jobs_in_this_process(hc):
            return None  # this job's process was signalled (a joblib worker, a Slurm job): the others go on
        if multirun:  # the basic launcher: the signal was for the whole sweep, whose next job would start now
            print("the sweep stops here; rerun the same command to resume it (completed jobs are skipped)",
                  file=sys.stderr)
        sys.exit(0)
    except Exception:
        if not multirun:
            raise
        # recorded as failed in status.json; keep the sweep (and its final report) going
        log.exception("job failed; the sweep continues")
        return None
    if final is not None:
        summary = final_summary(final, Path(hc.runtime.output_dir))
        print(summary, file=sys.stderr)
        to_log_files_only(summary)
        sync = wandb_sync_command(Path(hc.runtime.output_dir), resolve_mode(cfg.wandb.mode))
        if sync:
            print(f"  W&B ran offline; upload it with: {sync}", file=sys.stderr)
    return None if final is None else final.get("fid")


def to_log_files_only(text: str) -> None:
    """`text` into the run's app.log (the root logger's file handlers), not again onto the console, where it was
    just printed without a log prefix."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def runs_jobs_in_this_process(hc) -> bool:
    """Whether the sweep's launcher runs its jobs one after another in this process (Hydra's basic launcher),
    so a signal to this process is a signal to the whole sweep."""
    return str(OmegaConf.select(hc, "launcher._target_", default="")).endswith("BasicLauncher")


def wandb_sync_command(run_dir: Path, mode: str) -> str | None:
    """`wandb sync <run_dir>/wandb/offline-run-*` (every offline attempt of this run, oldest first) when W&B ran
    offline; None otherwise or when wandb wrote no offline run there."""
    runs = sorted((Path(run_dir) / "wandb").glob("offline-run-*")) if mode == "offline" else []
    return shlex.join(["wandb", "sync", *map(str, runs)]) if runs else None


def final_summary(r: dict, run_dir: Path) -> str:
    """The final evaluation in a few lines (stderr, beside the progress bar), each number with its yardstick."""
    kid_scale, kid_label = kid_unit(r["feature_space"])
    # a number the protocol could not give is None (e.g. no real-vs-real floor: too few images to split): nan
    r = {k: float("nan") if v is None else v for k, v in r.items()}
    lines = [f"{'stored (completed earlier) ' if r.get('stored') else ''}final evaluation at iteration "
             f"{r['iteration']} ({r['feature_space']} space, {r['n_generated']} "
             f"generated, FID on {r['n_real']} real vs {r['n_fake']} generated):",
             f"  FID {r['fid']:.2f} (real vs real {r.get('floor_fid', float('nan')):.2f}) | intra-FID "
             f"{r['intra_fid_mean']:.2f} (real vs real {r.get('floor_intra_fid_mean', float('nan')):.2f}) | "
             f"{kid_label} {kid_scale * r['kid_mean']:.2f} ± {kid_scale * r.get('kid_se', float('nan')):.2f} (s.e.; "
             f"real vs real {kid_scale * r.get('floor_kid_mean', float('nan')):.2f}) | IS {r['is_mean']:.3f}",
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
        if distributed.env_world()[0] != 0:  # a multi-process run: only rank 0 writes the run directory
            return
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


def configs_of_another_checkout(conf_dir: str = CONF_DIR) -> str | None:
    """A warning where this code runs with another checkout's configs: `python -m cgan_bench` in a second clone
    imports the clone's code, but `cgan_bench.conf` still resolves through pip's editable install of the first
    (edits to the clone's conf/ would be ignored silently). None where they belong together."""
    code_root = Path(__file__).resolve().parent.parent
    own = code_root / "conf"
    if not (own / "config.yaml").is_file() or not (code_root / "pyproject.toml").is_file():
        return None  # an installed package (its configs are packaged with it), not a source checkout
    if Path(conf_dir).resolve() == own.resolve():
        return None
    return (f"warning: this checkout's code ({code_root}) is running with the configs of {conf_dir}, where pip's "
            f"editable install points; run `pip install -e .` in {code_root} to use its own conf/")


def cli() -> None:
    """`--help` (ours) and `--version` answer here. Unknown config-group options (head=nope) and keys no config
    defines (+train.iteration=5) get one line and exit code 2 before Hydra starts."""
    argv = sys.argv[1:]
    elsewhere = configs_of_another_checkout()
    if elsewhere:
        print(elsewhere, file=sys.stderr)
    if "--help" in argv or "-h" in argv:
        print(usage(argv), end="")
        sys.exit(0)
    if "--version" in argv:
        print(version_line())
        sys.exit(0)
    try:
        check_group_overrides(sys.argv[1:], Path(CONF_DIR))
        check_key_overrides(sys.argv[1:], Path(CONF_DIR))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv += distributed.hydra_rank_overrides()  # ranks > 0 of a multi-process run: Hydra writes no files
    warning = sweep_without_multirun(argv)
    if warning:
        print(warning, file=sys.stderr)
    from .launch import register_launchers  # hydra/launcher=joblib: a sweep that survives a dead worker
    register_launchers()
    main()
