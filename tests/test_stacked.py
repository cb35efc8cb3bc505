"""Stacked digits, the benchmark with ground truth: the dataset's construction, the exact mode metrics on
real images (the ceiling) and on generators built to fail in known ways, and the collapse rules.

The "generators" here emit chosen real images (so the truth is known by construction) through the real
Evaluator: generation -> digit-channel features -> metrics.jsonl / per_class.csv.
"""
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from cgan_bench.app import CONF_DIR
from cgan_bench.data import load_dataset, stacked_digits
from cgan_bench.metrics import compute, modes
from cgan_bench.metrics.evaluator import Evaluator
from cgan_bench.metrics.feature_space import make_feature_space
from cgan_bench.train.run_dir import RunDir

EPOCHS = 20  # the protocol's classifier (eval.classifier_epochs): its accuracy sets the real ceiling


@pytest.fixture(scope="module")
def data():
    return load_dataset("stacked_digits", "train", 16), load_dataset("stacked_digits", "test", 16)


@pytest.fixture(scope="module")
def space(data):
    train, test = data
    return make_feature_space("digit_channels", train, test, torch.device("cpu"), classifier_epochs=EPOCHS)


def eval_cfg(*overrides):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("config", ["dataset=stacked_digits", *overrides]).eval


class ReplayGenerator(torch.nn.Module):
    """G(z, y) that returns, for requested class c, the next image from `pool[c]` (cycling): outputs in
    [-1, 1] that to_uint8 maps back to exactly those uint8 images."""

    def __init__(self, pool: dict[int, torch.Tensor]):
        super().__init__()
        self.pool, self.used = pool, {c: 0 for c in pool}

    def forward(self, z, y):
        out = []
        for c in y.tolist():
            images = self.pool[c]
            out.append(images[self.used[c] % len(images)])
            self.used[c] += 1
        return torch.stack(out).float() / 127.5 - 1.0


def evaluate(tmp_path, space, data, pool, *overrides) -> tuple[dict, list[dict]]:
    """One final evaluation of `pool` under eval=stacked (10000 generated, 1000 per class, for the mode counts),
    with the distribution metrics on 1000 vs 1000 images to keep the test quick."""
    train, test = data
    run = RunDir(tmp_path / "run")
    cfg = eval_cfg("eval.n_real=1000", "eval.n_fake=1000", *overrides)
    ev = Evaluator(cfg, space, train, run, torch.device("cpu"), z_dim=4, seed=0, held_out=test)
    record = ev.evaluate(ReplayGenerator(pool), 1, "final")
    line = json.loads(run.metrics_file.read_text().splitlines()[-1])
    assert line["modes_total"] == record["modes_total"]  # what the run directory holds
    import pandas as pd
    return record, pd.read_csv(run.per_class_file).to_dict("records")


# ---- the dataset -------------------------------------------------------------------------------------------

def test_each_channel_holds_a_digit_image_of_its_code(data):
    train, test = data
    assert (len(train), len(test)) == (20000, 10000)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 16, 16)
    assert train.class_counts().tolist() == [2000] * 10 and test.class_counts().tolist() == [1000] * 10
    for split, stacked in (("train", train), ("test", test)):
        digits = load_dataset("digits", split, 16)
        codes = stacked_digits.stack_codes(split)
        assert torch.equal(stacked.labels, torch.from_numpy(codes[:, 0]))
        gray = digits.images[:, 0]
        for i in np.random.RandomState(1).choice(len(stacked), 30, replace=False):
            for ch in range(3):
                same = (gray == stacked.images[i, ch]).flatten(1).all(1)  # which digit images it is a copy of
                assert same.any() and set(digits.labels[same].tolist()) == {int(codes[i, ch])}
        pairs = codes[:, 1] * 10 + codes[:, 2]
        assert len(np.unique(codes[:, 0] * 100 + pairs)) == 1000  # every mode occurs
    # the digit images never cross the split: no test image's red channel appears in the train digits
    train_gray = load_dataset("digits", "train", 16).images[:, 0].flatten(1)
    test_gray = load_dataset("digits", "test", 16).images[:, 0].flatten(1)
    assert not (torch.cdist(test_gray.float(), train_gray.float()) == 0).all(1).any()


def test_loading_is_deterministic(data):
    again = load_dataset("stacked_digits", "test", 16)
    assert torch.equal(again.images, data[1].images)


# ---- mode metrics: hand-made histograms ----------------------------------------------------------------------

def test_mode_stats_against_a_hand_count():
    # class 0: modes (1,2) x3 and (3,4) x1; class 1: (0,0) x2
    digits = torch.tensor([[0, 1, 2]] * 3 + [[0, 3, 4]] + [[1, 0, 0]] * 2)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    summary, rows = modes.mode_stats(digits, labels, 2)
    assert [r["modes_covered"] for r in rows] == [2, 1]
    p = np.array([0.75, 0.25])
    assert rows[0]["mode_kl"] == pytest.approx(float((p * np.log(p * 100)).sum()))
    assert rows[1]["mode_kl"] == pytest.approx(np.log(100))
    assert summary["modes_total"] == 3 and summary["modes_covered_mean"] == 1.5
    uniform = torch.stack(torch.meshgrid(torch.zeros(1, dtype=torch.long), torch.arange(10), torch.arange(10),
                                         indexing="ij"), -1).reshape(-1, 3)
    assert modes.mode_stats(uniform, torch.zeros(100, dtype=torch.long), 1)[0]["mode_kl_mean"] == pytest.approx(0)


# ---- through the evaluator: real images and generators that fail in known ways -------------------------------

@pytest.mark.slow
def test_real_held_out_images_score_every_mode(tmp_path, space, data):
    _, test = data
    pool = {c: test.images[test.labels == c] for c in range(10)}  # a "generator" that is the test split
    record, rows = evaluate(tmp_path, space, data, pool)
    assert space.classifier_test_accuracy > 0.95
    assert record["n_generated"] == 10000
    assert record["modes_total"] >= 990 and record["modes_covered_mean"] >= 99
    assert record["mode_kl_mean"] < 0.1  # sampling noise alone: about 99 / (2 * 1000) = 0.05 nats
    assert record["class_accuracy"] > 0.95
    assert record["mode_collapsed_classes"] == 0 and record["collapsed_classes"] == 0
    assert record["real_modes_covered_mean"] >= 99 and record["real_mode_kl_mean"] < 0.1
    assert all(r["real_modes_covered"] >= 97 for r in rows)
    # FID of the test split against train is at the real-vs-real level, not at a generator's
    assert record["fid"] < 3 * record["floor_fid"] + 5


@pytest.mark.slow
def test_one_fixed_mode_per_class_is_counted_and_flagged(tmp_path, space, data):
    _, test = data
    codes = stacked_digits.stack_codes("test")
    pool = {}
    for c in range(10):  # class c always emits one image whose (green, blue) digits are (c, 9 - c)
        i = np.flatnonzero((codes[:, 0] == c) & (codes[:, 1] == c) & (codes[:, 2] == 9 - c))[0]
        pool[c] = test.images[i:i + 1]
    record, rows = evaluate(tmp_path, space, data, pool)
    assert record["modes_total"] == 10
    assert record["modes_covered_mean"] == 1
    assert record["mode_kl_mean"] == pytest.approx(np.log(100))
    assert record["mode_collapsed_classes"] == 10 and all(r["mode_collapsed"] for r in rows)
    assert record["collapsed_classes"] == 10 and all(r["near_duplicate_rate"] == 1.0 for r in rows)


@pytest.mark.slow
def test_a_generator_that_ignores_the_label_scores_chance_class_accuracy(tmp_path, space, data):
    _, test = data
    shuffled = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))]
    pool = {c: shuffled[c * 1000:(c + 1) * 1000] for c in range(10)}  # any class, whatever was asked
    record, _ = evaluate(tmp_path, space, data, pool, "eval.n_generated=5000")
    assert abs(record["class_accuracy"] - 0.1) < 0.03


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 3, 5, 10])
def test_k_distinct_images_per_class_are_flagged_collapsed(tmp_path, space, data, k):
    _, test = data
    pool = {c: test.images[test.labels == c][:k] for c in range(10)}
    record, rows = evaluate(tmp_path, space, data, pool, "eval.n_generated=2000")
    assert record["collapsed_classes"] == 10, [r["near_duplicate_rate"] for r in rows]
    assert record["mode_collapsed_classes"] == 10  # k <= 10 of 100 modes


# ---- KID at the new subset size, and the noise floor ---------------------------------------------------------

@pytest.mark.slow
def test_kid_of_two_real_halves_straddles_zero(space, data):
    train, _ = data
    features, _ = space.extract(train.images[:4000], 1000)
    values = []
    for seed in range(8):
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
        values.append(compute.kid(features[order[:2000]], features[order[2000:]], 1000)[0])
    assert min(values) < 0 < max(values)
    fake_like = features[:2000] + 0.5 * features[:2000].std(0)  # a shifted "generator": clearly above 0
    assert compute.kid(fake_like, features[2000:], 1000)[0] > 10 * max(abs(v) for v in values)


@pytest.mark.slow
def test_noise_floor_uses_disjoint_halves_of_protocol_size(space, data):
    train, _ = data
    features, _ = space.extract(train.images[:3000], 1000)
    labels = train.labels[:3000]
    floor = compute.noise_floor(features, labels, 10, n_real=1000, n_fake=500, kid_subset_size=1000)
    assert (floor["floor_n_a"], floor["floor_n_b"]) == (1000, 500)
    order = torch.randperm(3000, generator=torch.Generator().manual_seed(2021))
    assert floor["floor_fid"] == pytest.approx(compute.fid(features[order[1000:1500]], features[order[:1000]]))
    small = compute.noise_floor(features, labels, 10, n_real=5000, n_fake=5000, kid_subset_size=1000)
    assert (small["floor_n_a"], small["floor_n_b"]) == (1500, 1500)  # not enough images: halves
    assert small["floor_fid"] > 0 and small["floor_intra_fid_mean"] > small["floor_fid"]


def test_grids_can_show_the_channels_apart():
    """Stacked digits' sample and morph grids show each image's red, green and blue digit side by side."""
    from cgan_bench.models import Generator
    from cgan_bench.train.samples import class_grid, morph_grid
    G = Generator(10, 16, 8, z_dim=8)
    for grid_fn in (lambda **k: class_grid(G, 10, 8, "cpu", **k), lambda **k: morph_grid(G, 0, 1, 10, 8, "cpu", **k)):
        plain, apart = grid_fn(), grid_fn(channels_apart=True)
        n_cols = (plain.shape[2] - 1) // 17  # 16 px images with 1 px padding
        assert apart.shape[1] == plain.shape[1] and (apart.shape[2] - 1) // (3 * 16 + 1) == n_cols
        first = apart[:, 1:17, 1:49]  # the first image: red part, green part, blue part
        for c in range(3):
            part = first[:, :, 16 * c:16 * (c + 1)]
            assert (part[[k for k in range(3) if k != c]] == 0).all()  # only its own channel
            assert torch.equal(part[c], plain[c, 1:17, 1:17])
