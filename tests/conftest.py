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


class sweep_config:
    """The config Hydra composes for `python -m cgan_bench -m OVERRIDES` (as a multirun callback receives it),
    with Hydra initialised on our config folder while the block runs."""

    def __init__(self, *overrides: str):
        self.overrides = list(overrides)

    def __enter__(self):
        from hydra import initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.types import RunMode
        from cgan_bench.cli_help import CONF_DIR
        self.context = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
        self.context.__enter__()
        return GlobalHydra.instance().config_loader().load_configuration(
            config_name="config", overrides=self.overrides, run_mode=RunMode.MULTIRUN)

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


def sweep_folders(*overrides: str) -> list[Path]:
    """The run folder of each job of `python -m cgan_bench -m OVERRIDES`, in launch order, as the sweep check
    composes them (a job's folder is named by its settings; long ones end in a hash)."""
    from cgan_bench.sweep_check import check_jobs, sweep_jobs
    with sweep_config(*overrides) as cfg:
        return [job.folder for job in check_jobs(cfg, sweep_jobs(cfg))[1]]
