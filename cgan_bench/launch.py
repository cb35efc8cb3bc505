"""Parallel sweeps that survive a dead worker: Hydra's joblib launcher, wrapped (used by `hydra/launcher=joblib`).

Why: under Hydra's joblib launcher (loky processes), one worker killed from outside (the OOM killer, a
SIGKILL) breaks the whole pool: loky SIGKILLs the other workers, joblib raises TerminatedWorkerError, Hydra
skips `on_multirun_end` (no report, exit code 1 with a traceback) and every job that was running keeps
status `running`.

What this launcher does instead, for each batch of jobs Hydra hands it:
1. It runs the jobs as Hydra's launcher does (same `execute_job`, same joblib settings), taking each result
   as it arrives. While a job runs, its worker's pid is in a marker file (one per job, in a temp folder).
2. When the pool breaks, the jobs that were running are split by what loky saw when it stopped the pool:
   a worker that was already dead died on its own (the OOM killer, a segfault): its job is marked `failed` in
   its run directory with the reason, e.g. "worker process died (SIGKILL, e.g. the OOM killer)", and is not
   launched again. The workers loky killed were healthy: their jobs, and the jobs not started yet, are
   launched again; they resume from their last checkpoint (finished jobs are skipped), like a rerun.
3. Every job ends with a JobReturn (a failed one returns None, as app.main does for a failed run), so Hydra
   goes on to `on_multirun_end`: the report is written, lists the failed run with its reason, and the
   multirun exits non-zero (cgan_bench/report/callback.py).

Which worker died first is read from loky's own kill step (`kill_process_tree`, watched only while a batch
runs). Where that is not possible (another joblib, or a pool broken for another reason), the jobs that were
running are launched again and a job whose worker dies twice while it runs is marked failed; every break
fails or counts against at least one job, and at most 2 x jobs + 1 rounds run, so a job that kills its
worker every time is never retried forever.

The launcher class Hydra instantiates is in hydra_plugins/cgan_bench_launcher (Hydra only accepts launchers
from the `hydra_plugins` namespace); register_launchers (called by app.cli) replaces the plugin's `joblib`
entry in Hydra's config store, so `hydra/launcher=joblib` (same keys as the plugin's) runs it.
"""
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher import _core as joblib_core
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from omegaconf import DictConfig, OmegaConf

from .overrides import compose_job, job_run_dir

log = logging.getLogger("cgan_bench")
FINAL_STATES = ("completed", "failed", "diverged")  # a job in one of these has ended: nothing to mark
MAX_DEATHS = 2  # a job whose worker dies this often while it runs (cause unknown) is marked failed
WAIT_S = 60.0  # how long to wait for loky to stop the pool and for the dead holders' locks to go


def death_reason(exitcode: int) -> str:
    """The status.json reason for a job whose worker process ended with `exitcode` (negative: a signal)."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = ", e.g. the OOM killer" if -exitcode == signal.SIGKILL else ""
        return f"worker process died ({name}{hint})"
    return f"worker process exited with code {exitcode}"


@dataclass
class BrokenPool:
    """What the launcher saw when the pool broke. `running`: job number -> worker pid (None: unreadable);
    `died_first`: worker pid -> exit code of each worker already dead when loky stopped the pool, or None
    when loky could not be watched."""
    running: dict[int, int | None]
    died_first: dict[int, int] | None
    error: str = ""


@dataclass
class Verdict:
    failed: dict[int, str] = field(default_factory=dict)  # job number -> reason
    relaunch: list[int] = field(default_factory=list)


def judge(broken: BrokenPool, deaths: Counter) -> Verdict:
    """Which running jobs caused the break (failed now) and which go again. `deaths` counts, per job, breaks
    whose cause could not be told (updated here)."""
    verdict = Verdict()
    known = broken.died_first or {}
    for job, pid in broken.running.items():
        if pid in known:
            verdict.failed[job] = death_reason(known[pid])
    if verdict.failed:  # the others were stopped by loky: healthy, they go again
        verdict.relaunch = [j for j in broken.running if j not in verdict.failed]
        return verdict
    for job in broken.running:  # cause unknown: each running job is a suspect
        deaths[job] += 1
        if deaths[job] >= MAX_DEATHS:
            verdict.failed[job] = (f"worker process died {deaths[job]} times while this job ran "
                                   f"({broken.error.splitlines()[0] if broken.error else 'cause unknown'})")
        else:
            verdict.relaunch.append(job)
    return verdict


@contextmanager
def watch_pool_kills(seen: dict):
    """While active, records each worker loky kills (pid -> exit code, None while alive) as it stops a broken
    pool: a worker with an exit code had died before. Yields False where loky cannot be watched."""
    try:
        from joblib.externals.loky import process_executor as loky
        real_kill = loky.kill_process_tree
    except (ImportError, AttributeError):
        yield False
        return

    def record_then_kill(process, *args, **kwargs):
        try:
            seen.setdefault(process.pid, process.exitcode)
        except Exception:  # never get in loky's way
            pass
        return real_kill(process, *args, **kwargs)

    loky.kill_process_tree = record_then_kill
    try:
        yield True
    finally:
        loky.kill_process_tree = real_kill


STOP = "stop"  # in the marker folder: the sweep was signalled; a job not started yet stays so


def job_in_worker(job: int, marker_dir: str, *args):
    """Runs in a joblib worker: Hydra's execute_job, with the worker's pid in `marker_dir/<job>` meanwhile;
    (job, None) without running it where the sweep was signalled (forward_signals)."""
    marker = Path(marker_dir) / str(job)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, marker)
    try:
        if (Path(marker_dir) / STOP).exists():  # checked after the marker: a signal now reaches this pid
            return job, None
        return job, joblib_core.execute_job(job, *args)
    finally:
        marker.unlink(missing_ok=True)


@contextmanager
def forward_signals(marker_dir: Path, received: list):
    """SIGTERM or Ctrl-C to the sweep's process while a round runs: the running jobs' workers get SIGTERM (they
    checkpoint and stop as `preempted`, train/loop.py), jobs not started yet are not started, and the signal is
    appended to `received`. Without it the workers, loky processes of their own, ran on as orphans after the
    launcher died. A second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in received:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum))
        (marker_dir / STOP).touch()
        for pid in read_markers(marker_dir).values():
            if pid:  # SIGTERM, not the signal itself: Ctrl-C reached the workers already, and twice interrupts
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    saved = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def read_markers(marker_dir: Path) -> dict[int, int | None]:
    running = {}
    for marker in marker_dir.iterdir():
        if marker.suffix == ".tmp" or marker.name == STOP:
            continue
        try:
            running[int(marker.name)] = int(marker.read_text())
        except (OSError, ValueError):
            running[int(marker.name)] = None
    return running


def mark_failed(run_dir: Path, reason: str, iterations: int) -> bool:
    """Record a dead job's failure in its run directory (under its lock, once the dead holder's is gone).
    False where the run had completed (it died after finishing) or the lock stayed taken."""
    from .train.run_dir import RunDir  # torch: only once a pool broke
    from .train.run_lock import RunDirBusy, RunDirLock
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with RunDirLock(run_dir):
                run = RunDir(run_dir)
                previous = run.read_status() or {}
                if previous.get("state") == "completed":
                    return False
                extra = {k: v for k, v in previous.items() if k not in (
                    "state", "iteration", "total_iterations", "reason", "wall_s", "it_per_s", "updated")}
                run.write_status("failed", int(previous.get("iteration", 0)),
                                 int(previous.get("total_iterations", iterations)), float(previous.get("wall_s", 0.0)),
                                 previous.get("it_per_s"), reason, **extra)
                return True
        except RunDirBusy:
            if time.monotonic() > deadline:
                log.error("%s: cannot mark it failed (%s): its lock is still held", run_dir, reason)
                return False
            time.sleep(0.1)


class SurvivingJoblibLauncher(JoblibLauncher):
    """Hydra's JoblibLauncher whose sweep goes on when a worker dies (see the module docstring)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = {initial_job_idx + i: list(o) for i, o in enumerate(job_overrides)}
        log.info("joblib (loky, %s) is launching %d jobs in %s; a job whose worker dies is marked failed and the "
                 "others go on", ", ".join(f"{k}={v}" for k, v in self.joblib.items()), len(jobs),
                 self.config.hydra.sweep.dir)
        for job, overrides in jobs.items():
            log.info("\t#%d : %s", job, " ".join(filter_overrides(overrides)))
        returns: dict[int, JobReturn] = {}
        deaths: Counter = Counter()
        for _ in range(2 * len(jobs) + 1):
            todo = {j: o for j, o in jobs.items() if j not in returns}
            if not todo:
                break
            received: list = []
            broken = self.run_round(todo, returns, received)
            if received:  # the sweep was signalled: its running jobs were preempted, the others not started
                print(f"preempted by {received[0].name}: the sweep stops here; rerun the same command to resume it "
                      f"(completed jobs are skipped)", file=sys.stderr)
                sys.exit(0)
            if broken is None:
                continue
            verdict = judge(broken, deaths)
            self.wait_for_locks({j: jobs[j] for j in broken.running if j in jobs})
            for job, reason in verdict.failed.items():
                if self.mark_failed(job, jobs[job], reason):
                    returns[job] = self.failed_return(job, jobs[job])
            again = sorted(set(todo) - set(returns))
            log.error("the worker pool broke (%s); %s; launching again: %s", broken.error.splitlines()[0] if
                      broken.error else "no error text", "; ".join(f"job #{j} failed: {r}" for j, r in
                                                                   verdict.failed.items()) or "cause unknown",
                      ", ".join(f"#{j}" for j in again) or "none")
        for job in sorted(set(jobs) - set(returns)):  # the pool kept breaking: give up on what is left
            self.mark_failed(job, jobs[job], "not run: the worker pool kept breaking")
            returns[job] = self.failed_return(job, jobs[job])
        return [returns[j] for j in sorted(jobs)]

    def run_round(self, todo: dict[int, list[str]], returns: dict[int, JobReturn], received: list
                  ) -> BrokenPool | None:
        """Run `todo` with joblib, filling `returns`; a BrokenPool if a worker died, else None. A signal to this
        process stops the round (forward_signals) and is appended to `received`."""
        joblib_cfg = dict(self.joblib)
        joblib_cfg["backend"] = "loky"  # as Hydra's launcher: the threading backend is incompatible with Hydra
        joblib_core.process_joblib_cfg(joblib_cfg)
        from joblib import Parallel, delayed
        marker_dir = Path(tempfile.mkdtemp(prefix="cgan_bench_jobs."))
        seen: dict[int, int | None] = {}
        singleton_state = Singleton.get_state()
        try:
            with watch_pool_kills(seen) as watching, forward_signals(marker_dir, received):
                try:
                    results = Parallel(**joblib_cfg, return_as="generator_unordered")(
                        delayed(job_in_worker)(job, str(marker_dir), overrides, self.hydra_context, self.config,
                                               self.task_function, singleton_state)
                        for job, overrides in todo.items())
                    for job, ret in results:
                        if ret is not None:  # None: not started, the sweep was signalled
                            returns[job] = ret
                    return None
                except BrokenProcessPool as err:
                    running = read_markers(marker_dir)
                    deadline = time.monotonic() + WAIT_S  # loky may still be stopping the other workers
                    while watching and time.monotonic() < deadline and \
                            any(pid is not None and pid not in seen for pid in running.values()):
                        time.sleep(0.05)
                    died_first = {pid: code for pid, code in seen.items() if code is not None}
                    return BrokenPool(running, died_first if watching else None, str(err))
        finally:
            shutil.rmtree(marker_dir, ignore_errors=True)

    # ---- a job's run directory, composed as Hydra's execute_job does --------------------------------------
    def job_config(self, job: int, overrides: list[str]) -> DictConfig:
        return compose_job(self.hydra_context.config_loader, self.config, overrides, job)

    def wait_for_locks(self, jobs: dict[int, list[str]]) -> None:
        """Wait (at most WAIT_S) until no killed process holds these jobs' run directories any more, so their
        relaunch is not refused as busy."""
        from .train.run_lock import is_held
        deadline = time.monotonic() + WAIT_S
        for job, overrides in jobs.items():
            path = job_run_dir(self.job_config(job, overrides))
            while is_held(path) and time.monotonic() < deadline:
                time.sleep(0.1)

    def mark_failed(self, job: int, overrides: list[str], reason: str) -> bool:
        cfg = self.job_config(job, overrides)
        path = job_run_dir(cfg)
        log.error("job #%d (%s) failed: %s", job, " ".join(filter_overrides(overrides)), reason)
        return mark_failed(path, reason, int(OmegaConf.select(cfg, "train.iterations", default=0) or 0))

    def failed_return(self, job: int, overrides: list[str]) -> JobReturn:
        """A failed job's return: completed with None, as app.main returns for a failed run, so that Hydra's
        sweeper goes on and on_multirun_end writes the report (a FAILED JobReturn would make Hydra raise)."""
        ret = JobReturn(overrides=list(overrides), working_dir=str(job_run_dir(self.job_config(job, overrides))),
                        task_name=str(self.config.hydra.job.name), status=JobStatus.COMPLETED)
        ret.return_value = None
        return ret


@dataclass
class SurvivingJoblibConf(JobLibLauncherConf):
    """`hydra/launcher=joblib`: the plugin's own settings (n_jobs, ...), our launcher class."""
    _target_: str = "hydra_plugins.cgan_bench_launcher.JoblibLauncher"


@dataclass
class RankAwareSlurmConf(SlurmQueueConf):
    """`hydra/launcher=submitit_slurm`: the plugin's settings, our subclass, so that with tasks_per_node > 1 (one
    data-parallel run per job) the tasks of rank > 0 write no Hydra files, as under hydra/launcher=slurm_gpus."""
    _target_: str = "hydra_plugins.cgan_bench_launcher.SlurmLauncher"


def register_launchers() -> None:
    """Make `hydra/launcher=joblib` mean SurvivingJoblibLauncher. Called by app.cli before Hydra starts: after
    Hydra's plugin scan (Plugins.instance()), which stores the plugin's own `joblib` config, so ours replaces
    it (joblib workers get Hydra's config store from the launcher process). Registering the class is needed
    because Hydra finds plugins by walking the hydra_plugins folders, which misses an editable install
    (setuptools maps the package by import name only); it is harmless where the walk found it."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    try:
        from hydra_plugins.cgan_bench_launcher import JoblibLauncher as Joblib, SlurmLauncher as Slurm
    except ImportError as err:  # only `hydra/launcher=joblib` needs it: Hydra's own launcher is left in place
        log.debug("cgan-bench's joblib launcher is not importable (%s): hydra/launcher=joblib is Hydra's own "
                  "(an editable install older than hydra_plugins/cgan_bench_launcher: pip install -e .)", err)
        return
    Plugins.instance().register(Joblib)
    Plugins.instance().register(Slurm)  # hydra/launcher=slurm_gpus (conf/hydra/launcher/slurm_gpus.yaml)
    ConfigStore.instance().store(group="hydra/launcher", name="joblib", node=SurvivingJoblibConf,
                                 provider="cgan_bench")
    ConfigStore.instance().store(group="hydra/launcher", name="submitit_slurm", node=RankAwareSlurmConf,
                                 provider="cgan_bench")
