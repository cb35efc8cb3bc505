"""Where the harness caches what it computes once: domain classifiers and real-data reference features."""
import hashlib
import os
from pathlib import Path

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


def fingerprint(data) -> str:
    """Short content hash of an ImageData, so two image folders with the same name never share a cache entry."""
    h = hashlib.sha1()
    h.update(data.images.cpu().numpy().tobytes())
    h.update(data.labels.cpu().numpy().tobytes())
    return h.hexdigest()[:10]
