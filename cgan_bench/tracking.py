"""Mirror a job to Weights & Biases: losses and metrics against the training iteration, sample grids, the
per-class table, the morph figure, the git commit and system stats, and (online only) the last checkpoint as an
artifact. `wandb.mode=auto` is online when credentials exist, else offline (`wandb sync` later).

One W&B run per job. Its group is the sweep (the `sweep_name` config value, else the sweep folder's name; a
single run: its run directory's name, see app.main); its name and tags carry the job's Hydra overrides, so the
runs of a sweep (`+adam=A` ... `+adam=F`) are told apart."""
import netrc
import os
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from PIL import Image

NUMERIC = (int, float)
EVAL_PHASES = ("curve", "final")
# What an evaluation record says about the protocol (sample counts, splits, the feature space): settings, not
# curves. They go to the run config under "protocol", never into charts.
PROTOCOL_FIELDS = ("feature_space", "n_real", "n_fake", "n_generated", "real_split", "isc_splits",
                   "kid_subset_size", "floor_n_a", "floor_n_b", "floor_kid_subset_size", "classifier_test_accuracy",
                   "device", "software")
# Values of the real data, the same at every evaluation (the real-vs-real noise floor, the real mode counts):
# kept in the run summary as yardsticks, not charted as flat lines.
REFERENCE_PREFIXES = ("floor_", "real_")
# The summary of an evaluation metric over a run: its best value (define_metric).
LOWER_IS_BETTER = ("fid", "kid_mean", "intra_fid_mean", "near_duplicate_rate_mean", "collapsed_classes",
                   "mode_kl_mean", "mode_collapsed_classes")
HIGHER_IS_BETTER = ("is_mean", "class_accuracy", "precision", "recall", "density", "coverage",
                    "class_coverage_mean", "modes_total", "modes_covered_mean")
# Overrides left out of run names: already in the name (dataset, head, seed), or not changing what the job
# computes: where it runs, logs and reads from, which sweep file it came from. NAME_SKIP_KEYS: the whole key;
# NAME_SKIP_ROOTS: the key's first part (`wandb.mode`, `hydra/launcher`, `report.publish`).
NAME_SKIP_KEYS = {"dataset", "head", "seed", "dataset.root", "dataset.download", "eval.cache_dir",
                  "eval.inception_weights"}
NAME_SKIP_ROOTS = {"sweep", "sweep_name", "wandb", "hydra", "report", "report_dir", "resume", "device"}
TAG_SKIP_ROOTS = {"wandb", "hydra"}  # paths and W&B's own settings: noise as tags
MAX_TAG = 64  # W&B refuses longer tags


def has_wandb_credentials() -> bool:
    """True when an API key is configured (env or ~/.netrc); the key itself is never read into our logs."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    if os.environ.get("WANDB_MODE"):  # the user's environment wins (tests set disabled)
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if has_wandb_credentials() else "offline"
    return mode


def hydra_task_overrides() -> list[str]:
    """The job's command-line and sweep overrides (e.g. ["head=concat", "+adam=C", "+sweep=hparams"]); [] when
    the job runs without Hydra (run_job called directly)."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _override_key(override: str) -> str:
    """`+adam=C` -> `adam`, `train.lr=1e-3` -> `train.lr`, `hydra/launcher=joblib` -> `hydra.launcher`."""
    return override.partition("=")[0].lstrip("+~").replace("/", ".")


def _root(override: str) -> str:
    return _override_key(override).split(".")[0]


def run_name(dataset: str, head: str, seed: int, overrides: list[str]) -> str:
    """`digits-projection-s0` plus the overrides that change the run, e.g. `digits-projection-s0-adam=C`."""
    extra = [o.lstrip("+") for o in overrides
             if _override_key(o) not in NAME_SKIP_KEYS and _root(o) not in NAME_SKIP_ROOTS]
    return "-".join([f"{dataset}-{head}-s{seed}", *extra])


def run_tags(dataset: str, head: str, seed: int, overrides: list[str]) -> list[str]:
    """The dataset, head and seed, then every override as `key=value` (W&B's hydra.*/wandb.* settings left out)."""
    tags = [dataset, head, f"seed{seed}"]
    tags += [o.lstrip("+")[:MAX_TAG] for o in overrides if _root(o) not in TAG_SKIP_ROOTS]
    return list(dict.fromkeys(tags))  # W&B keeps tags as a set; keep our order, drop repeats


class WandbTracker:
    """One W&B run per job; a second job in the same process finishes the previous run first.
    `overrides`: the job's Hydra task overrides (None: read from Hydra, [] outside Hydra)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, group: str, job_type: str,
                 overrides: list[str] | None = None):
        import wandb
        self.wandb = wandb
        self.run_dir = Path(run_dir)
        self.mode = resolve_mode(cfg.wandb.mode)
        self.iteration = 0
        self.protocol: dict[str, dict] = {}
        overrides = hydra_task_overrides() if overrides is None else list(overrides)
        id_file = self.run_dir / "wandb_id.txt"  # a resumed job continues the same W&B run
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        config = OmegaConf.to_container(cfg, resolve=True)
        config["overrides"] = overrides
        ident = (cfg.dataset.name, cfg.head.name, cfg.seed)
        # git commit and system stats are W&B's defaults (git: the working directory's checkout, if any)
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, dir=str(self.run_dir), id=run_id, resume="allow",
            name=run_name(*ident, overrides), group=group, job_type=job_type, tags=run_tags(*ident, overrides),
            config=config, mode=self.mode, reinit="finish_previous",
            settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")
        for phase in EVAL_PHASES:
            for best, keys in (("min", LOWER_IS_BETTER), ("max", HIGHER_IS_BETTER)):
                for key in keys:
                    self.run.define_metric(f"{phase}/{key}", step_metric="iteration", summary=best)

    def log(self, record: dict, per_class: list[dict] | None = None) -> None:
        """Charts get the numeric metrics; protocol fields go to config["protocol"][phase], reference values
        (noise floor, real modes) to the summary. A final record's metrics are also its summary values."""
        phase = record.get("phase", "train")
        self.iteration = record["iteration"]
        protocol = {k: record[k] for k in PROTOCOL_FIELDS if k in record}
        if protocol and self.protocol.get(phase) != protocol:
            self.protocol[phase] = protocol
            self.run.config.update({"protocol": self.protocol}, allow_val_change=True)
        numeric = {k: v for k, v in record.items() if isinstance(v, NUMERIC) and not isinstance(v, bool)
                   and k != "iteration" and k not in PROTOCOL_FIELDS}
        reference = {f"{phase}/{k}": v for k, v in numeric.items() if k.startswith(REFERENCE_PREFIXES)}
        if reference:
            self.run.summary.update(reference)
        data = {f"{phase}/{k}": v for k, v in numeric.items() if not k.startswith(REFERENCE_PREFIXES)}
        data["iteration"] = record["iteration"]
        if per_class:
            data[f"{phase}/per_class"] = self.wandb.Table(columns=list(per_class[0]),
                                                          data=[list(r.values()) for r in per_class])
        self.run.log(data)
        if phase == "final":  # one evaluation: its summary is the value itself (not a {"min": ...} aggregate)
            self.run.summary.update({k: v for k, v in data.items() if k != f"{phase}/per_class"})

    def image(self, name: str, image_chw_uint8, iteration: int) -> None:
        self.run.log({"iteration": iteration,
                      name: self.wandb.Image(Image.fromarray(image_chw_uint8.permute(1, 2, 0).numpy()),
                                             caption=f"iteration {iteration}: rows = classes")})

    def image_file(self, name: str, path: Path, iteration: int, caption: str = "") -> None:
        """Log a figure the job saved (e.g. samples/morph.png); nothing if it was not written."""
        if Path(path).exists():
            self.run.log({"iteration": iteration, name: self.wandb.Image(str(path), caption=caption or None)})

    def log_checkpoint(self) -> None:
        """The run directory's last checkpoint as a `model` artifact, online only (offline, W&B would copy the
        file into its staging folder: GBs for a paper-sized model, and `wandb sync` uploads the run anyway)."""
        last = self.run_dir / "checkpoints" / "last.pt"
        if self.mode != "online" or not last.exists():
            return
        artifact = self.wandb.Artifact(f"checkpoint-{self.run.id}", type="model",
                                       metadata={"iteration": self.iteration})
        artifact.add_file(str(last), name="last.pt")
        self.run.log_artifact(artifact, aliases=["latest", f"iteration-{self.iteration}"])

    def finish(self, exit_code: int = 0) -> None:
        """End the run; a job that completed or was preempted (exit 0) uploads its checkpoint first."""
        if exit_code == 0:
            self.log_checkpoint()
        self.run.finish(exit_code=exit_code)
