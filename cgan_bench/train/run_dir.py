"""The run directory contract (DESIGN.md): status.json, metrics.jsonl, per_class.csv, checkpoints/, samples/."""
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl

STATES = ("running", "completed", "failed", "diverged", "preempted")


def now_iso() -> str:
    """Local time with its UTC offset (2026-12-07T22:04:16+01:00): comparable across the machines of a cluster."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def earlier_wall_s(status: dict | None) -> float:
    """The wall time earlier attempts on a run directory spent, from their status.json: its total_wall_s, or
    training's wall_s where the status predates total_wall_s; 0 without one."""
    if not status:
        return 0.0
    return float(status.get("total_wall_s", status.get("wall_s")) or 0.0)


@dataclass
class RunDir:
    path: Path
    # Total wall time (status.json `total_wall_s`): the job's start on time.perf_counter() (None: not
    # recorded) plus the seconds earlier attempts on this directory spent (a resumed run adds its time).
    job_started: float | None = field(default=None, repr=False)
    earlier_wall_s: float = field(default=0.0, repr=False)

    def __post_init__(self):
        self.path = Path(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def start_clock(self, earlier_wall_s: float = 0.0) -> None:
        """From now on every status.json carries `total_wall_s`: everything this job does (data loading, cache
        work, training, evaluation) plus `earlier_wall_s` from earlier attempts, beside training's `wall_s`."""
        self.job_started, self.earlier_wall_s = time.perf_counter(), float(earlier_wall_s)

    def total_wall_s(self) -> float | None:
        if self.job_started is None:
            return None
        return self.earlier_wall_s + time.perf_counter() - self.job_started

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def per_class_file(self) -> Path:
        return self.path / "per_class.csv"

    @property
    def per_class_best_file(self) -> Path:
        """The best checkpoint's per-class rows (phase "best"), kept apart from the final model's."""
        return self.path / "per_class_best.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def write_status(self, state: str, iteration: int, total: int, wall_s: float, it_per_s: float | None,
                     reason: str = "", train_precision: str | None = None, **extra) -> None:
        """`train_precision`: the resolved train.precision (fp32/bf16/tf32) once a Trainer has chosen it.
        `wall_s` is training time; `total_wall_s` (once start_clock ran) is the whole job's."""
        assert state in STATES, state
        if train_precision is not None:
            extra["train_precision"] = train_precision
        total_wall_s = self.total_wall_s()
        if total_wall_s is not None:
            extra["total_wall_s"] = round(total_wall_s, 3)
        atomic_write_json(self.status_file, {
            "state": state, "iteration": iteration, "total_iterations": total, "reason": reason,
            "wall_s": round(wall_s, 3), "it_per_s": it_per_s, "updated": now_iso(),
            **extra})

    # The Hydra files (.hydra/config.yaml, overrides.yaml, hydra.yaml) of the last job this directory accepted.
    # Hydra rewrites .hydra/ for every job before the job can refuse; a refused job puts these back, so the
    # directory (and its report) never shows settings its results were not made with.
    @property
    def accepted_file(self) -> Path:
        return self.path / ".hydra_accepted.json"

    def keep_accepted(self, hydra_files: dict[str, str]) -> None:
        if hydra_files:
            atomic_write_json(self.accepted_file, hydra_files)

    def accepted(self) -> dict[str, str]:
        try:
            return json.loads(self.accepted_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def read_status(self) -> dict | None:
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def log(self, record: dict) -> None:
        append_jsonl(self.metrics_file, record)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_file) if self.metrics_file.exists() else []

    def drop_metrics_after(self, iteration: int) -> None:
        """On resume, forget lines logged after the checkpoint we continue from (they will be logged again),
        and any final or best-checkpoint evaluation (the run is not final any more)."""
        if not self.metrics_file.exists():
            return
        kept = [r for r in self.metrics() if r.get("iteration", 0) <= iteration
                and r.get("phase") not in ("final", "best")]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))
