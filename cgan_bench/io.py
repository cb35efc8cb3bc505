"""Crash-safe file writes: write a temp file next to the target, then rename over it."""
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status, kernel >= 4.7).
    Elsewhere os.umask must set it to read it: set-and-restore at once, a tiny window in which a file
    created by another thread would get mode 0666 & ~0o022."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def replace_atomically(path: Path, write) -> None:
    """Call write(file) on a temp file beside `path`, then rename it over `path`. The file gets the mode a
    plain open() would give it (0666 minus the umask: 0644 under umask 022), not mkstemp's private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    replace_atomically(Path(path), lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    replace_atomically(Path(path), lambda f: torch.save(obj, f))


def jsonable(obj: Any) -> Any:
    """Plain-JSON view of numbers, tensors and containers (NaN/Inf become null so every line parses)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def append_jsonl(path: Path, record: dict) -> None:
    """One JSON object per line; a single write call so concurrent readers never see half a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(jsonable(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Every complete line of a JSONL file (a torn last line from a crash is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
