"""Mirror a job to Weights & Biases: losses and metrics against the training iteration, sample grids, the
per-class table. `wandb.mode=auto` is online when credentials exist, else offline (`wandb sync` later)."""
import netrc
import os
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from PIL import Image

NUMERIC = (int, float)


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


class WandbTracker:
    """One W&B run per job; a second job in the same process finishes the previous run first."""

    def __init__(self, cfg: DictConfig, run_dir: Path, group: str, job_type: str):
        import wandb
        self.wandb = wandb
        run_dir = Path(run_dir)
        id_file = run_dir / "wandb_id.txt"  # a resumed job continues the same W&B run
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        config = OmegaConf.to_container(cfg, resolve=True)
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, dir=str(run_dir), id=run_id, resume="allow",
            name=f"{cfg.dataset.name}-{cfg.head.name}-s{cfg.seed}", group=group, job_type=job_type,
            tags=[cfg.dataset.name, cfg.head.name, f"seed{cfg.seed}"], config=config,
            mode=resolve_mode(cfg.wandb.mode), reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True, disable_git=True, silent=True))
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")

    def log(self, record: dict, per_class: list[dict] | None = None) -> None:
        phase = record.get("phase", "train")
        data = {f"{phase}/{k}": v for k, v in record.items()
                if isinstance(v, NUMERIC) and not isinstance(v, bool) and k != "iteration"}
        data["iteration"] = record["iteration"]
        if per_class:
            data[f"{phase}/per_class"] = self.wandb.Table(columns=list(per_class[0]),
                                                          data=[list(r.values()) for r in per_class])
        self.run.log(data)
        if phase == "final":
            self.run.summary.update({k: v for k, v in data.items() if k != f"{phase}/per_class"})

    def image(self, name: str, image_chw_uint8, iteration: int) -> None:
        self.run.log({"iteration": iteration,
                      name: self.wandb.Image(Image.fromarray(image_chw_uint8.permute(1, 2, 0).numpy()),
                                             caption=f"iteration {iteration}: rows = classes")})

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
