"""The run directory contract (DESIGN.md): status.json, metrics.jsonl, per_class.csv, checkpoints/, samples/."""
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl

STATES = ("running", "completed", "failed", "diverged", "preempted")


@dataclass
class RunDir:
    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

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
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def write_status(self, state: str, iteration: int, total: int, wall_s: float, it_per_s: float | None,
                     reason: str = "", train_precision: str | None = None, **extra) -> None:
        """`train_precision`: the resolved train.precision (fp32/bf16/tf32) once a Trainer has chosen it."""
        assert state in STATES, state
        if train_precision is not None:
            extra["train_precision"] = train_precision
        atomic_write_json(self.status_file, {
            "state": state, "iteration": iteration, "total_iterations": total, "reason": reason,
            "wall_s": round(wall_s, 3), "it_per_s": it_per_s, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra})

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
        and any final evaluation (the run is not final any more)."""
        if not self.metrics_file.exists():
            return
        kept = [r for r in self.metrics() if r.get("iteration", 0) <= iteration and r.get("phase") != "final"]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))
