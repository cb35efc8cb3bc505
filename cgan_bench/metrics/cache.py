"""Where the harness caches what it computes once: domain classifiers and real-data reference features."""
import hashlib
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

log = logging.getLogger(__name__)

PREPROCESSING_VERSION = 1  # bump when image loading/resizing changes, so old caches are never reused


def cache_root(configured: str | None = None) -> Path:
    """eval.cache_dir, else $CGAN_BENCH_CACHE, else ~/.cache/cgan_bench."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("CGAN_BENCH_CACHE"):
        return Path(os.environ["CGAN_BENCH_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cgan_bench"


def cache_key(*, dataset: str, split: str, count: int, resolution: int, feature_space: str,
              preprocessing: int = PREPROCESSING_VERSION) -> str:
    """Every field that changes the numbers is in the key (other harnesses collide across resolutions)."""
    return f"{dataset}-{split}-n{count}-r{resolution}-pp{preprocessing}-{feature_space}"


# What reading a damaged entry raises (torch.load of garbage or a truncated file, bad JSON, missing keys, a state
# dict that does not fit). OSError is not among them: an unreadable disk or a permission problem is no reason
# to throw an entry away. Loaders read to the CPU, so a device out of memory never looks like a damaged file.
CORRUPT = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError, IndexError, TypeError,
           AttributeError)


def load_or_build(path: Path, load: Callable[[Path], Any], build: Callable[[], Any],
                  save: Callable[[Path, Any], None], what: str = "") -> Any:
    """One shared cache entry. An existing entry is complete (written by temp file + rename), so it is read
    without any lock: a read-only cache directory works. A missing one is built under `<path>.lock`, checked
    again once the lock is held (another job may have built it meanwhile). An entry that cannot be read is
    named in a warning, moved aside to `<name>.corrupt-<time>` and rebuilt, so it cannot break later runs.
    `what` names the entry in the log lines that announce a build (a fresh cache is minutes of work)."""
    path = Path(path)
    if path.exists():
        try:
            return load(path)
        except CORRUPT:
            pass  # dealt with under the lock (another job may be replacing it right now)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return load(path)
            except CORRUPT as err:
                aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(path, aside)
                log.warning("cache entry %s is unreadable (%s: %s); moved aside to %s, rebuilding it", path,
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "", aside.name)
        log.info("building %s (a one-time step; cached at %s)", what or path.name, path)
        started = time.perf_counter()
        value = build()
        save(path, value)
        log.info("built %s in %.1f s", what or path.name, time.perf_counter() - started)
        return value


def fingerprint(data) -> str:
    """Short content hash of an ImageData, so two image folders with the same name never share a cache entry.
    A streamed store never changes once built, so its splits' hashes are kept beside it (fingerprints.json):
    hashing ImageNet's 63 GB at every job start or resume took about a minute of reading."""
    store = getattr(data, "store", None)
    if store is None:
        return _content_hash(data)
    import json

    from ..io import atomic_write_text
    rows = getattr(data, "rows", None)
    which = hashlib.sha1(b"all" if rows is None else rows.tobytes())
    which.update(data.labels.cpu().numpy().tobytes())
    which = which.hexdigest()[:16]
    saved = Path(store) / "fingerprints.json"
    try:
        known = json.loads(saved.read_text())
    except (OSError, ValueError):
        known = {}
    if which not in known:
        known[which] = _content_hash(data)
        try:
            atomic_write_text(saved, json.dumps(known, indent=1))
        except OSError:  # a read-only store: hash again next time
            pass
    return known[which]


def _content_hash(data) -> str:
    h = hashlib.sha1()
    for chunk in data.image_chunks(4096):  # chunk by chunk (same hash): a streamed store never sits in RAM whole
        h.update(chunk.cpu().numpy().tobytes())
    h.update(data.labels.cpu().numpy().tobytes())
    return h.hexdigest()[:10]
