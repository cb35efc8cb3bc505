"""Metric math on features: torch-fidelity's functions for IS/FID/KID/precision-recall, Naeem et al.'s
density/coverage, the per-class statistics the paper's claim is about (intra-FID, diversity ratio,
near-duplicate rate and collapse, within-class coverage, class accuracy), and the real-vs-real noise floor.

Everything here takes features already extracted (CPU tensors), so one feature pass feeds every metric.
"""
import numpy as np
import torch
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, calc_cdist_full, prc_features_to_metric

from .frechet import fid, frechet_distance, sqrt_psd, statistics  # FID and intra-FID: frechet.py
from .kid_error import KID_SUBSETS, kid_standard_error, resampling_size

RNG_SEED = 2020  # torch-fidelity's default, so subsets are reproducible


def inception_score(logits: torch.Tensor, splits: int) -> tuple[float, float]:
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=RNG_SEED)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def effective_kid_subset_size(n_fake: int, n_real: int, requested: int) -> int:
    """The KID subset size used: `requested`, capped by both sets. Where each subset would still take more than
    half of both sets, the 100 subsets are (nearly) the same pair and their spread is not sampling noise (a
    real-vs-real floor of 719 vs 718 digits with subsets of 718 read ± 0.026 ×10³ this way, against a mean
    of -11,593 ×10³), so half the smaller set instead, which resamples."""
    size = min(requested, n_fake, n_real)
    if 2 * size > max(n_fake, n_real):
        size = max(2, min(n_fake, n_real) // 2)
    return size


def kid(fake: torch.Tensor, real: torch.Tensor, subset_size: int, subsets: int = KID_SUBSETS) -> tuple[float, float]:
    """torch-fidelity's KID (mean, spread) over `subsets` subsets of effective_kid_subset_size."""
    return kid_on_subsets_of(fake, real, effective_kid_subset_size(len(fake), len(real), subset_size), subsets)


def kid_on_subsets_of(fake: torch.Tensor, real: torch.Tensor, size: int, subsets: int = KID_SUBSETS
                      ) -> tuple[float, float]:
    out = kid_features_to_metric(fake, real, kid_subsets=subsets, kid_subset_size=size, rng_seed=RNG_SEED,
                                 verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def kid_with_error(fake: torch.Tensor, real: torch.Tensor, subset_size: int) -> dict:
    """KID with its standard error (metrics.kid_error.kid_standard_error): where the protocol's subsets take
    more than half of a set, a second pass on subsets of half the smaller set measures the sets' noise."""
    size = effective_kid_subset_size(len(fake), len(real), subset_size)
    mean, std = kid_on_subsets_of(fake, real, size)
    probe = resampling_size(len(fake), len(real), size)
    se = float("nan")  # a set of under 4 images (probe None): no subsets that resample it
    if probe is not None:
        probe_std = std if probe == size else kid_on_subsets_of(fake, real, probe)[1]
        se = kid_standard_error(std, len(fake), len(real), size, probe_std, probe)
    return {"mean": mean, "std": std, "subset_size": size, "se": se}


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int) -> tuple[float, float]:
    out = prc_features_to_metric(fake, real, prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=True,
                                 verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> float:
    """Naeem et al. 2020: share of real samples whose k-NN ball (among reals) contains at least one fake."""
    return density_coverage(real, fake, k)[1]


def _row_blocks(n: int, block: int = 2048):
    return (slice(i, min(i + block, n)) for i in range(0, n, block))


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Naeem et al. 2020 (ICML), "Reliable fidelity and diversity metrics": with B_i the ball around real
    sample i reaching its k-th nearest real neighbour, density = mean over fakes of (number of balls holding
    the fake) / k, coverage = share of balls holding at least one fake (strict <, as in their code).
    Distances are computed in row blocks, so 10k x 10k sets need no 10k x 10k matrix at once."""
    fake = fake.to(real.dtype)
    radius = torch.cat([calc_cdist_full(real[b], real).kthvalue(k + 1, dim=1).values  # +1: the sample itself
                        for b in _row_blocks(len(real))])
    balls_per_fake = torch.zeros(len(fake), dtype=torch.float64)
    covered = torch.zeros(len(real), dtype=torch.bool)
    for b in _row_blocks(len(real)):
        inside = calc_cdist_full(real[b], fake) < radius[b, None]  # (block of reals, fakes)
        balls_per_fake += inside.sum(dim=0)
        covered[b] = inside.any(dim=1)
    return (balls_per_fake.sum() / (k * len(fake))).item(), covered.float().mean().item()


def nearest_neighbour_distances(features: torch.Tensor) -> torch.Tensor:
    """Distance of every sample to its nearest other sample of the same set."""
    d = torch.cdist(features.double(), features.double())
    d.fill_diagonal_(float("inf"))
    return d.min(dim=1).values


def near_duplicate_rate(gen: torch.Tensor, real: torch.Tensor, quantile: float = 0.05) -> float:
    """Share of generated samples whose nearest generated neighbour is closer than the `quantile` of the real
    samples' own nearest-neighbour distances (same number of samples on both sides). Calibrated on the data:
    real samples score about `quantile`; k distinct images repeated score 1 (their neighbours are at 0)."""
    threshold = torch.quantile(nearest_neighbour_distances(real), quantile)
    return (nearest_neighbour_distances(gen) <= threshold).double().mean().item()


def mean_pairwise_distance(features: torch.Tensor) -> float:
    return torch.pdist(features.double()).mean().item()


def evenly_spaced(n_total: int, n: int) -> torch.Tensor:
    """Indices of n items spread evenly over n_total (deterministic subsampling)."""
    return torch.linspace(0, n_total - 1, min(n, n_total)).round().long()


def real_class_statistics(real_feats: torch.Tensor, real_labels: torch.Tensor, c: int, memo: dict | None) -> tuple:
    """(statistics, square root of the covariance) of class c's real features: fixed for a run, so an
    Evaluator keeps them in `memo` and every later evaluation pays one eigendecomposition per class, not two."""
    if memo is not None and c in memo:
        return memo[c]
    stats = statistics(real_feats[real_labels == c])
    value = (stats, sqrt_psd(stats["sigma"]))
    if memo is not None:
        memo[c] = value
    return value


def per_class_metrics(gen_feats: torch.Tensor, gen_logits: torch.Tensor, gen_labels: torch.Tensor,
                      real_feats: torch.Tensor, real_labels: torch.Tensor, n_classes: int, *,
                      coverage_k: int = 5, pairs_max: int = 1000, collapse_threshold: float = 0.5,
                      real_memo: dict | None = None) -> list[dict]:
    """One row per class: intra-FID (all real of the class vs generated of the class), diversity ratio,
    near-duplicate rate (a class is `collapsed` when it exceeds `collapse_threshold`), within-class coverage
    (Naeem et al.'s coverage restricted to one class, on m = min(n_gen, n_real, pairs_max) evenly spaced
    samples of each side) and accuracy (argmax of the feature space's classifier logits). `real_memo`: see
    real_class_statistics."""
    rows = []
    predicted = gen_logits.argmax(dim=1)
    for c in range(n_classes):
        g, r = gen_feats[gen_labels == c], real_feats[real_labels == c]
        m = min(len(g), len(r), pairs_max)
        if m < 2:
            raise ValueError(f"class {c} has {len(g)} generated and {len(r)} real samples; need at least 2 of each")
        real_stats, real_root = real_class_statistics(real_feats, real_labels, c, real_memo)
        rows.append(class_row(c, frechet_distance(real_stats, statistics(g), real_root), g, r,
                              (predicted[gen_labels == c] == c).float().mean().item(), len(r),
                              pairs_max=pairs_max, coverage_k=coverage_k, collapse_threshold=collapse_threshold))
    return rows


def class_row(c: int, intra_fid: float, gen: torch.Tensor, real: torch.Tensor, accuracy: float, n_real: int, *,
              pairs_max: int, coverage_k: int, collapse_threshold: float) -> dict:
    """One per_class.csv row, columns in the contract's order (the pooled and the per-class intra-FID modes
    alike): diversity ratio, near-duplicate rate, coverage and `collapsed` on m = min(n_gen, n_real,
    pairs_max) evenly spaced samples of each side; intra-FID and accuracy as the caller measured them."""
    m = min(len(gen), len(real), pairs_max)
    g_sub, r_sub = gen[evenly_spaced(len(gen), m)], real[evenly_spaced(len(real), m)]
    duplicates = near_duplicate_rate(g_sub, r_sub)
    return {"class": c,
            "intra_fid": intra_fid,
            "diversity_ratio": mean_pairwise_distance(g_sub) / max(mean_pairwise_distance(r_sub), 1e-12),
            "near_duplicate_rate": duplicates,
            "class_coverage": coverage(r_sub, g_sub, min(coverage_k, m - 1)),
            "accuracy": accuracy,
            "collapsed": bool(duplicates > collapse_threshold),
            "n_generated": len(gen),
            "n_real": n_real}



def overall_metrics(fid_fake: torch.Tensor, real: torch.Tensor, all_logits: torch.Tensor, *, isc_splits: int,
                    kid_subset_size: int, prc_k: int, coverage_k: int = 5) -> dict:
    """Distribution-level metrics: FID/KID/precision/recall/density/coverage on (fid_fake, real), IS on all
    generated logits. KID in torch-fidelity's raw units: `kid_std` is the spread of the 100 subset values,
    `kid_se` the standard error of their mean over new draws of both sets (kid_standard_error)."""
    is_mean, is_std = inception_score(all_logits, isc_splits)
    k = kid_with_error(fid_fake, real, kid_subset_size)
    precision, recall = precision_recall(fid_fake, real, prc_k)
    density, cover = density_coverage(real, fid_fake, coverage_k)
    return {"is_mean": is_mean, "is_std": is_std, "fid": fid(fid_fake, real), "kid_mean": k["mean"],
            "kid_std": k["std"], "kid_se": k["se"], "kid_subset_size": k["subset_size"],
            "precision": precision,
            "recall": recall, "density": density, "coverage": cover}


def noise_floor_sizes(n_total: int, n_real: int, n_fake: int) -> tuple[int, int]:
    """The floor's two disjoint parts (real side, fake side): the protocol's sizes (n_real, n_fake) where the
    split has enough images. Else the smaller side keeps its protocol size where it fits in half the split and
    the other side takes the rest (FID's bias grows fast as a set shrinks: a 100-image fake side is the floor
    a 100-image protocol needs, not two halves of the split), else the split is halved."""
    if n_real + n_fake <= n_total:
        return n_real, n_fake
    if min(n_real, n_fake) <= n_total // 2:
        small = min(n_real, n_fake)
        return (n_total - small, small) if n_fake == small else (small, n_total - small)
    return n_total // 2, n_total - n_total // 2


FLOOR_SEED = 2021  # the floor's split of the real images into its two parts


def noise_floor(features: torch.Tensor, labels: torch.Tensor, n_classes: int, n_real: int, n_fake: int,
                kid_subset_size: int, seed: int = FLOOR_SEED, intra: bool = True) -> dict:
    """Real vs real: the same metrics between two disjoint random parts of the real split, sized like the
    protocol (n_real vs n_fake) as far as the split allows (noise_floor_sizes). No generator can be told
    apart from the data by less than this. Intra-FID: the same per class, averaged (intra=False: left out, as
    beside the per-class mode's small real subset)."""
    order, a, b = floor_parts(len(features), n_real, n_fake, seed)
    halves = []
    for c in range(n_classes if intra else 0):
        idx = order[labels[order] == c]
        half = len(idx) // 2
        if half >= 2:
            halves.append(fid(features[idx[half:]], features[idx[:half]]))
    return {"floor_fid": fid(features[b], features[a]), **floor_kid(features[b], features[a], kid_subset_size),
            "floor_intra_fid_mean": float(np.mean(halves)) if intra else float("nan"),
            "floor_n_a": len(a), "floor_n_b": len(b)}


def floor_parts(n_total: int, n_real: int, n_fake: int, seed: int = FLOOR_SEED):
    """(the seeded order, real-side indices, fake-side indices) of the noise floor's two disjoint parts."""
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    size_a, size_b = noise_floor_sizes(n_total, n_real, n_fake)
    return order, order[:size_a], order[size_a:size_a + size_b]


def floor_kid(fake_side: torch.Tensor, real_side: torch.Tensor, kid_subset_size: int) -> dict:
    """The floor's KID entries (mean, spread, standard error, subset size) on its two parts (floor_parts): also
    what completes a floor cached before the standard error was recorded, without recomputing its intra-FID."""
    k = kid_with_error(fake_side, real_side, kid_subset_size)
    return {"floor_kid_mean": k["mean"], "floor_kid_std": k["std"], "floor_kid_se": k["se"],
            "floor_kid_subset_size": k["subset_size"]}


def summarize_per_class(rows: list[dict]) -> dict:
    return {
        "intra_fid_mean": float(np.mean([r["intra_fid"] for r in rows])),
        "diversity_ratio_mean": float(np.mean([r["diversity_ratio"] for r in rows])),
        "near_duplicate_rate_mean": float(np.mean([r["near_duplicate_rate"] for r in rows])),
        "class_coverage_mean": float(np.mean([r["class_coverage"] for r in rows])),
        "collapsed_classes": int(sum(r["collapsed"] for r in rows)),
    }
