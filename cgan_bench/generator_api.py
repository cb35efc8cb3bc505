"""Using a trained generator: `load_generator(run_dir)` and `sample(gen, classes, n)`.

    gen = cgan_bench.load_generator("runs/2026-01-01_12-00-00_digits_projection_s0")
    images = sample(gen, ["3", "7"], n=8)          # uint8 (16, 3, H, W): 8 of class "3", then 8 of class "7"

Checkpoints written since the "generator" entry exists carry n_classes, class names and the model config;
older ones are read with the run's config (the checkpoint's copy, else .hydra/config.yaml), n_classes from
G's class embeddings and class names "0", "1", ...
"""
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .train.checkpoint import LAST, PREVIOUS, CheckpointUnreadable, load_checkpoint
from .train.samples import grid_classes, make_grid, split_channels, to_uint8

FINAL_SEED_OFFSET = 1234  # samples/final*.png use z drawn with seed = the run's seed + 1234 (mod 2**64)


@dataclass
class LoadedGenerator:
    G: torch.nn.Module  # models.Generator, in eval mode
    n_classes: int
    class_names: list[str]
    z_dim: int
    resolution: int
    seed: int  # the run's seed
    checkpoint: Path  # the file the weights came from
    channels_apart: bool = False  # stacked digits: grids show the three channels side by side
    head: str = "?"  # for figure titles: the run's head, dataset and the checkpoint's iteration
    dataset: str = "?"
    iteration: int | None = None

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    @property
    def final_seed(self) -> int:
        """The z seed of samples/final.png (and final_raw.png)."""
        return (self.seed + FINAL_SEED_OFFSET) % 2**64

    def final_classes(self) -> list[int]:
        """The rows of samples/final.png: every class, or 10 evenly spread ones when there are more."""
        return grid_classes(self.n_classes)

    def class_index(self, c: int | str) -> int:
        """A class by name, else by index ("3" or 3); ValueError naming the classes if neither."""
        if isinstance(c, str) and c in self.class_names:
            return self.class_names.index(c)
        try:
            i = int(c)
        except (TypeError, ValueError):
            i = None
        if i is None or not 0 <= i < self.n_classes or isinstance(c, bool):
            shown = ", ".join(self.class_names[:20]) + (", ..." if self.n_classes > 20 else "")
            raise ValueError(f"unknown class {c!r}: the classes are {shown} (or indices 0..{self.n_classes - 1})")
        return i


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _run_config(run_dir: Path, state: dict) -> dict:
    """The run's flattened config: .hydra/config.yaml, overridden by the checkpoint's own copy."""
    flat = {}
    hydra_config = run_dir / ".hydra" / "config.yaml"
    if hydra_config.exists():
        from omegaconf import OmegaConf
        flat = _flatten(OmegaConf.to_container(OmegaConf.load(hydra_config), resolve=True))
    return {**flat, **state.get("config", {})}


def _read_checkpoint(run_dir: Path, checkpoint: str, device) -> tuple[dict, Path]:
    folder = run_dir / "checkpoints"
    if checkpoint != "last":  # "previous" or a file
        path = folder / PREVIOUS if checkpoint == "previous" else Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint {path}")
        try:
            return torch.load(path, map_location=device, weights_only=True), path
        except Exception as e:  # truncated, corrupt or not a checkpoint
            raise CheckpointUnreadable(f"cannot read checkpoint {path} ({type(e).__name__})") from e
    with warnings.catch_warnings(record=True) as caught:  # to know whether last.pt was skipped
        warnings.simplefilter("always")
        state = load_checkpoint(folder, map_location=device)  # CheckpointUnreadable if none can be read
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)
    if state is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint ({folder / LAST} or {PREVIOUS})")
    fell_back = any(str(w.message).startswith(f"checkpoint {folder / LAST}") for w in caught)
    return state, folder / (PREVIOUS if fell_back or not (folder / LAST).exists() else LAST)


def check_device(device) -> None:
    """ValueError naming the fix for a device string torch can't parse or a CUDA device this machine hasn't."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is visible on this machine; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                         f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")


def load_generator(run_dir, device="cpu", checkpoint: str = "last") -> LoadedGenerator:
    """The generator of a run directory, in eval mode on `device`.

    `checkpoint`: "last" (checkpoints/last.pt, else previous.pt with a warning), "previous", or a .pt path.
    FileNotFoundError for a missing run directory or checkpoint; CheckpointUnreadable if none can be read."""
    from .models import Generator
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    check_device(device)  # before the checkpoint: a device torch can't use must not read as an unreadable file
    state, path = _read_checkpoint(run_dir, checkpoint, device)
    if "G" not in state:
        raise ValueError(f"{path} holds no generator weights")
    cfg = _run_config(run_dir, state)
    info = state.get("generator")
    if info is None:  # checkpoints from before the "generator" entry
        missing = [k for k in ("dataset.resolution", "model.g_ch", "model.z_dim") if k not in cfg]
        if missing:
            raise ValueError(f"{path} has no generator config and {run_dir / '.hydra' / 'config.yaml'} "
                             f"lacks {', '.join(missing)}")
        n_classes = state["G"]["blocks.0.bn1.gamma.weight"].shape[0]
        info = {"n_classes": n_classes, "class_names": [str(i) for i in range(n_classes)],
                "resolution": cfg["dataset.resolution"], "g_ch": cfg["model.g_ch"], "z_dim": cfg["model.z_dim"]}
    G = Generator(info["n_classes"], info["resolution"], info["g_ch"], info["z_dim"], mult=info.get("g_mult"))
    G.load_state_dict(state["G"])
    # the run's memory format too: channels_last convolutions round differently, and final_raw.png is matched exactly
    memory_format = torch.channels_last if cfg.get("train.channels_last", False) else torch.contiguous_format
    G.to(device, memory_format=memory_format).eval()
    return LoadedGenerator(G, info["n_classes"], list(info["class_names"]), info["z_dim"], info["resolution"],
                           int(cfg.get("seed", 0)), path, bool(cfg.get("dataset.channels_apart", False)),
                           str(cfg.get("head.name", "?")), str(cfg.get("dataset.name", "?")), state.get("iteration"))


def sample_z(n: int, z_dim: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    """(n, z_dim) z ~ N(0, I) from a CPU generator seeded with `seed` (as the run's sample grids draw it);
    `truncation` t: every entry with |z| > t redrawn until all lie within t (the truncation trick)."""
    g = torch.Generator(device="cpu").manual_seed(seed % 2**64)
    z = torch.randn(n, z_dim, generator=g)
    if truncation is not None:
        if not truncation > 0:
            raise ValueError(f"truncation must be > 0, got {truncation}")
        while (outside := z.abs() > truncation).any():
            z[outside] = torch.randn(int(outside.sum()), generator=g)
    return z


@torch.no_grad()
def sample(gen: LoadedGenerator, classes, n: int, seed: int | None = None, truncation: float | None = None,
           batch_size: int = 500) -> torch.Tensor:
    """uint8 (len(classes) * n, 3, H, W): n images per class, class after class, the same n z for every
    class (image j of each class shares z_j). `classes`: names or indices, or "all"; `seed` None = the
    seed of samples/final.png."""
    ids = list(range(gen.n_classes)) if classes == "all" else [gen.class_index(c) for c in classes]
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    seed = gen.final_seed if seed is None else seed
    z = sample_z(n, gen.z_dim, seed, truncation).to(gen.device).repeat(len(ids), 1)
    y = torch.tensor(ids, device=gen.device).repeat_interleave(n)
    return torch.cat([to_uint8(gen.G(z[i:i + batch_size], y[i:i + batch_size])).cpu()
                      for i in range(0, len(z), batch_size)])


def sample_grid(gen: LoadedGenerator, images: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 (3, H', W') pixel grid of `sample`'s output: one row per class, n columns (as samples/final_raw.png;
    train.samples.class_grid_figure labels it, as samples/final.png)."""
    return make_grid(split_channels(images) if gen.channels_apart else images, n)
