"""Metric math on features: torch-fidelity's functions for IS/FID/KID/precision-recall, plus the per-class
statistics the paper's claim is about (intra-FID, diversity ratio, coverage, class accuracy).

Everything here takes features already extracted (CPU tensors), so one feature pass feeds every metric.
"""
import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, calc_cdist_full, prc_features_to_metric

RNG_SEED = 2020  # torch-fidelity's default, so subsets are reproducible


def fid(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    stats_a = fid_features_to_statistics(features_a.double())
    stats_b = fid_features_to_statistics(features_b.double())
    return fid_statistics_to_metric(stats_a, stats_b, verbose=False)[KEY_METRIC_FID]


def inception_score(logits: torch.Tensor, splits: int) -> tuple[float, float]:
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=RNG_SEED)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def kid(fake: torch.Tensor, real: torch.Tensor, subset_size: int, subsets: int = 100) -> tuple[float, float]:
    size = min(subset_size, len(fake), len(real))
    out = kid_features_to_metric(fake, real, kid_subsets=subsets, kid_subset_size=size, rng_seed=RNG_SEED,
                                 verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int) -> tuple[float, float]:
    out = prc_features_to_metric(fake, real, prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=True,
                                 verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> float:
    """Naeem et al. 2020: share of real samples whose k-NN ball (among reals) contains at least one fake."""
    radius = calc_cdist_full(real, real).kthvalue(k + 1, dim=1).values  # +1: the sample itself is at 0
    nearest_fake = calc_cdist_full(real, fake).min(dim=1).values
    return (nearest_fake < radius).float().mean().item()


def mean_pairwise_distance(features: torch.Tensor) -> float:
    return torch.pdist(features.double()).mean().item()


def evenly_spaced(n_total: int, n: int) -> torch.Tensor:
    """Indices of n items spread evenly over n_total (deterministic subsampling)."""
    return torch.linspace(0, n_total - 1, min(n, n_total)).round().long()


def per_class_metrics(gen_feats: torch.Tensor, gen_logits: torch.Tensor, gen_labels: torch.Tensor,
                      real_feats: torch.Tensor, real_labels: torch.Tensor, n_classes: int, *,
                      coverage_k: int = 5, pairs_max: int = 1000, collapse_threshold: float = 0.5) -> list[dict]:
    """One row per class: intra-FID (all real of the class vs generated of the class), diversity ratio,
    coverage and accuracy (argmax of the feature space's classifier logits)."""
    rows = []
    predicted = gen_logits.argmax(dim=1)
    for c in range(n_classes):
        g, r = gen_feats[gen_labels == c], real_feats[real_labels == c]
        m = min(len(g), len(r), pairs_max)
        if m < 2:
            raise ValueError(f"class {c} has {len(g)} generated and {len(r)} real samples; need at least 2 of each")
        g_sub, r_sub = g[evenly_spaced(len(g), m)], r[evenly_spaced(len(r), m)]
        ratio = mean_pairwise_distance(g_sub) / max(mean_pairwise_distance(r_sub), 1e-12)
        rows.append({
            "class": c,
            "intra_fid": fid(g, r),
            "diversity_ratio": ratio,
            "coverage": coverage(r_sub, g_sub, min(coverage_k, m - 1)),
            "accuracy": (predicted[gen_labels == c] == c).float().mean().item(),
            "collapsed": bool(ratio < collapse_threshold),
            "n_generated": len(g),
            "n_real": len(r),
        })
    return rows


def overall_metrics(fid_fake: torch.Tensor, real: torch.Tensor, all_logits: torch.Tensor, *, isc_splits: int,
                    kid_subset_size: int, prc_k: int) -> dict:
    """Distribution-level metrics: FID/KID/precision/recall on (fid_fake, real), IS on all generated logits."""
    is_mean, is_std = inception_score(all_logits, isc_splits)
    kid_mean, kid_std = kid(fid_fake, real, kid_subset_size)
    precision, recall = precision_recall(fid_fake, real, prc_k)
    return {"is_mean": is_mean, "is_std": is_std, "fid": fid(fid_fake, real), "kid_mean": kid_mean,
            "kid_std": kid_std, "precision": precision, "recall": recall}


def summarize_per_class(rows: list[dict]) -> dict:
    return {
        "intra_fid_mean": float(np.mean([r["intra_fid"] for r in rows])),
        "diversity_ratio_mean": float(np.mean([r["diversity_ratio"] for r in rows])),
        "coverage_mean": float(np.mean([r["coverage"] for r in rows])),
        "collapsed_classes": int(sum(r["collapsed"] for r in rows)),
    }
