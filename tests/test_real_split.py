"""eval.real_split end to end on CIFAR-10 in torchvision's real file format (written here): `test` evaluates
against the whole test split, every metrics line says which split, and the train and test reference statistics
are separate cache entries. Also the evaluation's fp32 math: IEEE for the generator's forward and the feature
extractor, whatever the global TF32 settings (torch lets cuDNN convolutions use TF32 by default)."""
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from cgan_bench.app import CONF_DIR, run_job
from cgan_bench.bench import synthetic_data
from cgan_bench.data import load_dataset
from cgan_bench.metrics.evaluator import Evaluator
from cgan_bench.metrics.feature_space import FeatureSpace
from cgan_bench.models import Generator
from cgan_bench.train.run_dir import RunDir
from conftest import SMOKE
from test_data import _write_cifar10, skip_md5

N_PER_BATCH = 80  # 400 train, 80 test images; the seeded labels give every class >= 3 images in each split


@pytest.fixture(scope="module")
def cifar_runs(tmp_path_factory):
    """The same smoke run twice on fake CIFAR-10 files, evaluated against the train and the test split, with
    one cache folder of their own."""
    root = tmp_path_factory.mktemp("real_split")
    _write_cifar10(root / "data", N_PER_BATCH)
    cache = root / "cache"
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        skip_md5(mp)
        for split in ("train", "test"):
            with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
                cfg = compose("config", overrides=[
                    "wandb.mode=disabled", "device=cpu", "dataset=cifar10", *SMOKE, "model=small",
                    f"dataset.root={root / 'data'}", "dataset.download=false", "eval.feature_space=classifier",
                    f"eval.cache_dir={cache}", f"eval.real_split={split}", "eval.every=1"])
            run_job(cfg, root / split)
            out[split] = [json.loads(x) for x in (root / split / "metrics.jsonl").read_text().splitlines()]
    return root, cache, out


@pytest.mark.slow
def test_every_metrics_line_names_its_real_split(cifar_runs):
    _, _, out = cifar_runs
    for split, n_images in (("train", 5 * N_PER_BATCH), ("test", N_PER_BATCH)):
        evals = [r for r in out[split] if r["phase"] in ("curve", "final")]
        assert [r["phase"] for r in evals] == ["curve", "final"]
        assert all(r["real_split"] == split and r["n_real"] == n_images for r in evals)
    # the same generator (same seed, same training) against two real splits: different numbers
    final = {s: next(r for r in out[s] if r["phase"] == "final") for s in out}
    assert final["train"]["fid"] != final["test"]["fid"]


@pytest.mark.slow
def test_train_and_test_references_are_separate_cache_entries(cifar_runs):
    root, cache, _ = cifar_runs
    refs = sorted((cache / "reference").glob("cifar10-*.pt"))
    assert [p.name.split("-")[1] for p in refs] == ["test", "train"], refs
    with pytest.MonkeyPatch.context() as mp:
        skip_md5(mp)
        real = {s: load_dataset("cifar10", s, 32, root=str(root / "data"), download=False) for s in ("train", "test")}
    for path in refs:
        split = path.name.split("-")[1]
        ref = torch.load(path, weights_only=True)
        assert torch.equal(ref["labels"], real[split].labels)  # the statistics of exactly that split's images
    stats = [torch.load(p, weights_only=True)["features"] for p in refs]
    assert stats[0].shape[0] == N_PER_BATCH and stats[1].shape[0] == 5 * N_PER_BATCH
    assert not torch.allclose(stats[0].mean(0), stats[1].mean(0))
    floors = sorted((cache / "reference").glob("cifar10-*.floor-*.json"))
    assert [p.name.split("-")[1] for p in floors] == ["test", "train"]  # the noise floor too


# ---- the evaluation's fp32 math (issue 12 item 3) ---------------------------------------------------------
class RecordingSpace(nn.Module):
    """A tiny feature extractor that records the global fp32 math at each call."""

    def __init__(self, seen: list):
        super().__init__()
        self.seen, self.fc = seen, nn.Linear(3 * 16 * 16, 16)

    def forward(self, x):
        self.seen.append(("features", flags()))
        f = self.fc(x.float().flatten(1) / 255)
        return f, f


def flags() -> tuple[str, str]:
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def test_evaluation_runs_generator_and_features_in_ieee_fp32(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        eval_cfg = compose("config", overrides=["eval=smoke", f"eval.cache_dir={tmp_path / 'cache'}"]).eval
    seen = []
    space = FeatureSpace("recording", "recording", RecordingSpace(seen), classify=lambda f: f[:, :10])
    cpu = torch.device("cpu")
    evaluator = Evaluator(eval_cfg, space, synthetic_data(10, 16, cpu, n=200), RunDir(tmp_path / "run"), cpu, 16, 0)
    G = Generator(10, 16, 16, 16)
    G.register_forward_hook(lambda m, i, out: seen.append(("generator", flags())))
    before = flags()
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = "tf32", "tf32"
    try:
        seen.clear()
        evaluator.evaluate(G, 1, "final")
        assert flags() == ("tf32", "tf32")  # restored after the evaluation
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before
    assert {who for who, _ in seen} == {"generator", "features"}
    assert all(math == ("ieee", "ieee") for _, math in seen), seen
