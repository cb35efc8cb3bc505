import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) uses one fresh cache and no W&B network."""
    cache = tmp_path_factory.mktemp("cgan_cache")
    old = {k: os.environ.get(k) for k in ("CGAN_BENCH_CACHE", "WANDB_MODE", "CGAN_BENCH_DATA")}
    os.environ["CGAN_BENCH_CACHE"] = str(cache)
    os.environ["CGAN_BENCH_DATA"] = str(cache / "datasets")
    os.environ["WANDB_MODE"] = "disabled"
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run `python -m cgan_bench ARGS` and return the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "cgan_bench", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, **(env or {})})


SMOKE = ["train=smoke", "eval=smoke", "eval.classifier_epochs=2"]
