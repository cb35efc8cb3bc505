"""User configs the Hydra way: `--config-dir DIR` and `hydra.searchpath=[...]` add datasets, recipes, experiments
(config groups of the user's own); the one-line checks before Hydra read the same folders as Hydra's loader."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import SMOKE, run_cli
from cgan_bench.app import CONF_DIR
from cgan_bench.config import (ConfigError, check_group_overrides, check_key_overrides, check_known_keys,
                               known_keys, user_config_dirs)

MYDIGITS = """\
# @package _global_
# digits under another name: a user's dataset that picks its own model/train/eval like conf/dataset/digits.yaml
defaults:
  - override /model: small
  - override /train: quick
  - override /eval: quick
dataset:
  name: digits
  resolution: 16
  feature_space: classifier
"""

FAST = """\
# @package _global_
train:
  iterations: 2
"""


@pytest.fixture
def myconf(tmp_path) -> Path:
    conf = tmp_path / "myconf"
    (conf / "dataset").mkdir(parents=True)
    (conf / "dataset" / "mydigits.yaml").write_text(MYDIGITS)
    (conf / "dataset" / "mykeys.yaml").write_text(MYDIGITS + "  my_key: 3\n")  # a key of the user's own
    (conf / "experiment").mkdir()
    (conf / "experiment" / "fast.yaml").write_text(FAST)  # a config group of the user's own
    return conf


def datasets(*extra: str) -> str:
    """The packaged dataset options plus the user's, as the one-line error lists them."""
    return ", ".join(sorted([p.stem for p in (Path(CONF_DIR) / "dataset").glob("*.yaml")] + list(extra)))


def check(*argv: str) -> None:
    check_group_overrides(list(argv), Path(CONF_DIR))
    check_key_overrides(list(argv), Path(CONF_DIR))


def refusal(*argv: str) -> str:
    with pytest.raises(ConfigError) as err:
        check(*argv)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_the_pre_hydra_checks_see_config_dir_and_searchpath(myconf, monkeypatch):
    assert refusal("dataset=mydigits") == \
        f"dataset=mydigits is not allowed: choose one of {datasets()} (did you mean dataset=digits?)"
    for way in (["--config-dir", str(myconf)], [f"--config-dir={myconf}"], ["-cd", str(myconf)],
                [f"hydra.searchpath=[file://{myconf}]"], [f"hydra.searchpath=[{myconf}]"]):
        check(*way, "dataset=mydigits")
        check(*way, "dataset=mykeys", "dataset.my_key=4", "+experiment=fast")
        message = refusal(*way, "dataset=mydigitz")
        assert message == f"dataset=mydigitz is not allowed: choose one of {datasets('mydigits', 'mykeys')} " \
            "(did you mean dataset=mydigits?)"
        assert refusal(*way, "+experiment=slow") == "experiment=slow is not allowed: choose one of fast"
        assert "did you mean dataset.my_key?" in refusal(*way, "+dataset.my_kee=1")
    monkeypatch.chdir(myconf.parent)  # relative paths are read from the working directory, as Hydra does
    check("hydra.searchpath=[file://myconf]", "dataset=mydigits")
    check("-cd", "myconf", "dataset=mydigits")
    assert refusal("-cd", "nope", "dataset=mydigits") == "--config-dir=nope is not allowed: no such folder"
    assert "dataset.my_key=4 is not allowed" in refusal("dataset.my_key=4")  # nobody else defines it
    # pkg:// entries are read where the module imports; +hydra.searchpath is not Hydra's search path
    assert user_config_dirs(["hydra.searchpath=[pkg://cgan_bench.conf]"]) == [Path(CONF_DIR)]
    assert user_config_dirs(["+hydra.searchpath=[myconf]"]) == []


def test_keys_of_a_users_dataset_are_known_to_validate(myconf):
    roots = (CONF_DIR, str(myconf))
    assert "dataset.my_key" in known_keys(roots) and "dataset.my_key" not in known_keys(CONF_DIR)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["wandb.mode=disabled", "+dataset.my_key=3"])
    check_known_keys(cfg, roots)
    with pytest.raises(ConfigError, match="dataset.my_key=3 is not allowed"):
        check_known_keys(cfg, (CONF_DIR,))


def completed(run_dir: Path) -> None:
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed", status
    assert "dataset: mydigits" in (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]["phase"] == "final"


@pytest.mark.slow
def test_config_dir_with_a_users_dataset_runs(myconf, tmp_path):
    r = run_cli("--config-dir", str(myconf), "dataset=mydigits", *SMOKE, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    completed(tmp_path / "run")


@pytest.mark.slow
def test_searchpath_with_a_users_dataset_and_key_runs(myconf, tmp_path):
    """hydra.searchpath, a key only the user's yaml defines (known inside the job's validate too)."""
    r = run_cli(f"hydra.searchpath=[file://{myconf}]", "dataset=mykeys", "dataset.my_key=5", *SMOKE,
                f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "completed", status


@pytest.mark.slow
def test_an_unknown_option_is_one_line_listing_the_users_options(myconf, tmp_path):
    for way in (["--config-dir", str(myconf)], [f"hydra.searchpath=[file://{myconf}]"]):
        r = run_cli(*way, "dataset=nope", *SMOKE, f"hydra.run.dir={tmp_path / 'run'}")
        assert r.returncode == 2, r.stderr[-3000:]
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert lines == [f"error: dataset=nope is not allowed: choose one of {datasets('mydigits', 'mykeys')}"], \
            r.stderr[-3000:]
        assert not (tmp_path / "run").exists()
