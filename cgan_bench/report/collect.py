"""Run directories -> three tidy pandas DataFrames (runs, curves, per_class). Reads files only (DESIGN.md
contract); running, failed, diverged and missing runs become rows with their state, never errors."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from ..io import read_jsonl
from ..overrides import IDENTITY_OVERRIDES, is_neutral
from ..metrics.kid_error import with_floor_kid_error

RUN_KEYS = ["run", "dataset", "head", "seed"]


@dataclass
class SweepFrames:
    runs: pd.DataFrame  # one row per run: identity, status, final metrics and protocol (best_*: the best checkpoint)
    curves: pd.DataFrame  # one row per evaluation (phase curve/final) per run
    per_class: pd.DataFrame  # final per-class metrics, one row per class per run
    expected_jobs: int | None  # from multirun.yaml, when it can be read


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return {}


def read_status(run_dir: Path) -> dict:
    """A run directory's status.json; one that is missing, unreadable or no JSON object is a state saying so
    (the run is listed, never a crash of the report or the sweep check)."""
    try:
        status = json.loads((run_dir / "status.json").read_text())
    except FileNotFoundError:
        return {"state": "not started", "reason": "no status.json"}
    except (OSError, ValueError) as err:  # half-written, corrupt bytes, unreadable
        return {"state": "unknown", "reason": f"status.json unreadable ({type(err).__name__})"}
    return status if isinstance(status, dict) else {"state": "unknown", "reason": "status.json is not a JSON object"}


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every folder under the sweep that Hydra made a job directory (it has .hydra/config.yaml)."""
    return sorted(p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/config.yaml")
                  if "multirun.yaml" not in str(p))


def expected_job_count(sweep_dir: Path) -> int | None:
    """Size of the sweep in multirun.yaml (the sweep config's params, then the command line's overrides, as
    Hydra's basic sweeper combines them), counted with Hydra's own override parser (`a,b`, `range(3)`,
    `choice(...)`); None where it can't tell (no multirun.yaml, glob() or interval sweeps, another sweeper)."""
    cfg = _read_yaml(Path(sweep_dir) / "multirun.yaml")
    if not cfg:
        return None
    overrides = (cfg.get("hydra") or {}).get("overrides", {}).get("task", [])
    swept = (cfg.get("hydra") or {}).get("sweeper", {}).get("params") or {}
    params = {str(k).lstrip("+~"): f"{k}={v}" for k, v in swept.items()}
    for o in overrides:  # the command line replaces the sweep config's value of the same key
        params[str(o).partition("=")[0].lstrip("+~")] = str(o)
    try:
        parsed = OverridesParser.create().parse_overrides(list(params.values()))
        sizes = [len(list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override()]
    except Exception:  # a sweep Hydra can't enumerate without the config (glob, interval) or can't parse
        return None
    return int(np.prod(sizes)) if sizes else 1


def read_run(run_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    cfg = _read_yaml(run_dir / ".hydra" / "config.yaml")
    ident = {"run": run_dir.name, "dataset": (cfg.get("dataset") or {}).get("name"),
             "head": (cfg.get("head") or {}).get("name"), "seed": cfg.get("seed")}
    status = read_status(run_dir)
    lines = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    evals = [{**ident, **r} for r in lines if r.get("phase") in ("curve", "final")]
    finals = [r for r in evals if r["phase"] == "final"]
    train = cfg.get("train") or {}
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    row = {**ident, "overrides": " ".join(str(o) for o in overrides), "state": status.get("state"),
           "reason": status.get("reason", ""),
           "iteration": status.get("iteration"), "total_iterations": status.get("total_iterations"),
           "wall_s": status.get("wall_s"), "it_per_s": status.get("it_per_s"), "updated": status.get("updated"),
           "total_wall_s": status.get("total_wall_s"),
           "n_dis": train.get("n_dis"), "batch_d": train.get("batch_d"), "batch_g": train.get("batch_g"),
           "lr": train.get("lr"), "beta1": train.get("beta1"), "beta2": train.get("beta2"),
           "joint_d_forward": bool(train.get("joint_d_forward", False)),  # one D call per D step: not the paper's
           # bf16 changes numbers; the metric `precision` is P/R. status.json holds the resolved choice (auto ->
           # fp32/bf16); runs from before it was recorded fall back to the configured value.
           "train_precision": status.get("train_precision") or train.get("precision", "fp32"),
           "cpu_threads": status.get("cpu_threads"),  # training's torch threads on a CPU (None: GPU, or not recorded)
           "model_g_ch": (cfg.get("model") or {}).get("g_ch"), "model_d_ch": (cfg.get("model") or {}).get("d_ch"),
           "resolution": (cfg.get("dataset") or {}).get("resolution"),
           "val_fraction": (cfg.get("dataset") or {}).get("val_fraction"), "path": str(run_dir)}
    if finals:
        final = max(finals, key=lambda r: r["iteration"])
        values = {k: v for k, v in final.items() if k not in ident and k not in ("phase", "iteration")}
        row.update(with_floor_kid_error(values, (cfg.get("eval") or {}).get("kid_subset_size")))
    bests = [r for r in lines if r.get("phase") == "best"]
    if finals and bests:  # the best curve checkpoint under the final protocol: best_<key> beside each final <key>
        row.update({k if k.startswith("best_") else f"best_{k}": v for k, v in bests[-1].items()
                    if k not in ident and k not in ("phase", "iteration")})
    per_class = []
    if (run_dir / "per_class.csv").exists() and finals:
        try:
            per_class = [{**ident, **r} for r in pd.read_csv(run_dir / "per_class.csv").to_dict("records")]
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            per_class = []
    return row, evals, per_class


def settings_of(run_dir: Path) -> dict:
    """What a run was configured with, by the keys an override names: its config (.hydra/config.yaml,
    flattened, `train.lr`) and its config-group choices (.hydra/hydra.yaml, `train`, `adam`)."""
    flat = _flatten(_read_yaml(run_dir / ".hydra" / "config.yaml"))
    choices = ((_read_yaml(run_dir / ".hydra" / "hydra.yaml").get("hydra") or {}).get("runtime") or {}).get("choices")
    return {**flat, **{k: v for k, v in (choices or {}).items() if not str(k).startswith("hydra/")}}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def variants(rows: list[dict], settings: dict[str, dict] | None = None) -> dict[str, str]:
    """run -> the settings that differ between runs other than head/seed/dataset (e.g. `+adam=B`), so that
    runs with different settings are never averaged as if they were seeds (where a run writes its report or logs,
    NEUTRAL_OVERRIDES, is no setting).

    A key an override names is compared by the value the run had (`settings`: settings_of each run, where
    known), not by the override's text: `train.lr=2e-4` equal to the default is no variant of runs that did not
    give it, and where the value does vary, runs without the override are labelled with theirs too. A label
    keeps an override's spelling where one run gave that value on its command line."""
    parsed = {r["run"]: dict(o.partition("=")[::2] for o in r.get("overrides", "").split() if "=" in o)
              for r in rows}
    settings = settings or {}
    keys = {k for p in parsed.values() for k in p if k.lstrip("+~") not in IDENTITY_OVERRIDES and not is_neutral(k)}
    labels = {run: [] for run in parsed}
    for name in sorted({k.lstrip("+~") for k in keys}):
        spellings = [k for k in keys if k.lstrip("+~") == name]

        def value(run):  # (what the run had, the override that said so or None)
            given = next((f"{k}={parsed[run][k]}" for k in spellings if k in parsed[run]), None)
            known = settings.get(run) or {}
            if name in known and not (given or "").startswith("~"):
                return repr(known[name]), given
            return (given.partition("=")[2] if given else None), given  # no config to read: the text

        values = {run: value(run) for run in parsed}
        if len({v for v, _ in values.values()}) < 2:
            continue
        spelled = {}  # a value -> the first override that gave it
        for run in sorted(values):
            v, given = values[run]
            if given is not None:
                spelled.setdefault(v, given)
        for run, (v, given) in values.items():
            if given is not None or name in (settings.get(run) or {}):
                labels[run].append(spelled.get(v) or f"{name}={settings[run][name]}")
    return {run: " ".join(parts) for run, parts in labels.items()}


def load_sweep(sweep_dir: Path) -> SweepFrames:
    rows, curves, per_class = [], [], []
    for run_dir in find_run_dirs(sweep_dir):
        row, evals, pc = read_run(run_dir)
        rows.append(row)
        curves.extend(evals)
        per_class.extend(pc)
    variant = variants(rows, {r["run"]: settings_of(Path(r["path"])) for r in rows})
    for r in rows:
        r["variant"] = variant[r["run"]]
    return SweepFrames(pd.DataFrame(rows), pd.DataFrame(curves), pd.DataFrame(per_class),
                       expected_job_count(sweep_dir))
