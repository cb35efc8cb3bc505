"""pyproject.toml states ranges (torch>=2.9, ...) so that a cluster's own PyTorch build is kept; constraints.txt pins
what the reports used. This checks the ranges for real: pip's resolver, in a dry run against the package index,
accepts the package beside a torch older than the pinned one. Nothing is installed (--dry-run --report)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# Older than constraints.txt's pin, inside pyproject's range. 2.13.0: a CPU build of it lies on this project's
# machines (pip's find-links), so the dry run does not fetch a multi-GB CUDA wheel and its nvidia-* dependencies
# only to read their metadata (pip downloads the wheels it considers, even in a dry run).
OTHER_TORCH = "2.13.0"
# Not part of the package (or rebuilt by pip): left out of the copy pip builds from.
NOT_SOURCE = (".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "multirun", "outputs",
              "wandb", "reports", "tests")


def pinned(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==")[1].strip()
    raise AssertionError(f"constraints.txt pins no {name}")


@pytest.mark.slow
def test_package_resolves_with_an_older_torch_than_the_pinned_one(tmp_path):
    assert OTHER_TORCH != pinned("torch")
    # pip builds the project's metadata in the folder it is given (egg-info): a copy, so the checkout stays as is
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--no-input", "--cache-dir", str(tmp_path / "pip-cache"), "--report", str(report),
                        str(source), f"torch=={OTHER_TORCH}"],
                       capture_output=True, text=True, timeout=3000)
    if r.returncode != 0:
        pytest.fail(f"pip could not resolve cgan-bench with torch=={OTHER_TORCH} (this test needs the package index, "
                    f"PyPI; a resolver conflict means pyproject.toml's ranges exclude that torch):\n{r.stderr[-3000:]}")
    install = {item["metadata"]["name"].lower(): item["metadata"] for item in json.loads(report.read_text())["install"]}
    assert "cgan-bench" in install
    assert install["torch"]["version"].split("+")[0] == OTHER_TORCH  # `+cpu`: a local build label, same release
    # the torchvision picked is one built for that torch (its metadata asks for it), not the pinned one
    requires = [Requirement(text) for text in install["torchvision"].get("requires_dist", [])]
    torch_req = next(req for req in requires if req.name == "torch")
    assert torch_req.specifier.contains(install["torch"]["version"].split("+")[0]), torch_req
    assert install["torchvision"]["version"] != pinned("torchvision")
