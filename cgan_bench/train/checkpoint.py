"""Checkpoints: everything needed to continue a run bit-for-bit, written atomically, the previous one kept."""
import os
import shutil
import warnings
from pathlib import Path

import torch

from ..io import atomic_torch_save

LAST, PREVIOUS = "last.pt", "previous.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def load_checkpoint(folder: Path, map_location="cpu") -> dict | None:
    """The newest readable checkpoint (last.pt, else previous.pt with a warning), or None if there is none.
    Raises CheckpointUnreadable if checkpoint files exist but none of them is readable."""
    folder = Path(folder)
    unreadable = []
    for name in (LAST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
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
