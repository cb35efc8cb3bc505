"""Build the report when a multirun ends, and make the multirun exit non-zero if any job failed.

Hydra skips on_multirun_end when a job or the launcher raises, so jobs record failures in their run directory
and return instead of raising (see app.main), and `hydra/launcher=joblib` marks a job whose worker died failed
and returns (cgan_bench/launch.py); this callback then runs, lists every run that did not complete (state and
reason) and exits 1. A report that cannot be built is one error line (with the command that rebuilds it from
the runs) and exit 1 too, not Hydra's warning and exit 0.

The report lives with its sweep: `<sweep dir>/report/` (report.md, CSVs, PNGs; `<sweep dir>/report.md` links
to it), so two sweeps never share one. `report.publish=PATH` also copies the finished folder to PATH; where
PATH holds another sweep's report and `report.overwrite` is false, that copy is refused with one warning line
(at the start and at the end of the sweep) and the sweep's exit code is unchanged: it says whether the jobs
completed, and the report is in the sweep directory either way.
"""
import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .build import OWN_FOLDER, ReportExists, publish_report, refusal, write_report
from .collect import load_sweep

log = logging.getLogger("cgan_bench")


def publish_target(config: DictConfig, name: str) -> Path | None:
    """report.publish, or the deprecated `report_dir=DIR` (= report.publish=DIR/<sweep name>)."""
    report = config.get("report") or {}
    if report.get("publish"):
        return Path(str(report.get("publish"))).expanduser()
    if config.get("report_dir"):
        return Path(str(config.get("report_dir"))).expanduser() / name
    return None


OVERWRITE = "report.overwrite=true"


REFUSED = ".refused_jobs.jsonl"  # in the sweep folder: one line per job refused in this sweep (app.main)


def note_refusal(sweep_dir: Path, job_dir: Path, error: str) -> None:
    """A refused job of a sweep (one line appended, from whichever process ran it): the sweep then ends with exit
    code 2, even where the job's folder still reads `completed` from before (a rerun with changed settings)."""
    import json
    with open(Path(sweep_dir) / REFUSED, "a") as f:
        f.write(json.dumps({"job": str(job_dir), "error": error}) + "\n")


def refused_jobs(sweep_dir: Path) -> list[dict]:
    import json
    try:
        return [json.loads(line) for line in (Path(sweep_dir) / REFUSED).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


class ReportOnMultirunEnd(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        (sweep_dir / REFUSED).unlink(missing_ok=True)  # an earlier run of this sweep's refusals are not this one's
        if config.get("report_dir"):
            log.warning("report_dir is deprecated: use report.publish=PATH (the report always lands in %s)",
                        sweep_dir / OWN_FOLDER)
        target = publish_target(config, config.get("sweep_name") or sweep_dir.name)
        reason = target and refusal(target, sweep_dir, bool((config.get("report") or {}).get("overwrite")), OVERWRITE)
        if reason:
            log.warning("report.publish: %s; this sweep's report will only be in %s", reason, sweep_dir / OWN_FOLDER)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        name = config.get("sweep_name") or sweep_dir.name
        # Hydra turns an exception here into a warning and exit code 0: a report that cannot be built (a bug, a
        # full disk) must neither hide failed jobs nor pass for a finished sweep, so it is one line and exit 1
        try:
            report = self.report(config, sweep_dir, name)
        except Exception as err:  # the runs are untouched: say how to rebuild the report from them
            log.debug("the report failed", exc_info=True)
            print(f"error: the sweep's report could not be built ({type(err).__name__}: {err}); its runs are "
                  f"intact in {sweep_dir}: rebuild it with `python -m cgan_bench.report {sweep_dir}`",
                  file=sys.stderr)
            report = None
        try:
            runs = load_sweep(sweep_dir).runs
            bad = runs[runs["state"] != "completed"] if not runs.empty else runs
        except Exception as err:  # the same fault that stopped the report: no claim about the jobs, exit 1
            print(f"error: the sweep's jobs could not be read back ({type(err).__name__}: {err}); see their run "
                  f"directories in {sweep_dir}", file=sys.stderr)
            sys.exit(1)
        if len(bad):
            for r in bad.itertuples():
                log.error("job %s: %s %s", r.run, r.state, r.reason)
            where = f"see {report}" if report is not None else f"their run directories are in {sweep_dir}"
            print(f"error: {len(bad)} of {len(runs)} jobs did not complete; {where}", file=sys.stderr)
        if len(bad) or report is None:
            sys.exit(1)
        refused = refused_jobs(sweep_dir)
        if refused:  # their folders keep what they held (e.g. completed runs of other settings): exit code 2
            print(f"error: {len(refused)} of the sweep's jobs were refused (the error lines above; e.g. "
                  f"{refused[0]['job']}: {refused[0]['error']})", file=sys.stderr)
            sys.exit(2)
        # a plain rerun starts a new timestamped folder and trains everything again
        log.info("to add seeds or heads to this sweep, rerun it with hydra.sweep.dir=%s (finished jobs are skipped)",
                 sweep_dir)

    @staticmethod
    def report(config: DictConfig, sweep_dir: Path, name: str) -> Path:
        """Build the sweep's own report, then publish a copy where report.publish asks for one."""
        report = write_report(sweep_dir, sweep_dir / OWN_FOLDER, name)
        log.info("report: %s (linked from %s)", report, sweep_dir / "report.md")
        target = publish_target(config, name)
        if target is not None:
            try:
                log.info("report published to %s", publish_report(
                    sweep_dir, target, bool((config.get("report") or {}).get("overwrite")), OVERWRITE))
            except ReportExists as err:
                log.warning("report not published: %s; it is in %s", err, report.parent)
        return report
