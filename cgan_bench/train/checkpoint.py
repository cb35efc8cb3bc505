"""Checkpoints: everything needed to continue a run bit-for-bit, written atomically, the previous one kept."""
import math
import os
import shutil
import warnings
from pathlib import Path

import torch

from ..io import atomic_torch_save

LAST, PREVIOUS = "last.pt", "previous.pt"


def rng_state(device: torch.device | None = None) -> dict:
    """`cuda_used`: the state of the run's own GPU, so a run resumes on another GPU index (a multi-process
    run's rank r trains on cuda:r; every rank's generator is in the same state: train/distributed.py)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        if device is not None and device.type == "cuda":
            state["cuda_used"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
        if "cuda_used" in state and device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_used"], device)


def save_checkpoint(folder: Path, state: dict) -> Path:
    """Write last.pt via temp + rename; the old last.pt becomes previous.pt only once the new one is complete.

    At every instant last.pt is a complete checkpoint (old or new): the old one is linked to previous.pt
    before the new one is renamed over it, so a kill at any point loses at most the step being written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_final = folder / ".next.pt"
    atomic_torch_save(tmp_final, state)
    last = folder / LAST
    if last.exists():
        tmp_prev = folder / ".previous.pt"
        tmp_prev.unlink(missing_ok=True)
        try:
            os.link(last, tmp_prev)
        except OSError:  # filesystems without hard links
            shutil.copyfile(last, tmp_prev)
        os.replace(tmp_prev, folder / PREVIOUS)
    os.replace(tmp_final, last)
    return last


class CheckpointUnreadable(ValueError):
    """Checkpoints exist but none can be read (a user error: exit code 2). Training from iteration 0 instead
    would silently throw the run away; the user decides (resume=false starts the directory over)."""


def load_checkpoint(folder: Path, map_location="cpu", mmap: bool = False) -> dict | None:
    """The newest readable checkpoint (last.pt, else previous.pt with a warning), or None if there is none.
    Raises CheckpointUnreadable if checkpoint files exist but none of them is readable. `mmap`: tensors stay on
    disk until read (to look at a checkpoint's config without reading a 128px run's ~1 GB)."""
    folder = Path(folder)
    unreadable = []
    for name in (LAST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception as e:  # truncated or corrupt file
            unreadable.append(f"{path} ({type(e).__name__})")
            continue
        if unreadable:
            warnings.warn(f"checkpoint {unreadable[0]} is unreadable; continuing from the older {path}")
        return state
    if unreadable:
        raise CheckpointUnreadable(
            f"no readable checkpoint in {folder}: {' and '.join(unreadable)} cannot be read; rerun with "
            f"resume=false to start this directory over (or restore a checkpoint there)")
    return None


# ---- the best checkpoint (eval.best_metric) ---------------------------------------------------------------
# The generator with the best curve score is kept as checkpoints/best.pt (the paper scored its AC-GAN "at its
# prime", before it collapsed). Its score is part of the trainer's state in last.pt, so a resumed run never
# replaces a better best. best.pt holds what cgan_bench.load_generator reads: G, generator, config, iteration.
BEST = "best.pt"

# The curve metrics a best checkpoint can be chosen by, and which way is better. One table; nothing else.
BEST_DIRECTION = {"fid": "lower", "intra_fid_mean": "lower", "kid_mean": "lower", "mode_kl_mean": "lower",
                  "is_mean": "higher", "class_accuracy": "higher", "precision": "higher", "recall": "higher",
                  "coverage": "higher", "modes_covered_mean": "higher"}
MODE_ONLY = ("mode_kl_mean", "modes_covered_mean")  # measured only in eval.feature_space=digit_channels


def is_better(metric: str, score, best_score) -> bool:
    """Strictly better than the best so far (a tie keeps the earlier checkpoint); a missing or NaN score never is."""
    if score is None or math.isnan(float(score)):
        return False
    if best_score is None:
        return True
    return score < best_score if BEST_DIRECTION[metric] == "lower" else score > best_score


def save_best(folder: Path, state: dict) -> Path:
    """Write best.pt atomically (temp file + rename): a kill leaves the previous best.pt whole."""
    path = Path(folder) / BEST
    atomic_torch_save(path, state)
    return path


def load_best(folder: Path, map_location="cpu") -> dict | None:
    """best.pt, or None where there is none or it cannot be read (with a warning: the run still completes)."""
    path = Path(folder) / BEST
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or corrupt
        warnings.warn(f"best checkpoint {path} is unreadable ({type(e).__name__}); it is ignored")
        return None
