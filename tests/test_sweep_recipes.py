"""Every sweep recipe in sweeps/ composes, for every value it sweeps, into a config the harness accepts and
whose models build: a recipe that only fails when its sweep reaches job 7 costs hours."""
import itertools
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from cgan_bench.app import CONF_DIR
from cgan_bench.config import check_known_keys, validate
from cgan_bench.train.loop import build_models

SWEEPS = sorted(p.stem for p in (Path(CONF_DIR) / "sweep").glob("*.yaml"))
N_CLASSES = {"digits": 10, "stacked_digits": 10, "cifar10": 10, "cifar100": 100}
# What the recipe's header says to add on the command line (ImageNet's folder is the user's).
# what a recipe's documented command line adds (its own header says so); without it the recipe is refused
COMMAND_LINE = {"paper_imagenet": ["dataset.path=/data/imagenet"], "finetune": ["finetune.parent=runs/a_run"]}


def swept_jobs(name: str) -> list[list[str]]:
    """The job overrides of a recipe: the cartesian product of its hydra.sweeper.params."""
    recipe = yaml.safe_load((Path(CONF_DIR) / "sweep" / f"{name}.yaml").read_text())
    params = recipe["hydra"]["sweeper"]["params"]
    keys = list(params)
    values = [str(params[k]).split(",") for k in keys]
    return [[f"{k}={v.strip()}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]


def test_every_recipe_is_found():
    assert {"digits", "stacked", "paper_cifar", "hparams", "heads_extended", "concat_stage", "finetune", "paper_imagenet"} <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_recipe_composes_for_every_swept_value(name):
    jobs = swept_jobs(name)
    assert jobs, f"{name} sweeps nothing"
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        for job in jobs:
            cfg = compose("config", overrides=["wandb.mode=disabled", f"+sweep={name}", *job,
                                               *COMMAND_LINE.get(name, [])])
            validate(cfg)
            check_known_keys(cfg)
            assert cfg.sweep_name == name
            for override in job:  # the swept value really reached the job's config
                key, _, value = override.lstrip("+").partition("=")
                if key in ("head", "dataset"):
                    assert cfg[key].name == value
                elif key == "head.stage":
                    assert cfg.head.stage == int(value)


def test_concat_stage_recipe_builds_each_stage_and_they_differ():
    """The stages swept on digits are the ones the 16px trunk allows, and each puts the label elsewhere."""
    jobs = swept_jobs("concat_stage")
    stages = set()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        for job in jobs:
            cfg = compose("config", overrides=["wandb.mode=disabled", "+sweep=concat_stage", *job])
            _, D = build_models(cfg, N_CLASSES[cfg.dataset.name], "cpu")
            widened = [i for i, b in enumerate(D.blocks) if i > 0 and b.conv1.in_channels != cfg.model.d_ch]
            assert widened == [cfg.head.stage]
            stages.add(cfg.head.stage)
    assert stages == {1, 2}
