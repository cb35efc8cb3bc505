"""What a job's command-line overrides say about it: which name the run (dataset, head, seed), which only say
where it writes or logs (neutral), and the folder a sweep job writes to, named from them.

A sweep job's folder is named by what it computes, not by its place in the sweep. Hydra's default subdir is
the job's number, and a sweep re-run with a longer seed list renumbers its jobs: finished seeds would land in
new folders and train again. Here (conf/config.yaml's hydra.sweep.subdir) a job's folder is
`<dataset>_<head>_s<seed>`, then its other overrides that change results, sorted, as `key-value`
(e.g. `digits_concat_s3_adam-B`, `digits_concat_s0_head.stage-2`), so the same job re-run into the same sweep
folder finds its own folder (resumed, or skipped when complete) whatever else the sweep lists.
Names use only characters that are safe in paths and in Hydra overrides (`finetune.parent=<job folder>`):
letters, digits, `.`, `_`, `-`; a value with others (a path) or a long one becomes an 8-hex hash of it.
"""
import hashlib
import os
import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

IDENTITY_OVERRIDES = ("head", "seed", "dataset")
# Overrides that change where things are written or shown, not what a run computes: never a variant, never part
# of a job's folder name (`+sweep=X` only lists jobs whose own overrides carry what they set).
NEUTRAL_OVERRIDES = ("wandb", "report", "report_dir", "sweep_name", "sweep", "resume", "hydra", "figures",
                     "eval.cache_dir", "eval.batch_size", "eval.inception_weights", "dataset.root", "dataset.path")

SAFE = re.compile(r"[A-Za-z0-9._-]{1,32}")
LONGEST_NAME = 200  # characters; a longer name keeps its first part and hashes the rest (file systems allow 255)
PATH_OVERRIDES = ("finetune.parent", "dataset.path")  # values that are paths: `runs/x` and `/abs/runs/x` are one


def is_neutral(key: str) -> bool:
    """An override of where a run writes or logs (NEUTRAL_OVERRIDES), not of what it computes."""
    key = key.lstrip("+~")
    return any(key == k or key.startswith((k + ".", k + "/")) for k in NEUTRAL_OVERRIDES)


def settings(overrides) -> frozenset:
    """A job's overrides that change what it computes (not where it writes or logs)."""
    return frozenset(str(o) for o in overrides if not is_neutral(str(o).partition("=")[0]))


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def same_path(value: str) -> str:
    """A path as one spelling: absolute, links and `..` resolved (against this process's working directory,
    which is the job's: hydra.job.chdir is false)."""
    return os.path.realpath(value) if value not in ("", "null", "None") else value


def readable(text: str) -> str:
    """The text itself where it is safe in a folder name and short, else its hash."""
    return text if SAFE.fullmatch(text) else short_hash(text)


def folder_part(override: str) -> str:
    """`+adam=B` -> `adam-B`; `~train.lr` -> `no-train.lr`; a value or key that is unsafe or long -> its hash;
    a path (finetune.parent) hashed in one spelling."""
    key, has_value, value = override.partition("=")
    deleted = key.startswith("~")
    key = key.lstrip("+~")
    if key in PATH_OVERRIDES:
        value = same_path(value)
    if deleted:
        return f"no-{readable(key)}" + (f"-{readable(value)}" if has_value else "")
    return f"{readable(key)}-{readable(value)}"


def job_folder(dataset, head, seed, overrides) -> str:
    """A sweep job's folder name: `<dataset>_<head>_s<seed>` and the job's other result-changing overrides."""
    base = f"{dataset}_{head}_s{seed}"
    base = base if re.fullmatch(r"[A-Za-z0-9._-]+", base) else short_hash(base)
    extras = sorted((str(o) for o in settings(overrides or [])
                     if str(o).partition("=")[0].lstrip("+~") not in IDENTITY_OVERRIDES),
                    key=lambda o: (o.partition("=")[0].lstrip("+~"), o))  # `++train.lr` sorts as `train.lr`
    name = "_".join([base] + [folder_part(o) for o in extras])
    return name if len(name) <= LONGEST_NAME else f"{base}_{short_hash(' '.join(extras))}"


def register_resolver() -> None:
    """`${cgan_bench.job_folder:dataset,head,seed,overrides}`, which conf/config.yaml's hydra.sweep.subdir uses."""
    OmegaConf.register_new_resolver("cgan_bench.job_folder", job_folder, replace=True)


register_resolver()  # on import: the sweep check, the launchers and every process that runs a job import this


def compose_job(loader, master_config: DictConfig, overrides: list[str], num: int) -> DictConfig:
    """A sweep job's config as Hydra's launchers compose it (the sweep check and launch.py both use this), with
    hydra.job.id as the configured launcher sets it: joblib `<job name>_<num>`; submitit the Slurm job id, not
    known before submission (the placeholder it uses until then); Hydra's basic launcher the number."""
    cfg = loader.load_sweep_config(master_config=master_config, sweep_overrides=list(overrides))
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="")).lower()
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{num}" if "joblib" in launcher else \
            f"job_id_for_{num}" if ("submitit" in launcher or "slurm" in launcher) else num
        cfg.hydra.job.num = num
    return cfg


def job_run_dir(cfg: DictConfig) -> Path:
    """hydra.sweep.dir/hydra.sweep.subdir of a composed job config, resolved as hydra.core.utils.run_job does
    (with HydraConfig set to the job's config, which `${hydra:...}` reads)."""
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    try:
        hydra_config.set_config(cfg)
        return Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    finally:
        hydra_config.cfg = saved
