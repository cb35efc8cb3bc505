"""Metric math and metric plumbing (feature spaces, caches, domain classifier).

Every number the package computes is checked against an independent numpy/scipy computation written here,
never against the package's own helpers. Everything runs on CPU with small synthetic inputs (no network,
no pretrained weights), except the domain classifier, which is trained once on the embedded digits.
"""
import threading
import time
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
from scipy.spatial.distance import cdist
from torch import nn

from cgan_bench.data import ImageData, load_dataset
from cgan_bench.metrics import cache, classifier, compute, feature_space, reference
from cgan_bench.metrics.feature_space import INCEPTION_FILE, FeatureSpace, WeightsMissingError


def test_kid_resamples_where_the_subset_size_would_take_both_sets_whole():
    """50 vs 50 with subset size 100: torch-fidelity's 100 subsets would all be the whole pair, so their
    spread is float rounding (checked below); half the smaller set resamples and gives a real spread."""
    rs = np.random.RandomState(4)
    fake, real = gaussian(rs, 50, 8, mean=0.3), gaussian(rs, 50, 8)
    whole_mean, whole_std = np_kid(fake, real, 50)
    assert whole_std < 1e-9 * abs(whole_mean)  # the defect: one pair, no sampling noise
    assert compute.effective_kid_subset_size(50, 50, 100) == 25
    got_mean, got_std = compute.kid(torch.from_numpy(fake), torch.from_numpy(real), subset_size=100)
    want_mean, want_std = np_kid(fake, real, 25)
    assert got_mean == pytest.approx(want_mean, rel=1e-6) and got_std == pytest.approx(want_std, rel=1e-6)
    assert got_std > 0.05 * abs(got_mean)
    # where one set is larger, its subsets vary: the size stays the smaller set's (as before)
    assert compute.effective_kid_subset_size(50, 300, 100) == 50 == compute.effective_kid_subset_size(300, 50, 100)
    assert compute.effective_kid_subset_size(2000, 1437, 1000) == 1000  # the embedded default's: 1000 of 2000
    assert compute.effective_kid_subset_size(719, 718, 1000) == 359  # the digits floor: 718 of 719 was one pair


def test_noise_floor_kid_on_halved_data_resamples_and_records_its_subset_size():
    rs = np.random.RandomState(5)
    features = torch.from_numpy(gaussian(rs, 101, 8))
    labels = torch.arange(101) % 2
    floor = compute.noise_floor(features, labels, 2, n_real=1000, n_fake=1000, kid_subset_size=1000)
    assert (floor["floor_n_a"], floor["floor_n_b"]) == (50, 51)  # not enough images: halves
    assert floor["floor_kid_subset_size"] == 25
    order = torch.randperm(101, generator=torch.Generator().manual_seed(2021))
    want_mean, want_std = np_kid(features[order[50:]].numpy(), features[order[:50]].numpy(), 25)
    assert floor["floor_kid_mean"] == pytest.approx(want_mean, rel=1e-6)
    assert floor["floor_kid_std"] == pytest.approx(want_std, rel=1e-6) and want_std > 0
    # subsets of 25 of 50 and 51 resample both halves: the error is that spread x sqrt(max(25/25, 25/26) + 1/100)
    assert floor["floor_kid_se"] == pytest.approx(want_std * np.sqrt(1 + 0.01), rel=1e-6)


def test_a_tiny_protocol_fake_side_keeps_its_size_in_the_noise_floor():
    """FID's bias grows fast as a set shrinks: the floor of a 20-image fake side is 20 real images against the
    rest, not two halves of the split (where both sides fit, the protocol's sizes; where neither, halves)."""
    assert compute.noise_floor_sizes(101, 1000, 20) == (81, 20)
    assert compute.noise_floor_sizes(101, 20, 1000) == (20, 81)
    assert compute.noise_floor_sizes(101, 60, 30) == (60, 30)
    assert compute.noise_floor_sizes(101, 1000, 1000) == (50, 51)
    rs = np.random.RandomState(6)
    features = torch.from_numpy(gaussian(rs, 101, 4))
    floor = compute.noise_floor(features, torch.arange(101) % 2, 2, n_real=101, n_fake=20, kid_subset_size=1000)
    order = torch.randperm(101, generator=torch.Generator().manual_seed(2021))
    assert (floor["floor_n_a"], floor["floor_n_b"]) == (81, 20)
    assert floor["floor_fid"] == pytest.approx(np_fid(features[order[81:]].numpy(), features[order[:81]].numpy()),
                                               rel=1e-5)
    # KID on subsets of all 20 fakes; its error from a second pass on subsets of 10 (half the smaller side)
    assert floor["floor_kid_subset_size"] == 20
    _, probe_std = np_kid(features[order[81:]].numpy(), features[order[:81]].numpy(), 10)
    _, std = np_kid(features[order[81:]].numpy(), features[order[:81]].numpy(), 20)
    assert floor["floor_kid_se"] == pytest.approx(np.sqrt(probe_std ** 2 * max(10 / 10, 10 / 71) + std ** 2 / 100),
                                                  rel=1e-6)

# --------------------------------------------------------------------------------------------------------------
# independent reference implementations (numpy / scipy only)
# --------------------------------------------------------------------------------------------------------------


def np_fid(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def np_poly_kernel(x, y):
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def np_unbiased_mmd2(x, y) -> float:
    m = len(x)
    kxx, kyy, kxy = np_poly_kernel(x, x), np_poly_kernel(y, y), np_poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.sum() / (m * m))


def np_kid(fake: np.ndarray, real: np.ndarray, size: int, subsets: int = 100) -> tuple[float, float]:
    """Same subsets as torch-fidelity: RandomState(2020), one choice() for fake then one for real per subset."""
    fake, real = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    rng = np.random.RandomState(2020)
    vals = []
    for _ in range(subsets):
        f1 = fake[rng.choice(len(fake), size, replace=False)]
        f2 = real[rng.choice(len(real), size, replace=False)]
        vals.append(np_unbiased_mmd2(f1, f2))
    return float(np.mean(vals)), float(np.std(vals))


def np_inception_score(logits: np.ndarray, splits: int) -> tuple[float, float]:
    logits = np.asarray(logits, np.float64)
    n = len(logits)
    logits = logits[np.random.RandomState(2020).permutation(n)]
    scores = []
    for i in range(splits):
        chunk = logits[i * n // splits:(i + 1) * n // splits]
        log_p = scipy.special.log_softmax(chunk, axis=1)
        p = np.exp(log_p)
        log_q = np.log(p.mean(0))
        kl = (p * (log_p - log_q[None])).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def np_knn_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance to the k-th nearest neighbour, the point itself excluded."""
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def np_precision_recall(fake, real, k):
    fake, real = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    r_real, r_fake = np_knn_radius(real, k), np_knn_radius(fake, k)
    d_fr = cdist(fake, real)  # (n_fake, n_real)
    precision = (d_fr <= r_real[None, :]).any(axis=1).mean()
    recall = (d_fr.T <= r_fake[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def np_coverage(real, fake, k):
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    r_real = np_knn_radius(real, k)
    return float((cdist(real, fake) < r_real[:, None]).any(axis=1).mean())


def np_density(real, fake, k):
    """Naeem et al. 2020, eq. (3): mean over fakes of the number of real k-NN balls holding it, over k."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    r_real = np_knn_radius(real, k)
    return float((cdist(real, fake) < r_real[:, None]).sum() / (k * len(fake)))


def gaussian(rs, n, d, mean=0.0, scale=1.0):
    mix = rs.randn(d, d) * scale
    return (rs.randn(n, d) @ mix + mean).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# 1. FID
# --------------------------------------------------------------------------------------------------------------


def test_fid_matches_independent_numpy():
    rs = np.random.RandomState(0)
    a = gaussian(rs, 2000, 16, mean=0.0, scale=1.0)
    b = gaussian(rs, 2000, 16, mean=rs.randn(16), scale=0.7)
    got = compute.fid(torch.from_numpy(a), torch.from_numpy(b))
    want = np_fid(a, b)
    assert want > 1.0
    # package: sqrt of eigvals(s1 @ s2); here: scipy sqrtm. Both float64, they agree to ~1e-15 in practice.
    assert got == pytest.approx(want, rel=1e-6)
    # symmetric in its arguments
    assert compute.fid(torch.from_numpy(b), torch.from_numpy(a)) == pytest.approx(want, rel=1e-6)


def test_fid_of_features_with_themselves_is_zero():
    rs = np.random.RandomState(1)
    a = gaussian(rs, 2000, 16, mean=5.0, scale=3.0)
    scale = float(np.trace(np.cov(a.astype(np.float64), rowvar=False)))
    assert abs(compute.fid(torch.from_numpy(a), torch.from_numpy(a))) < 1e-6 * scale


# --------------------------------------------------------------------------------------------------------------
# 2. KID
# --------------------------------------------------------------------------------------------------------------


def test_kid_matches_independent_unbiased_mmd_on_same_subsets():
    rs = np.random.RandomState(2)
    fake = gaussian(rs, 300, 8, mean=0.0, scale=0.5)
    real = gaussian(rs, 300, 8, mean=0.5, scale=0.6)
    got_mean, got_std = compute.kid(torch.from_numpy(fake), torch.from_numpy(real), subset_size=100)
    want_mean, want_std = np_kid(fake, real, 100)
    assert want_mean > 0.1  # a clearly non-zero KID, so rtol is meaningful
    # the package evaluates the kernel in float32 (features are float32), we in float64: ~1e-7 relative here
    assert got_mean == pytest.approx(want_mean, rel=1e-6)
    assert got_std == pytest.approx(want_std, rel=1e-6)


def test_kid_subset_size_is_clamped_to_the_smaller_set():
    rs = np.random.RandomState(3)
    fake = gaussian(rs, 50, 8, mean=0.3)
    real = gaussian(rs, 300, 8)
    got_mean, got_std = compute.kid(torch.from_numpy(fake), torch.from_numpy(real), subset_size=100)
    want_mean, want_std = np_kid(fake, real, 50)
    assert got_mean == pytest.approx(want_mean, rel=1e-6)
    assert got_std == pytest.approx(want_std, rel=1e-6)


# --------------------------------------------------------------------------------------------------------------
# 3. Inception score
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, splits", [(1000, 10), (1003, 7)])
def test_inception_score_matches_independent_numpy(n, splits):
    rs = np.random.RandomState(4)
    logits = (rs.randn(n, 20) * 3).astype(np.float32)
    got_mean, got_std = compute.inception_score(torch.from_numpy(logits), splits)
    want_mean, want_std = np_inception_score(logits, splits)
    assert want_mean > 1.5 and want_std > 0
    assert got_mean == pytest.approx(want_mean, rel=1e-6)
    assert got_std == pytest.approx(want_std, rel=1e-6)


def test_inception_score_known_values():
    k, n = 10, 1000
    confident = torch.nn.functional.one_hot(torch.arange(n) % k, k).float() * 50
    is_mean, is_std = compute.inception_score(confident, splits=1)
    assert is_mean == pytest.approx(k, abs=1e-3)
    assert is_std == 0.0
    # every sample predicts the same distribution -> KL to the marginal is 0 -> IS = 1
    same = torch.randn(1, k).repeat(n, 1)
    assert compute.inception_score(same, splits=5)[0] == pytest.approx(1.0, abs=SHARE_TOL)


# --------------------------------------------------------------------------------------------------------------
# 4. precision / recall / coverage
# --------------------------------------------------------------------------------------------------------------


# The package averages booleans in float32 (0.49 -> 0.49000000954); one sample of 200 changes a share by 5e-3,
# so 1e-6 still demands exactly the same count.
SHARE_TOL = 1e-6


@pytest.mark.parametrize("k", [3, 5])
def test_precision_recall_match_brute_force(k):
    rs = np.random.RandomState(5)
    real = rs.randn(200, 5)
    fake = rs.randn(200, 5) * 1.2 + 1.5  # partly overlapping, so neither number is 0 or 1
    # float64 tensors so torch.cdist and scipy's cdist agree to ~1e-15 (no borderline ties flip)
    p, r = compute.precision_recall(torch.from_numpy(fake), torch.from_numpy(real), k)
    want_p, want_r = np_precision_recall(fake, real, k)
    assert 0.05 < want_p < 0.95 and 0.05 < want_r < 0.95
    assert p == pytest.approx(want_p, abs=SHARE_TOL)
    assert r == pytest.approx(want_r, abs=SHARE_TOL)


@pytest.mark.parametrize("k", [3, 5])
def test_coverage_matches_brute_force(k):
    rs = np.random.RandomState(6)
    real = rs.randn(200, 5)
    fake = rs.randn(200, 5) * 0.6 + 0.8
    got = compute.coverage(torch.from_numpy(real), torch.from_numpy(fake), k)
    want = np_coverage(real, fake, k)
    assert 0.05 < want < 0.95
    assert got == pytest.approx(want, abs=SHARE_TOL)


def test_density_and_coverage_match_brute_force_across_row_blocks():
    """2500 reals: more than one 2048-row block of the package's distance computation."""
    rs = np.random.RandomState(11)
    real = rs.randn(2500, 4)
    fake = rs.randn(1500, 4) * 0.7 + 0.5
    density, cover = compute.density_coverage(torch.from_numpy(real), torch.from_numpy(fake), 5)
    want_density, want_cover = np_density(real, fake, 5), np_coverage(real, fake, 5)
    assert 0.05 < want_cover < 0.95 and want_density > 0.1
    assert density == pytest.approx(want_density, rel=1e-9)
    assert cover == pytest.approx(want_cover, abs=SHARE_TOL)
    # identical sets: every real covers itself; density near 1 (each point sits in about k balls)
    same_density, same_cover = compute.density_coverage(torch.from_numpy(real), torch.from_numpy(real.copy()), 5)
    assert same_cover == 1.0 and 0.8 < same_density < 1.2


def test_near_duplicate_rate_is_calibrated_on_real_spread():
    rs = np.random.RandomState(12)
    real = torch.from_numpy(rs.randn(200, 6))
    other_real = torch.from_numpy(rs.randn(200, 6))
    assert compute.near_duplicate_rate(other_real, real) < 0.2  # fresh data from the same law: about 0.05
    for k in (1, 2, 3, 5, 10):  # k distinct samples repeated to 200: every sample has a twin at distance 0
        repeated = other_real[torch.arange(200) % k]
        assert compute.near_duplicate_rate(repeated, real) == 1.0
    shrunk = other_real * 0.1  # much less spread than the data: near-duplicates everywhere
    assert compute.near_duplicate_rate(shrunk, real) > 0.9


def test_ball_boundaries_precision_inclusive_coverage_strict():
    """Reals on a line at 0, 4, 8: every 1-NN radius is exactly 4. A fake at 12 sits exactly on real 8's ball:
    inside for precision (<=), outside for coverage (<), as in the brute-force definitions."""
    real = torch.zeros(3, 5, dtype=torch.float64)
    real[:, 0] = torch.tensor([0.0, 4.0, 8.0])
    fake = torch.zeros(2, 5, dtype=torch.float64)
    fake[:, 0] = torch.tensor([12.0, 30.0])
    assert np_precision_recall(fake.numpy(), real.numpy(), 1)[0] == 0.5
    assert np_coverage(real.numpy(), fake.numpy(), 1) == 0.0
    assert compute.precision_recall(fake, real, 1)[0] == pytest.approx(0.5, abs=SHARE_TOL)
    assert compute.coverage(real, fake, 1) == 0.0
    fake[0, 0] = 11.5  # strictly inside now
    assert compute.coverage(real, fake, 1) == pytest.approx(1 / 3, abs=SHARE_TOL)


def test_precision_recall_coverage_float32_and_identical_sets():
    rs = np.random.RandomState(7)
    real = torch.from_numpy(rs.randn(200, 5).astype(np.float32))
    fake = torch.from_numpy((rs.randn(200, 5) * 1.2 + 1.5).astype(np.float32))
    p, r = compute.precision_recall(fake, real, 3)
    assert (p, r) == pytest.approx(np_precision_recall(fake.numpy(), real.numpy(), 3), abs=SHARE_TOL)
    assert compute.coverage(real, fake, 5) == pytest.approx(np_coverage(real.numpy(), fake.numpy(), 5), abs=SHARE_TOL)
    assert compute.precision_recall(real, real, 3) == (1.0, 1.0)
    assert compute.coverage(real, real.clone(), 5) == 1.0


# --------------------------------------------------------------------------------------------------------------
# 5. per-class metrics
# --------------------------------------------------------------------------------------------------------------

N_CLASSES, PER_CLASS, DIM = 3, 200, 8


@pytest.fixture(scope="module")
def class_data():
    rs = np.random.RandomState(8)
    means = [np.zeros(DIM), np.full(DIM, 6.0), np.r_[np.full(DIM // 2, -6.0), np.zeros(DIM - DIM // 2)]]
    feats = np.concatenate([gaussian(rs, PER_CLASS, DIM, mean=m, scale=0.8) for m in means])
    labels = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    # shuffle so per-class selection by label mask matters
    order = rs.permutation(len(labels))
    return torch.from_numpy(feats[order]), torch.from_numpy(labels[order]).long()


def one_hot_logits(pred: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, N_CLASSES).float() * 10


def test_per_class_real_vs_itself(class_data):
    feats, labels = class_data
    rows = compute.per_class_metrics(feats, one_hot_logits(labels), labels, feats, labels, N_CLASSES)
    assert [r["class"] for r in rows] == list(range(N_CLASSES))
    for row in rows:
        cls = feats[labels == row["class"]].double().numpy()
        scale = float(np.trace(np.cov(cls, rowvar=False)))
        assert abs(row["intra_fid"]) < 1e-6 * scale
        assert row["diversity_ratio"] == pytest.approx(1.0, abs=1e-12)  # same rows picked from identical sets
        assert row["class_coverage"] == 1.0
        assert row["accuracy"] == 1.0
        assert row["collapsed"] is False and row["near_duplicate_rate"] < 0.1  # real data: about 0.05
        assert row["n_generated"] == row["n_real"] == PER_CLASS
    summary = compute.summarize_per_class(rows)
    assert summary["collapsed_classes"] == 0
    assert summary["diversity_ratio_mean"] == pytest.approx(1.0, abs=1e-12)
    assert summary["class_coverage_mean"] == 1.0


def test_per_class_intra_fid_between_different_classes_is_large(class_data):
    feats, labels = class_data
    # "generated" class 0 := real class 1, and vice versa
    swapped = torch.where(labels == 0, 1, torch.where(labels == 1, 0, labels))
    rows = compute.per_class_metrics(feats, one_hot_logits(swapped), swapped, feats, labels, N_CLASSES)
    c0, c1 = feats[labels == 0].double().numpy(), feats[labels == 1].double().numpy()
    want = np_fid(c1, c0)
    mean_gap = float(((c0.mean(0) - c1.mean(0)) ** 2).sum())  # FID >= |mu1 - mu2|^2 (the trace term is >= 0)
    self_fid = abs(compute.fid(torch.from_numpy(c0), torch.from_numpy(c0)))
    assert mean_gap > 200
    assert rows[0]["intra_fid"] == pytest.approx(want, rel=1e-6)
    assert rows[1]["intra_fid"] == pytest.approx(want, rel=1e-6)
    assert rows[0]["intra_fid"] >= 0.99 * mean_gap
    assert rows[0]["intra_fid"] > 10 * self_fid + 100
    assert rows[2]["intra_fid"] < 1e-6 * float(np.trace(np.cov(feats[labels == 2].double().numpy(), rowvar=False)))
    # the two far-apart classes barely cover each other's reals (m = 200: the subsample is the whole class)
    assert rows[0]["class_coverage"] == pytest.approx(np_coverage(c0, c1, 5), abs=SHARE_TOL)
    assert rows[1]["class_coverage"] == pytest.approx(np_coverage(c1, c0, 5), abs=SHARE_TOL)
    assert rows[0]["class_coverage"] < 0.05 and rows[1]["class_coverage"] < 0.05


def test_per_class_one_image_per_class_generator_is_collapsed(class_data):
    real, real_labels = class_data
    n_gen = 100
    gen_labels = torch.arange(N_CLASSES).repeat_interleave(n_gen)
    rs = np.random.RandomState(9)
    single = torch.from_numpy(rs.randn(N_CLASSES, DIM).astype(np.float32) * 2)
    gen = single[gen_labels]  # class c: n_gen copies of one vector
    # predictions: class 0 70% right (rest say 1), class 1 all right, class 2 25% right (rest say 0)
    pred = gen_labels.clone()
    pred[:n_gen] = torch.tensor([0] * 70 + [1] * 30)
    pred[2 * n_gen:] = torch.tensor([2] * 25 + [0] * 75)
    rows = compute.per_class_metrics(gen, one_hot_logits(pred), gen_labels, real, real_labels, N_CLASSES)
    assert [r["accuracy"] for r in rows] == pytest.approx([0.70, 1.0, 0.25], abs=1e-7)
    for c, row in enumerate(rows):
        assert row["diversity_ratio"] < 1e-6
        assert row["collapsed"] is True
        r = real[real_labels == c].double().numpy()
        v = single[c].double().numpy()
        # covariance of identical vectors is 0, so FID = |v - mu_r|^2 + tr(cov_r)
        want = float(((v - r.mean(0)) ** 2).sum() + np.trace(np.cov(r, rowvar=False)))
        assert row["intra_fid"] == pytest.approx(want, rel=1e-6)
        # coverage against brute force on the package's evenly spaced subsample (m = min(100, 200) = 100)
        m = min(n_gen, PER_CLASS)
        idx = np.round(np.linspace(0, PER_CLASS - 1, m)).astype(int)
        want_cov = np_coverage(r[idx], np.repeat(v[None], m, axis=0), 5)
        assert row["class_coverage"] == pytest.approx(want_cov, abs=SHARE_TOL)
        assert row["near_duplicate_rate"] == 1.0
    assert compute.summarize_per_class(rows)["collapsed_classes"] == N_CLASSES


def test_per_class_needs_two_samples_per_class(class_data):
    real, real_labels = class_data
    gen_labels = torch.tensor([0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="class 2"):
        compute.per_class_metrics(torch.randn(5, DIM), one_hot_logits(gen_labels), gen_labels, real, real_labels,
                                  N_CLASSES)


# --------------------------------------------------------------------------------------------------------------
# 6./7. cache keys and the reference-feature cache
# --------------------------------------------------------------------------------------------------------------


class CountingModel(nn.Module):
    """uint8 images -> (4x4-pooled pixels as features, their first 5 values as logits); counts forward calls."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.calls = 0
        self.delay = delay
        self._lock = threading.Lock()

    def forward(self, x):
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        f = nn.functional.avg_pool2d(x.float(), 4).flatten(1)
        return f, f[:, :5] / 255.0


def tiny_data(seed: int, n: int = 40, name: str = "synthetic", split: str = "train") -> ImageData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    return ImageData(images, torch.arange(n) % 4, 4, name, split)


def test_cache_key_separates_every_field():
    base = dict(dataset="digits", split="test", count=360, resolution=32, feature_space="inception")
    k = cache.cache_key(**base)
    assert cache.cache_key(**base) == k
    assert cache.cache_key(**{**base, "resolution": 64}) != k
    assert cache.cache_key(**{**base, "feature_space": "classifier-e30"}) != k
    assert cache.cache_key(**{**base, "split": "train"}) != k
    assert cache.cache_key(**{**base, "count": 361}) != k
    assert cache.cache_key(**{**base, "dataset": "cifar10"}) != k
    assert cache.cache_key(**base, preprocessing=cache.PREPROCESSING_VERSION + 1) != k


def test_reference_path_depends_on_pixel_content(tmp_path):
    space = FeatureSpace("tiny", "tiny", CountingModel())
    a, b = tiny_data(0), tiny_data(1)
    assert (a.name, a.split, len(a), a.resolution) == (b.name, b.split, len(b), b.resolution)
    pa, pb = reference.reference_path(space, a, str(tmp_path)), reference.reference_path(space, b, str(tmp_path))
    assert pa != pb
    assert pa == reference.reference_path(space, tiny_data(0), str(tmp_path))  # deterministic
    assert pa.parent == tmp_path / "reference"
    # a single changed pixel is enough
    c = tiny_data(0)
    c.images[3, 1, 2, 2] ^= 1
    assert reference.reference_path(space, c, str(tmp_path)) != pa
    # and the feature-space key is part of it
    other = FeatureSpace("tiny", "tiny-v2", CountingModel())
    assert reference.reference_path(other, a, str(tmp_path)) != pa


def test_reference_is_computed_once_and_reloaded(tmp_path):
    model = CountingModel()
    space = FeatureSpace("tiny", "tiny", model)
    data = tiny_data(2)
    first = reference.load_or_compute_reference(space, data, batch_size=8, cache_dir=str(tmp_path))
    assert model.calls == 5  # 40 images / batch 8
    files = list((tmp_path / "reference").glob("*.pt"))
    assert files == [reference.reference_path(space, data, str(tmp_path))]
    # the features are what the model computes (independently recomputed here)
    want = torch.nn.functional.avg_pool2d(data.images.float(), 4).flatten(1)
    assert torch.equal(first["features"], want)
    assert torch.equal(first["labels"], data.labels)
    assert set(first["probe"]) == {"weight", "bias"} and first["probe"]["weight"].shape == (4, 48)

    second = reference.load_or_compute_reference(space, data, batch_size=8, cache_dir=str(tmp_path))
    assert model.calls == 5  # not called again
    for key in ("features", "logits", "labels"):
        assert torch.equal(first[key], second[key])
    for key in ("weight", "bias"):
        assert torch.equal(first["probe"][key], second["probe"][key])
    assert first["key"] == second["key"] == files[0].stem


def test_reference_concurrent_callers_share_one_computation(tmp_path):
    model = CountingModel(delay=0.05)  # widen the race window
    space = FeatureSpace("tiny", "tiny", model)
    data = tiny_data(3)
    barrier = threading.Barrier(2)
    results, errors = [None, None], []

    def worker(i):
        try:
            barrier.wait()
            results[i] = reference.load_or_compute_reference(space, data, batch_size=8, cache_dir=str(tmp_path))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert model.calls == 5  # one computation of 5 batches in total
    assert torch.equal(results[0]["features"], results[1]["features"])
    assert torch.equal(results[0]["logits"], results[1]["logits"])
    ref_dir = tmp_path / "reference"
    assert len(list(ref_dir.glob("*.pt"))) == 1
    assert not list(ref_dir.glob("*.tmp"))  # no torn temp files left behind
    on_disk = torch.load(next(ref_dir.glob("*.pt")), weights_only=True)
    assert torch.equal(on_disk["features"], results[0]["features"])


# --------------------------------------------------------------------------------------------------------------
# 8./9. Inception feature space (random weights of the real architecture) and missing weights
# --------------------------------------------------------------------------------------------------------------


def test_inception_feature_space_end_to_end_with_random_weights(tmp_path):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    # Build the real architecture without any weights file: skip the download and the state-dict load,
    # keep the random initialisation, and save that as the "weights".
    with pytest.MonkeyPatch.context() as mp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
        state = net.state_dict()
    path = tmp_path / "inception.pth"
    torch.save(state, path)

    data = tiny_data(4, n=8)
    space = feature_space.make_feature_space("inception", data, data, "cpu", inception_weights=str(path))
    assert (space.name, space.key, space.classify) == ("inception", f"inception-{path.stem}", None)
    loaded = space.model.net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)  # the weights came from our file

    feats, logits = space.extract(data.images, batch_size=4)
    assert feats.shape == (8, 2048) and logits.shape == (8, 1008)
    assert feats.dtype == logits.dtype == torch.float32
    assert torch.isfinite(feats).all() and torch.isfinite(logits).all()
    assert (feats >= 0).all()  # average pool of ReLU outputs
    assert not torch.equal(feats[0], feats[1])  # different images, different features


def test_configured_inception_weights_missing(tmp_path):
    missing = tmp_path / "nonexistent" / "file.pth"
    with pytest.raises(WeightsMissingError) as err:
        feature_space.inception_weights_path(str(missing))
    assert str(missing) in str(err.value)
    assert "inception_weights" in str(err.value)
    # an existing configured file is returned as is
    present = tmp_path / "w.pth"
    present.write_bytes(b"x")
    assert feature_space.inception_weights_path(str(present)) == present


def test_default_inception_weights_missing_and_not_downloadable(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored after the test
    torch.hub.set_dir(str(tmp_path))
    attempts = []

    def no_network(url, dst, *a, **k):  # hermetic: behave like an offline machine even where there is network
        attempts.append((url, dst))
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected = tmp_path / "checkpoints" / INCEPTION_FILE
    with pytest.raises(WeightsMissingError) as err:
        feature_space.inception_weights_path(None)
    msg = str(err.value)
    assert INCEPTION_FILE in msg
    assert str(expected) in msg
    assert str(expected.parent) in msg
    assert len(attempts) == 1 and attempts[0][1] == str(expected)
    assert not expected.exists()
    # once the file is where the message says, it is used
    expected.write_bytes(b"x")
    assert feature_space.inception_weights_path(None) == expected
    assert len(attempts) == 1


# --------------------------------------------------------------------------------------------------------------
# 10. domain classifier on the embedded digits
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("classifier_cache")
    train, test = load_dataset("digits", "train", 16), load_dataset("digits", "test", 16)
    # One intra-op thread: ~18 s either way on an idle 2-core box, but with 2 OpenMP threads the small
    # per-step kernels stall badly whenever another process takes a core (measured 50-140 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(1234)
        before = torch.get_rng_state()
        model, acc = classifier.load_or_train_classifier(train, test, "cpu", epochs=20, cache_dir=str(cache_dir))
        after = torch.get_rng_state()
    finally:
        torch.set_num_threads(threads)
    return dict(model=model, acc=acc, train=train, test=test, cache_dir=cache_dir, rng_before=before,
                rng_after=after)


def test_classifier_reaches_accuracy_on_held_out_digits(digits_classifier):
    model, acc, test = digits_classifier["model"], digits_classifier["acc"], digits_classifier["test"]
    assert acc >= 0.9
    with torch.no_grad():
        features, logits = model(test.images)
    # recompute the reported accuracy independently
    assert acc == pytest.approx((logits.argmax(1) == test.labels).double().mean().item(), abs=1e-12)
    assert features.shape == (len(test), 128) and logits.shape == (len(test), 10)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert len(list((digits_classifier["cache_dir"] / "classifiers").glob("*.pt"))) == 1


def test_classifier_training_leaves_global_rng_untouched(digits_classifier):
    assert torch.equal(digits_classifier["rng_before"], digits_classifier["rng_after"])


def test_classifier_cache_hit_returns_the_same_model(digits_classifier):
    d = digits_classifier
    model, acc = classifier.load_or_train_classifier(d["train"], d["test"], "cpu", epochs=20,
                                                     cache_dir=str(d["cache_dir"]))
    assert acc == d["acc"]
    want, got = d["model"].state_dict(), model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_classifier_cache_hit_leaves_global_rng_untouched(digits_classifier):
    d = digits_classifier
    before = torch.get_rng_state()
    classifier.load_or_train_classifier(d["train"], d["test"], "cpu", epochs=20, cache_dir=str(d["cache_dir"]))
    assert torch.equal(before, torch.get_rng_state())
