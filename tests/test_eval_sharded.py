"""Evaluation sharded across ranks (metrics/evaluator.py, train/distributed.py) and the per-class intra-FID mode
(metrics/class_stats.py): 2 gloo ranks give one process's record; per-class intra-FID against an independent
numpy/scipy FID; the class-statistics cache (one file per class, a killed build resumed, a class subset, a
streamed store)."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from torch import nn

from cgan_bench.app import CONF_DIR
from cgan_bench.bench import synthetic_data
from cgan_bench.config import ConfigError, check_against_data, validate
from cgan_bench.data import load_dataset
from cgan_bench.metrics import class_stats
from cgan_bench.metrics.class_stats import ClassStats, class_noise
from cgan_bench.metrics.evaluator import EvaluationStopped, Evaluator
from cgan_bench.metrics.feature_space import FeatureSpace
from cgan_bench.models import Generator
from cgan_bench.train import distributed
from cgan_bench.train.run_dir import RunDir
from cgan_bench.train.samples import to_uint8
from conftest import SMOKE
from test_distributed import free_port, gloo_group
from test_image_store import R as STORE_R
from test_image_store import expected, make_tree
from test_metrics import np_fid

CPU = torch.device("cpu")
N_CLASSES, RES, Z = 5, 16, 16
K = 40  # generated per class in the per-class mode (> the 12 feature dimensions: full-rank covariances)
# 21 per class -> 105 images: shares of 52 and 53 on 2 ranks, batches of 16 (uneven last batches)
EVAL = ["eval.n_generated=105", "eval.n_fake=100", "eval.isc_splits=3", "eval.batch_size=16",
        "eval.diversity_pairs_max=30"]


class PoolFeatures(nn.Module):
    """uint8 images -> (8x8-pooled pixels: 12 features, their first 5 as logits), deterministic."""

    def forward(self, x):
        f = nn.functional.avg_pool2d(x.float(), 8).flatten(1) / 255.0
        return f, f[:, :N_CLASSES]


def space() -> FeatureSpace:
    return FeatureSpace("pool", "pool-v1", PoolFeatures())  # classify=None: class accuracy via the fitted probe


def eval_cfg(cache, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["eval=smoke", f"eval.cache_dir={cache}", *EVAL, *overrides])
    return cfg.eval


def generator() -> Generator:
    torch.manual_seed(0)  # the same weights on every rank
    G = Generator(N_CLASSES, RES, 16, Z)
    with torch.no_grad():  # non-trivial batch-norm statistics: rank 0's must be the ones every rank uses
        for name, b in G.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return G


def real_data():
    return synthetic_data(N_CLASSES, RES, CPU, n=400)


def evaluate_both(out, cache, stop=None):
    """A pooled and a per-class final evaluation of the same G; the records."""
    G = generator()
    if distributed.rank() == 1:  # a rank whose batch norm drifted: the evaluation must use rank 0's buffers
        for name, b in G.named_buffers():
            if name.endswith("running_mean"):
                b.add_(1.0)
    records = {}
    for mode, extra in (("pooled", []), ("per_class", [f"eval.intra_fid_per_class={K}"])):
        run = RunDir(out / mode) if distributed.is_main() else None
        ev = Evaluator(eval_cfg(cache, *extra), space(), real_data(), run, CPU, Z, seed=3)
        records[mode] = ev.evaluate(G, 7, "final")
        if mode == "per_class":
            calls = []

            def stop_on_rank_1():  # a signal on one rank only, after a few batches
                calls.append(1)
                return distributed.rank() == 1 and len(calls) >= 5

            try:
                ev.evaluate(G, 8, "final", stop=stop_on_rank_1)
                records["stopped"] = False
            except EvaluationStopped:
                records["stopped"] = len(calls)
    return records


def _rank(rank: int, world: int, port: int, out: str) -> None:
    with gloo_group(rank, world, port):
        records = evaluate_both(Path(out) / "ranks", Path(out) / "cache2")
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(records))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_ranks")
    mp.spawn(_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank of the 2-rank fixture runs; restored for the tests after this module
    try:
        yield out, evaluate_both(out / "one", out / "cache1")
    finally:
        torch.set_num_threads(threads)


KEYS = ["fid", "is_mean", "is_std", "kid_mean", "intra_fid_mean", "class_accuracy", "diversity_ratio_mean",
        "floor_fid"]


@pytest.mark.parametrize("mode", ["pooled", "per_class"])
@pytest.mark.slow  # the 2-rank fixture spawns 2 processes (~30 s)
def test_two_ranks_give_the_record_of_one_process(two_ranks, one_process, mode):
    (out2, (rank0, rank1)), (out1, one) = two_ranks, one_process
    assert rank0[mode] == rank1[mode]  # every rank returns rank 0's record
    for key in KEYS:
        assert rank0[mode][key] == pytest.approx(one[mode][key], rel=1e-4, abs=1e-6), key
    assert rank0[mode]["eval_ranks"] == 2 and one[mode]["eval_ranks"] == 1
    assert rank0[mode]["n_generated"] == one[mode]["n_generated"] == 105
    two_rows = pd.read_csv(out2 / "ranks" / mode / "per_class.csv")
    one_rows = pd.read_csv(out1 / "one" / mode / "per_class.csv")
    assert list(two_rows["class"]) == list(one_rows["class"]) == list(range(N_CLASSES))
    np.testing.assert_allclose(two_rows["intra_fid"], one_rows["intra_fid"], rtol=1e-4)
    np.testing.assert_allclose(two_rows["accuracy"], one_rows["accuracy"])
    lines = (out2 / "ranks" / mode / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # rank 0 alone wrote (the stopped evaluation wrote nothing)


@pytest.mark.slow  # the 2-rank fixture spawns 2 processes (~30 s)
def test_a_stop_on_one_rank_stops_every_rank(two_ranks):
    _, (rank0, rank1) = two_ranks
    assert rank0["stopped"] and rank1["stopped"]  # both raised EvaluationStopped
    assert rank1["stopped"] == 5 and rank0["stopped"] == 5  # at the same batch


@pytest.mark.slow  # the 2-rank fixture spawns 2 processes (~30 s)
def test_two_ranks_build_one_class_statistics_file_per_class(two_ranks):
    out, _ = two_ranks
    folders = list((out / "cache2" / "class_stats").iterdir())
    assert len(folders) == 1
    assert sorted(p.name for p in folders[0].glob("*.pt")) == [f"class_{c:05d}.pt" for c in range(N_CLASSES)]


# ---- the per-class mode on one process ----------------------------------------------------------------------

def features_of(images: torch.Tensor) -> np.ndarray:
    return PoolFeatures()(images)[0].double().numpy()


def test_per_class_intra_fid_matches_an_independent_fid(tmp_path):
    real = real_data()
    ev = Evaluator(eval_cfg(tmp_path / "cache", f"eval.intra_fid_per_class={K}", "eval.n_real=200"), space(), real,
                   RunDir(tmp_path / "run"), CPU, Z, seed=3)
    G = generator().eval()
    record = ev.evaluate(G, 1, "final")
    rows = pd.read_csv(tmp_path / "run" / "per_class.csv")
    pooled_columns = ["class", "intra_fid", "diversity_ratio", "near_duplicate_rate", "class_coverage", "accuracy",
                      "collapsed", "n_generated", "n_real"]  # per_class.csv's contract, the same in both modes
    assert list(rows.columns[:len(pooled_columns)]) == pooled_columns
    for c in range(N_CLASSES):
        with torch.no_grad():
            z = class_noise(3, c, K, Z, CPU)
            gen = features_of(to_uint8(G(z, torch.full((K,), c))))
        ours = features_of(real.images[real.labels == c])
        assert rows.loc[c, "intra_fid"] == pytest.approx(np_fid(gen, ours), rel=1e-5), c
        assert rows.loc[c, "n_real"] == int((real.labels == c).sum()) and rows.loc[c, "n_generated"] == K
    assert record["intra_fid_mean"] == pytest.approx(rows["intra_fid"].mean())
    assert record["intra_fid_mode"] == "per_class" and record["intra_fid_generated_per_class"] == K
    assert record["intra_fid_classes"] == N_CLASSES
    assert record["intra_fid_real_per_class_min"] == int(torch.bincount(real.labels).min())
    # the overall reference holds only n_real + n_fake features; FID against the pooled path's seeded subset
    assert ev.real_features is None and len(ev.fid_real) == 200
    [ref_file] = (tmp_path / "cache" / "reference").glob("*first300*.pt")
    assert len(torch.load(ref_file, weights_only=True)["features"]) == 300
    pooled = Evaluator(eval_cfg(tmp_path / "cache", "eval.n_real=200"), space(), real, RunDir(tmp_path / "pooled"),
                       CPU, Z, seed=3)
    assert torch.equal(pooled.fid_real, ev.fid_real)
    # the cache: one file per class, holding that class's statistics
    folder = next((tmp_path / "cache" / "class_stats").iterdir())
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".pt") == \
        [f"class_{c:05d}.pt" for c in range(N_CLASSES)]
    saved = torch.load(folder / "class_00002.pt", weights_only=True)
    ours = features_of(real.images[real.labels == 2])
    np.testing.assert_allclose(saved["mu"].numpy(), ours.mean(0), rtol=1e-6)
    np.testing.assert_allclose(saved["sigma"].numpy(), np.cov(ours, rowvar=False), rtol=1e-5, atol=1e-10)
    assert saved["n"] == len(ours) and len(saved["real_subset"]) == 30  # diversity_pairs_max


def test_curve_evaluations_in_the_per_class_mode_leave_intra_fid_out(tmp_path):
    ev = Evaluator(eval_cfg(tmp_path / "cache", f"eval.intra_fid_per_class={K}"), space(), real_data(),
                   RunDir(tmp_path / "run"), CPU, Z, seed=3)
    record = ev.evaluate(generator(), 1, "curve")
    assert "intra_fid_mean" not in record and record["fid"] > 0
    assert "not measured" in record["intra_fid_protocol"]


def test_a_killed_class_statistics_build_resumes_without_redoing_done_classes(tmp_path, monkeypatch):
    cfg = eval_cfg(tmp_path / "cache", f"eval.intra_fid_per_class={K}")
    real_compute = ClassStats.compute
    done = []

    def dies_after_two(self, c):
        if len(done) == 2:
            raise KeyboardInterrupt  # a kill in the middle of the build
        done.append(c)
        return real_compute(self, c)

    monkeypatch.setattr(ClassStats, "compute", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        Evaluator(cfg, space(), real_data(), RunDir(tmp_path / "run"), CPU, Z, seed=3)
    folder = next((tmp_path / "cache" / "class_stats").iterdir())
    kept = {p.name: p.read_bytes() for p in folder.glob("*.pt")}
    assert sorted(kept) == ["class_00000.pt", "class_00001.pt"]

    redone = []
    monkeypatch.setattr(ClassStats, "compute", lambda self, c: redone.append(c) or real_compute(self, c))
    ev = Evaluator(cfg, space(), real_data(), RunDir(tmp_path / "run"), CPU, Z, seed=3)
    assert redone == [2, 3, 4]
    assert all((folder / name).read_bytes() == data for name, data in kept.items())  # untouched
    ev.evaluate(generator(), 1, "final")
    assert redone == [2, 3, 4]  # the evaluation reads them all from the cache


def test_class_subset_is_evenly_spaced_and_recorded(tmp_path):
    ev = Evaluator(eval_cfg(tmp_path / "cache", "eval.intra_fid_per_class=20", "eval.intra_fid_classes=3"),
                   space(), real_data(), RunDir(tmp_path / "run"), CPU, Z, seed=3)
    record = ev.evaluate(generator(), 1, "final")
    rows = pd.read_csv(tmp_path / "run" / "per_class.csv")
    assert list(rows["class"]) == [0, 2, 4] and set(rows["n_generated"]) == {20}
    assert record["intra_fid_classes"] == 3 and record["intra_fid_generated_per_class"] == 20
    assert "eval.intra_fid_classes=3" in record["intra_fid_protocol"]
    folder = next((tmp_path / "cache" / "class_stats").iterdir())
    assert sorted(p.name for p in folder.glob("*.pt")) == ["class_00000.pt", "class_00002.pt", "class_00004.pt"]
    assert record["class_accuracy"] >= 0  # the overall numbers still come from the pooled generation
    assert class_stats.selected_classes(1000, 10) == list(range(0, 1000, 111))


def test_class_statistics_on_a_streamed_store(tmp_path):
    """Statistics read class by class from the store's memmap equal those of the decoded images."""
    root = make_tree(tmp_path / "tree", per_class=(5, 4, 3))
    data = load_dataset("imagefolder", "train", STORE_R, path=str(root), storage="stream", skip_bad_files=True,
                        store_dir=str(tmp_path / "stores"), stream_workers=0, val_fraction=0)
    assert type(data).__name__ == "StreamedImageData"
    stats = ClassStats(tmp_path / "stats", space(), data, 2, 3, CPU)
    stats.build_missing([0, 1, 2])
    assert "images" not in data.__dict__  # never mapped the split as one tensor
    images, labels = expected(root)
    for c in range(3):
        ours = features_of(torch.from_numpy(images[labels == c]))
        saved = stats.get(c)
        assert saved["n"] == len(ours)
        np.testing.assert_allclose(saved["mu"].numpy(), ours.mean(0), rtol=1e-6)
        np.testing.assert_allclose(saved["sigma"].numpy(), np.cov(ours, rowvar=False), rtol=1e-5, atol=1e-10)


def test_per_class_settings_are_validated():
    def cfg(*overrides):
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            return compose("config", overrides=["device=cpu", *SMOKE, *overrides])

    for overrides, message in [
        (["eval.intra_fid_per_class=1"], "eval.intra_fid_per_class=1 is not allowed"),
        (["eval.intra_fid_per_class=50", "eval.intra_fid_classes=0"], "eval.intra_fid_classes=0 is not allowed"),
        (["eval.intra_fid_classes=3"], "set eval.intra_fid_per_class too"),
        (["eval.intra_fid_per_class=50", "eval.best_metric=intra_fid_mean"], "curve evaluations measure no"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(cfg(*overrides))
    ok = cfg("eval.intra_fid_per_class=50", "eval.intra_fid_classes=20")
    validate(ok)
    with pytest.raises(ConfigError, match="at most the 10 classes"):
        check_against_data(ok, 1000, 10)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        paper = compose("config", overrides=["eval=paper_imagenet"]).eval
    assert paper.intra_fid_per_class == 5000 and paper.intra_fid_classes == -1 and paper.n_generated == 50000


@pytest.mark.slow
def test_torchrun_run_evaluates_curve_final_and_best_on_both_ranks(tmp_path):
    """The CLI on 2 processes: curve, final and best evaluations in the per-class mode, written once by rank 0."""
    import subprocess
    import sys
    run_dir = tmp_path / "run"
    args = ["device=cpu", *SMOKE, "train.iterations=2", "eval.every=1", "eval.best_metric=fid",
            "eval.intra_fid_per_class=6", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "-m", "cgan_bench", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["phase"], r["iteration"]) for r in lines if r["phase"] != "train"]
    assert evals == [("curve", 1), ("curve", 2), ("final", 2), ("best", 2)]
    final = next(r for r in lines if r["phase"] == "final")
    assert final["eval_ranks"] == 2 and final["intra_fid_mode"] == "per_class"
    assert final["intra_fid_generated_per_class"] == 6 and final["intra_fid_classes"] == 10
    rows = pd.read_csv(run_dir / "per_class.csv")
    assert list(rows["class"]) == list(range(10)) and rows["intra_fid"].notna().all()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
