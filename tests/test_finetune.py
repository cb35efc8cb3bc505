"""Classifier fine-tuning (train/finetune.py): the loss term, a child that continues its parent exactly, weight 0
as plain continued training, refusals of a bad parent, and the report's fine-tune section."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from cgan_bench.app import CONF_DIR, run_job
from cgan_bench.config import ConfigError
from cgan_bench.data import load_dataset
from cgan_bench.metrics.classifier import DomainClassifier
from cgan_bench.report.build import build_report
from cgan_bench.train.finetune import (ClassifierLoss, FromSignedImages, ParentRefused, read_parent,
                                       start_from_parent, user_classifier)
from cgan_bench.train.loop import Trainer, resume_relevant
from cgan_bench.train.run_dir import RunDir
from conftest import SMOKE, run_cli

PARENT_IT, FT_IT = 4, 3


def make_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("config", overrides=["wandb.mode=disabled", *SMOKE, *overrides])


def run(run_dir: Path, *overrides: str) -> dict:
    """One job in-process, with the .hydra/ files Hydra would write (the report and the parent check read them)."""
    cfg = make_cfg(*overrides)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")
    return run_job(cfg, run_dir)


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A smoke parent and two fine-tunes of it in one sweep folder: weight 0 (the control) and weight 0.5."""
    root = tmp_path_factory.mktemp("finetune")
    parent = root / "parent"
    run(parent, f"train.iterations={PARENT_IT}")
    children = {}
    for k, weight in enumerate(("0", "0.5")):
        children[weight] = root / "sweep" / f"{k}_digits_projection_s0"
        run(children[weight], f"finetune.parent={parent}", f"finetune.weight={weight}", f"finetune.iterations={FT_IT}")
    return parent, children


def test_classifier_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).requires_grad_(False)
    x = torch.randn(2, 3, 2, 2, requires_grad=True)
    y = torch.tensor([2, 0])
    loss = ClassifierLoss(classifier, 0.3)(x, y)
    W, b, flat = classifier[1].weight.tolist(), classifier[1].bias.tolist(), x.detach().reshape(2, 12).tolist()
    ce = []
    for i in range(2):
        logits = [sum(W[k][j] * flat[i][j] for j in range(12)) + b[k] for k in range(3)]
        ce.append(math.log(sum(math.exp(v) for v in logits)) - logits[y[i]])
    assert loss.item() == pytest.approx(0.3 * sum(ce) / 2, abs=1e-6)
    loss.backward()
    assert x.grad.abs().sum() > 0  # G's gradient flows through the frozen classifier ...
    assert all(p.grad is None for p in classifier.parameters())  # ... which never changes


def test_harness_classifiers_read_g_output_as_they_read_uint8_images():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DomainClassifier(10).eval()
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    signed = images.float() / 127.5 - 1.0  # G's [-1, 1] range
    assert torch.allclose(FromSignedImages(model)(signed), model(images)[1], atol=1e-5)


def test_the_child_starts_at_the_parents_iteration_with_its_weights(family, tmp_path):
    parent, children = family
    child = children["0.5"]
    status = json.loads((child / "status.json").read_text())
    assert status["state"] == "completed"
    assert status["iteration"] == status["total_iterations"] == PARENT_IT + FT_IT
    assert status["finetune_parent"] == str(parent) and status["finetune_parent_iteration"] == PARENT_IT
    assert status["finetune_classifier"].startswith("independent")
    records = lines(child)
    start = [r for r in records if r["phase"] == "finetune_start"]
    assert len(start) == 1 and start[0]["iteration"] == PARENT_IT and start[0]["finetune_parent"] == str(parent)
    train = [r for r in records if r["phase"] == "train"]
    assert [r["iteration"] for r in train] == list(range(PARENT_IT + 1, PARENT_IT + FT_IT + 1))
    assert all(r["g_extra_loss"] > 0 for r in train)  # the classifier term is in G's loss
    assert not any("g_extra_loss" in r for r in lines(children["0"]) if r["phase"] == "train")
    assert OmegaConf.load(child / ".hydra" / "config.yaml").finetune.parent == str(parent)

    # the state it starts from: the parent's final checkpoint, LR back at train.lr (the parent ended at 0)
    cfg = make_cfg(f"finetune.parent={parent}", "finetune.weight=0")
    found = read_parent(cfg, tmp_path / "child")
    trainer = Trainer(cfg, load_dataset("digits", "train", 16), RunDir(tmp_path / "child"), torch.device("cpu"))
    start_from_parent(trainer, found)
    saved = torch.load(parent / "checkpoints" / "last.pt", weights_only=True)
    assert trainer.iteration == PARENT_IT == saved["iteration"]
    assert all(torch.equal(v, saved["G"][k]) for k, v in trainer.G.state_dict().items())
    assert all(torch.equal(v, saved["D"][k]) for k, v in trainer.D.state_dict().items())
    assert saved["opt_g"]["param_groups"][0]["lr"] == 0.0
    assert trainer.opt_g.param_groups[0]["lr"] == trainer.opt_d.param_groups[0]["lr"] == cfg.train.lr


def test_weight_zero_is_plain_continued_training(family, tmp_path):
    """The control = the parent's checkpoint trained on by a stock Trainer with the documented LR (train.lr,
    linearly to 0 over the fine-tune) and nothing added to G's loss; a positive weight changes G."""
    parent, children = family
    cfg = make_cfg(f"train.iterations={PARENT_IT + FT_IT}")
    trainer = Trainer(cfg, load_dataset("digits", "train", 16), RunDir(tmp_path / "plain"), torch.device("cpu"))
    trainer.load_state_dict(torch.load(parent / "checkpoints" / "last.pt", weights_only=True))
    for name, opt in (("sched_g", trainer.opt_g), ("sched_d", trainer.opt_d)):
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = cfg.train.lr
        setattr(trainer, name, torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / FT_IT))
    trainer.fit()
    control = torch.load(children["0"] / "checkpoints" / "last.pt", weights_only=True)
    tuned = torch.load(children["0.5"] / "checkpoints" / "last.pt", weights_only=True)
    assert control["iteration"] == trainer.iteration == PARENT_IT + FT_IT
    for net, module in (("G", trainer.G), ("D", trainer.D)):
        for k, v in module.state_dict().items():
            assert torch.equal(v, control[net][k]), f"{net}.{k} differs"
    assert any(not torch.equal(v, tuned["G"][k]) for k, v in control["G"].items())


def test_a_bad_parent_is_refused_in_one_line(family, tmp_path):
    parent, _ = family
    running = tmp_path / "running"
    shutil.copytree(parent, running)
    status = json.loads((running / "status.json").read_text())
    (running / "status.json").write_text(json.dumps({**status, "state": "running", "iteration": 2}))
    child = tmp_path / "child"
    r = run_cli(*SMOKE, f"finetune.parent={running}", f"hydra.run.dir={child}")
    assert r.returncode == 2
    errors = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"error: finetune.parent={running} is not a completed run")
    assert json.loads((child / "status.json").read_text())["state"] == "failed"

    with pytest.raises(ParentRefused, match=r"head\.name: 'projection' -> 'concat'"):
        read_parent(make_cfg(f"finetune.parent={parent}", "head=concat"), tmp_path / "c2")
    no_checkpoint = tmp_path / "no_checkpoint"
    shutil.copytree(parent, no_checkpoint)
    shutil.rmtree(no_checkpoint / "checkpoints")
    with pytest.raises(ParentRefused, match="no final checkpoint"):
        read_parent(make_cfg(f"finetune.parent={no_checkpoint}"), tmp_path / "c3")
    with pytest.raises(ParentRefused, match="no such directory"):
        read_parent(make_cfg(f"finetune.parent={tmp_path / 'missing'}"), tmp_path / "c4")
    with pytest.raises(ConfigError, match="finetune.weight"):
        run_job(make_cfg(f"finetune.parent={parent}", "finetune.weight=-1"), tmp_path / "c5")


def test_fine_tune_settings_stay_out_of_ordinary_checkpoints():
    """Checkpoints of runs made before fine-tuning existed still resume: an ordinary run stores no finetune.*."""
    assert not any(k.startswith("finetune.") for k in resume_relevant(make_cfg()))
    assert resume_relevant(make_cfg("finetune.parent=somewhere"))["finetune.weight"] == 0.1


def test_a_user_classifier_file_is_loaded_and_checked(tmp_path):
    data = load_dataset("digits", "train", 16)
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)), good)
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 7))), bad)
    model = user_classifier(str(good), data, torch.device("cpu"))
    assert model(torch.zeros(5, 3, 16, 16)).shape == (5, 10)
    with pytest.raises(ConfigError, match=r"to \(2, 7\); it must return logits of shape \(N, 10\)"):
        user_classifier(str(bad), data, torch.device("cpu"))
    with pytest.raises(ConfigError, match="not independent, domain or an existing file"):
        user_classifier(str(tmp_path / "missing.pt"), data, torch.device("cpu"))


def test_the_report_of_a_fine_tune_sweep_has_its_section(family, tmp_path):
    parent, children = family
    report = build_report(children["0"].parent, tmp_path / "report", "finetune", link=False).read_text()
    assert "## Classifier fine-tuning" in report
    assert (tmp_path / "report" / "finetune_tradeoff.png").is_file()
    section = report.split("## Classifier fine-tuning")[1].split("\n## ")[0]
    rows = [[c.strip() for c in x.strip("|").split("|")] for x in section.splitlines() if x.startswith("|")]
    header, body = rows[0], rows[2:]
    assert [r[header.index("weight")] for r in body] == ["—", "0", "0.5"]
    assert body[0][header.index("run")] == f"parent ({parent.name})"
    for row, run_dir in zip(body, (parent, children["0"], children["0.5"])):
        final = [r for r in lines(run_dir) if r["phase"] == "final"][-1]
        assert row[header.index("class acc.")] == f"{final['class_accuracy']:.3f}"
        assert row[header.index("diversity ratio")] == f"{final['diversity_ratio_mean']:.3f}"
    assert "independent" in section and "Caution" not in section  # no `domain` fine-tune here


@pytest.mark.slow
def test_the_sweep_recipe_fine_tunes_a_parent_per_weight(family, tmp_path):
    parent, _ = family
    sweep = tmp_path / "sweep"
    r = run_cli("-m", "+sweep=finetune", *SMOKE, f"finetune.parent={parent}", "finetune.weight=0,1",
                "finetune.iterations=2", "finetune.classifier=domain", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    statuses = sorted((json.loads(p.read_text()) for p in sweep.glob("*/status.json")), key=lambda s: s["finetune_weight"])
    assert [(s["state"], s["iteration"], s["finetune_weight"]) for s in statuses] == \
        [("completed", PARENT_IT + 2, 0.0), ("completed", PARENT_IT + 2, 1.0)]
    report = (sweep / "report" / "report.md").read_text()
    assert "## Classifier fine-tuning" in report and "Caution" in report  # domain: accuracy by the tuned-against


def test_a_fine_tune_evaluates_its_own_curve_and_the_report_draws_it_from_the_parent(tmp_path):
    """finetune.curve_points=3 (the default) over 3 iterations: a curve evaluation every iteration, whatever the
    parent's eval.every (2); the report's figure starts each weight's line at the parent's curve point at its
    last iteration (its earlier one, at 2, is no start)."""
    from cgan_bench.report.finetune import fine_tune_curves, finetune_rows
    from cgan_bench.report.collect import load_sweep
    parent = tmp_path / "parent"
    run(parent, f"train.iterations={PARENT_IT}", "eval.every=2", "eval.best_metric=fid")  # a curve point at 4 too
    sweep = tmp_path / "sweep"
    for k, weight in enumerate(("0", "0.5")):
        run(sweep / f"{k}_digits_projection_s0", f"finetune.parent={parent}", f"finetune.weight={weight}",
            f"finetune.iterations={FT_IT}", "eval.every=2")
    curve_its = {d.name: [r["iteration"] for r in lines(d) if r["phase"] == "curve"] for d in sweep.iterdir()}
    # every 3 // 3 = 1 iteration from the parent's 4; iteration 7, the last, has the final evaluation instead
    # (a curve one too only where eval.best_metric keeps a best checkpoint, not in eval=smoke)
    assert set(map(tuple, curve_its.values())) == {(5, 6)}

    report = build_report(sweep, tmp_path / "report", "ft", link=False).read_text()
    assert "![finetune curves](finetune_curves.png)" in report
    assert (tmp_path / "report" / "finetune_curves.png").is_file()
    frames = load_sweep(sweep)
    c = fine_tune_curves(finetune_rows(frames.runs.assign(state="completed")), frames.curves)
    parent_fid = [r["fid"] for r in lines(parent) if r["phase"] == "curve" and r["iteration"] == PARENT_IT]
    for k, weight in enumerate((0.0, 0.5)):
        line = c[c["weight"] == weight].sort_values("iteration")
        child = {r["iteration"]: r["fid"] for r in lines(sweep / f"{k}_digits_projection_s0") if r["phase"] == "curve"}
        assert line["iteration"].tolist() == [PARENT_IT, 5, 6]
        assert line["origin"].tolist() == [True, False, False]
        assert line["fid"].tolist() == pytest.approx(parent_fid + [child[i] for i in (5, 6)])


@pytest.mark.parametrize("points", [0, -1, 1.5, "'three'"])
def test_curve_points_that_are_not_a_positive_integer_are_refused(points):
    from cgan_bench.config import validate
    with pytest.raises(ConfigError, match=r"finetune.curve_points=.* is not allowed: null \(= keep eval.every\)"):
        validate(make_cfg(f"finetune.curve_points={points}"))
    validate(make_cfg(f"finetune.iterations={FT_IT}", f"finetune.curve_points={FT_IT + 5}"))  # one every iteration


def test_a_fine_tune_with_another_train_recipe_than_its_parent_says_so(family, tmp_path, caplog):
    """Allowed (a deliberate choice is possible) but never silent: a smoke parent fine-tuned under train=quick
    would switch batch, n_dis and precision without a word."""
    parent, _ = family
    with caplog.at_level("WARNING", logger="cgan_bench"):
        read_parent(make_cfg(f"finetune.parent={parent}"), tmp_path / "same")
    assert "other train settings" not in caplog.text  # the parent's own recipe: no warning
    with caplog.at_level("WARNING", logger="cgan_bench"):
        read_parent(make_cfg(f"finetune.parent={parent}", "train.n_dis=3", "train.batch_d=32"), tmp_path / "other")
    warned = [r.getMessage() for r in caplog.records if "other train settings" in r.getMessage()]
    assert len(warned) == 1 and "train.n_dis: 1 -> 3" in warned[0] and "train.batch_d: 16 -> 32" in warned[0]
