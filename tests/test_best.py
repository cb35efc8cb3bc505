"""Best-checkpoint scoring (eval.best_metric): curve evaluations forced to a known sequence in-process, then
checkpoints/best.pt must be the peak's generator, evaluated with the final protocol as phase "best"; its score
survives resume; a best at the final iteration repeats the final numbers; the report shows final and best in
separate columns and leaves runs without a best line out."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cgan_bench.app import CONF_DIR, run_job
from cgan_bench.bench import synthetic_data
from cgan_bench.config import ConfigError, validate
from cgan_bench.data import load_dataset
from cgan_bench.generator_api import load_generator
from cgan_bench.metrics.evaluator import Evaluator
from cgan_bench.report.build import build_report
from cgan_bench.report.tables import HIGHER_BETTER, LOWER_BETTER
from cgan_bench.train.checkpoint import BEST_DIRECTION, is_better
from cgan_bench.train.loop import Trainer
from cgan_bench.train.run_dir import RunDir
from conftest import SMOKE
from test_verdicts import table, write_run

BEST = ["eval.every=1", "eval.best_metric=fid"]
PEAK = {1: 50.0, 2: 40.0, 3: 10.0, 4: 30.0, 5: 20.0, 6: 60.0}  # the curve's FID: best (lowest) at iteration 3
AFTER_RESUME = {7: 15.0, 8: 12.0}  # better than all but the peak: a resumed run that forgot it would take 7
RISING = {1: 30.0, 2: 20.0, 3: 10.0}  # the best is the final generator


def make_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("config", overrides=["wandb.mode=disabled", "device=cpu", *SMOKE, *overrides])


def run(run_dir: Path, scores: dict[int, float], *overrides: str) -> tuple[dict, dict, list]:
    """One job in-process (with the .hydra/ files the report reads) whose curve evaluations run for real but
    return scores[iteration] as their FID. Returns (G's weights at each curve evaluation, the final metrics,
    the evaluators used)."""
    weights, evaluators = {}, []
    real_evaluate = Evaluator.evaluate

    def evaluate(self, G, iteration, phase, stop=None, extra=None):
        record = real_evaluate(self, G, iteration, phase, stop, extra)
        evaluators.append(self)
        if phase == "curve":
            weights[iteration] = {k: v.detach().clone() for k, v in G.state_dict().items()}
            record = {**record, "fid": scores[iteration]}
        return record

    cfg = make_cfg(*overrides)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Evaluator, "evaluate", evaluate)
        final = run_job(cfg, run_dir)
    return weights, final, evaluators


def lines(run_dir: Path, phase: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["phase"] == phase]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


@pytest.fixture(scope="module")
def peak(tmp_path_factory):
    """A run whose curve peaks at iteration 3 of 6 (copied aside), then the same directory resumed to 8."""
    root = tmp_path_factory.mktemp("best")
    run_dir = root / "sweep" / "peak"
    weights, final, evaluators = run(run_dir, PEAK, "train.iterations=6", *BEST)
    first = root / "first"
    shutil.copytree(run_dir, first)
    resumed_weights, _, _ = run(run_dir, AFTER_RESUME, "train.iterations=8", *BEST)
    return {"dir": first, "weights": weights, "final": final, "evaluator": evaluators[-1], "resumed": run_dir,
            "resumed_weights": resumed_weights, "root": root}


@pytest.fixture(scope="module")
def rising(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("best_final") / "rising"
    run(run_dir, RISING, "train.iterations=3", *BEST)
    return run_dir


# ---- the direction table and the config -------------------------------------------------------------------
def test_every_best_metric_has_the_reports_direction():
    for metric, direction in BEST_DIRECTION.items():
        assert metric in (LOWER_BETTER if direction == "lower" else HIGHER_BETTER), metric


def test_is_better_follows_the_direction_keeps_ties_and_never_takes_nan():
    assert is_better("fid", 10.0, None) and is_better("fid", 9.0, 10.0) and not is_better("fid", 11.0, 10.0)
    assert is_better("is_mean", 9.0, 8.0) and not is_better("is_mean", 7.0, 8.0)
    assert not is_better("fid", 10.0, 10.0)  # a tie keeps the earlier checkpoint
    assert not is_better("fid", float("nan"), None) and not is_better("fid", None, None)


@pytest.mark.parametrize("value, message", [
    ("nope", "eval.best_metric='nope' is not allowed: null (keep no best checkpoint) or one of fid, intra_fid_mean"),
    ("modes_covered_mean", "eval.best_metric='modes_covered_mean' is not allowed: mode counts exist only with "
                           "eval.feature_space=digit_channels"),
])
def test_unknown_best_metric_is_refused_in_one_line(value, message):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(f"eval.best_metric={value}"))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_best_metric_null_keeps_no_best_and_adds_no_final_curve_point(tmp_path):
    cfg = make_cfg("eval.every=1")
    assert cfg.eval.best_metric is None and make_cfg().eval.best_metric is None  # smoke: off
    trainer = Trainer(cfg, synthetic_data(10, 16, torch.device("cpu"), n=64), RunDir(tmp_path), torch.device("cpu"))
    trainer.evaluator = type("E", (), {"every": 1})()
    assert trainer.best is None and trainer.curve_due(1, final=False) and not trainer.curve_due(2, final=True)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        assert compose("config", overrides=["eval=paper"]).eval.best_metric == "fid"  # on in real protocols


# ---- the acceptance test: a curve that peaks early -------------------------------------------------------
@pytest.mark.slow
def test_best_checkpoint_is_the_peak_generator(peak):
    best = torch.load(peak["dir"] / "checkpoints" / "best.pt", weights_only=True)
    assert (best["iteration"], best["metric"], best["score"]) == (3, "fid", 10.0)
    assert same_weights(best["G"], peak["weights"][3])
    last = torch.load(peak["dir"] / "checkpoints" / "last.pt", weights_only=True)
    assert last["iteration"] == 6 and not same_weights(best["G"], last["G"])
    assert last["best"] == {"metric": "fid", "score": 10.0, "iteration": 3, "since": 0}
    assert sorted(peak["weights"]) == [1, 2, 3, 4, 5, 6]  # the final generator was a candidate too


@pytest.mark.slow
def test_best_line_is_the_final_protocol_on_the_peak_generator(peak, tmp_path):
    run_dir = peak["dir"]
    [final], [best] = lines(run_dir, "final"), lines(run_dir, "best")
    assert (best["iteration"], best["best_iteration"], best["best_metric"], best["best_curve_score"]) == \
        (6, 3, "fid", 10.0)
    assert best["best_is_final"] is False and best["best_since"] == 0
    for key in ("n_generated", "n_fake", "n_real", "real_split", "isc_splits", "feature_space"):
        assert best[key] == final[key], key
    assert best["n_generated"] == 100 and lines(run_dir, "curve")[0]["n_generated"] == 50  # not the curve's sizes
    assert best["fid"] != final["fid"]
    # the same generator evaluated again, independently of the run: loaded from best.pt by the public API
    gen = load_generator(run_dir, checkpoint=str(run_dir / "checkpoints" / "best.pt"))
    evaluator = peak["evaluator"]
    evaluator.run = RunDir(tmp_path / "check")
    again = evaluator.evaluate(gen.G, 3, "check")
    for key in ("fid", "is_mean", "intra_fid_mean", "kid_mean", "class_accuracy", "precision", "recall"):
        assert best[key] == pytest.approx(again[key], rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_best_per_class_rows_are_kept_apart(peak):
    run_dir = peak["dir"]
    [final], [best] = lines(run_dir, "final"), lines(run_dir, "best")
    final_rows, best_rows = pd.read_csv(run_dir / "per_class.csv"), pd.read_csv(run_dir / "per_class_best.csv")
    assert len(final_rows) == len(best_rows) == 10
    assert final_rows["intra_fid"].mean() == pytest.approx(final["intra_fid_mean"])
    assert best_rows["intra_fid"].mean() == pytest.approx(best["intra_fid_mean"])
    assert not final_rows["intra_fid"].equals(best_rows["intra_fid"])


@pytest.mark.slow
def test_a_resumed_run_keeps_the_better_best(peak):
    run_dir = peak["resumed"]
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert (best["iteration"], best["score"]) == (3, 10.0)  # 12 and 15 after the resume are worse than 10
    assert same_weights(best["G"], peak["weights"][3])
    assert sorted(peak["resumed_weights"]) == [7, 8]
    [final], [line] = lines(run_dir, "final"), lines(run_dir, "best")  # the first attempt's lines were dropped
    assert final["iteration"] == 8 and (line["iteration"], line["best_iteration"]) == (8, 3)


@pytest.mark.slow
def test_best_at_the_final_iteration_repeats_the_final_numbers(rising):
    best = torch.load(rising / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(rising / "checkpoints" / "last.pt", weights_only=True)
    assert best["iteration"] == last["iteration"] == 3 and same_weights(best["G"], last["G"])
    [final], [line] = lines(rising, "final"), lines(rising, "best")
    assert line["best_is_final"] is True and line["best_iteration"] == line["iteration"] == 3
    assert {k: v for k, v in line.items() if not k.startswith("best") and k != "phase"} == \
        {k: v for k, v in final.items() if k != "phase"}
    assert (rising / "per_class_best.csv").read_text() == (rising / "per_class.csv").read_text()


@pytest.mark.slow
def test_resume_mends_a_kill_between_last_and_best_and_old_checkpoints(rising, tmp_path):
    """last.pt is written before best.pt: with best.pt lost, resuming rewrites it from last.pt's G. A checkpoint
    without a best (before best.pt existed) starts the choice at its iteration, with a warning."""
    copy = tmp_path / "rising"
    shutil.copytree(rising, copy)
    (copy / "checkpoints" / "best.pt").unlink()
    cfg = make_cfg("train.iterations=3", *BEST)
    data = load_dataset("digits", "train", 16)
    trainer = Trainer(cfg, data, RunDir(copy), torch.device("cpu"))
    assert trainer.resume() and trainer.best["iteration"] == 3
    best = torch.load(copy / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(copy / "checkpoints" / "last.pt", weights_only=True)
    assert best["iteration"] == 3 and same_weights(best["G"], last["G"])

    del last["best"]
    torch.save(last, copy / "checkpoints" / "last.pt")
    trainer = Trainer(cfg, data, RunDir(copy), torch.device("cpu"))
    with pytest.warns(UserWarning, match="from iteration 3 on"):
        trainer.resume()
    assert trainer.best == {"metric": "fid", "score": None, "iteration": None, "since": 3}


# ---- the report -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_of_a_real_run_shows_its_best_beside_its_final(peak):
    report = build_report(peak["root"] / "sweep", peak["root"] / "report", "peak").read_text()
    t = table(report, "Best checkpoint vs final")
    [final], [best] = lines(peak["resumed"], "final"), lines(peak["resumed"], "best")
    assert list(t["head"]) == ["projection"] and t["chosen by (curve)"][0] == "fid"
    assert (t["best iteration"][0], t["of"][0], t["best = final"][0]) == ("3", "8", "0 of 1")
    assert (t["FID final"][0], t["FID best"][0]) == (f"{final['fid']:.2f}", f"{best['fid']:.2f}")
    assert (t["IS final"][0], t["IS best"][0]) == (f"{final['is_mean']:.3f}", f"{best['is_mean']:.3f}")


def test_report_shows_best_beside_final_and_omits_runs_without_one(tmp_path):
    sweep = tmp_path / "sweep"
    for head in ("projection", "concat"):
        for seed in (0, 1):
            write_run(sweep, head, seed)  # run directories from before best checkpoints: no best line
    for seed, (fid, it) in enumerate([(80.0, 4), (90.0, 6)]):
        run_dir = sweep / f"projection_s{seed}"
        [final] = lines(run_dir, "final")
        best = {**final, "phase": "best", "fid": fid, "is_mean": 9.0 + seed, "best_iteration": it,
                "best_metric": "fid", "best_curve_score": fid + 1, "best_since": 0, "best_is_final": False}
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(best) + "\n")
    report = build_report(sweep, tmp_path / "report", "best test").read_text()
    t = table(report, "Best checkpoint vs final")
    assert list(t["head"]) == ["projection"] and t["seeds"].tolist() == ["2"]  # concat kept no best checkpoint
    finals = [lines(sweep / f"projection_s{s}", "final")[0]["fid"] for s in (0, 1)]
    assert t["FID best"][0] == f"{85.0:.2f} ± {pd.Series([80.0, 90.0]).std():.2f}"
    assert t["FID final"][0] == f"{pd.Series(finals).mean():.2f} ± {pd.Series(finals).std():.2f}"
    assert t["best iteration"][0] == "5 ± 1" and t["best = final"][0] == "0 of 2" and t["of"][0] == "10"
    main = report.split("## Main table")[1].split("\n## ")[0]  # the final generator's numbers only
    assert f"{pd.Series(finals).mean():.2f}" in main and "85.00" not in main

    old = tmp_path / "old"
    write_run(old, "projection", 0)
    assert "Best checkpoint vs final" not in build_report(old, tmp_path / "old_report", "old").read_text()
