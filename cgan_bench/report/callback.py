"""Build the report when a multirun ends, and make the multirun exit non-zero if any job failed.

Hydra skips on_multirun_end when a job raises, so jobs record failures in their run directory and
return instead of raising (see app.main); this callback then always runs.
"""
import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .build import build_report
from .collect import load_sweep

log = logging.getLogger("cgan_bench")


class ReportOnMultirunEnd(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        name = config.get("sweep_name") or sweep_dir.name
        out = Path(config.get("report_dir") or "reports") / name
        report = build_report(sweep_dir, out, name)
        log.info("report: %s (linked from %s)", report, sweep_dir / "report.md")
        runs = load_sweep(sweep_dir).runs
        bad = runs[runs["state"] != "completed"] if not runs.empty else runs
        if len(bad):
            for r in bad.itertuples():
                log.error("job %s: %s %s", r.run, r.state, r.reason)
            print(f"error: {len(bad)} of {len(runs)} jobs did not complete; see {report}", file=sys.stderr)
            sys.exit(1)
