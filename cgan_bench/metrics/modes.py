"""Exact mode counts for stacked digits: which (green, blue) digit pairs a class's samples cover.

Each image's three channels are read by the digit classifier (feature space `digit_channels`), giving a
triple (d0, d1, d2). For the samples generated for class c, the mode is (d1, d2): 100 possible per class,
1000 triples in all. A perfect conditional generator covers all 100 modes of every class uniformly
(KL to uniform ~ 0 up to sampling noise); mode collapse shows as uncovered modes and a large KL. The same
numbers for real held-out images, drawn in equal number per class, are the ceiling (they include the digit
classifier's own errors).
"""
import numpy as np
import torch

MODES_PER_CLASS = 100


def mode_histograms(channel_digits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n_classes, 100) counts of the (d1, d2) pairs among the samples of each requested class."""
    mode = channel_digits[:, 1] * 10 + channel_digits[:, 2]
    flat = labels.long() * MODES_PER_CLASS + mode.long()
    return torch.bincount(flat, minlength=n_classes * MODES_PER_CLASS).view(n_classes, MODES_PER_CLASS)


def kl_to_uniform(counts: torch.Tensor) -> float:
    """KL(empirical histogram || uniform) in nats; 0 for a perfectly even histogram, log(K) for one bin."""
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float((p * torch.log(p * len(counts))).sum())


def mode_stats(channel_digits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[dict, list[dict]]:
    """Summary {modes_total, modes_covered_mean, mode_kl_mean} and one row per class {modes_covered, mode_kl}."""
    hist = mode_histograms(channel_digits, labels, n_classes)
    rows = [{"class": c, "modes_covered": int((hist[c] > 0).sum()), "mode_kl": kl_to_uniform(hist[c])}
            for c in range(n_classes)]
    triples = {tuple(t) for t in channel_digits.tolist()}
    return ({"modes_total": len(triples),
             "modes_covered_mean": float(np.mean([r["modes_covered"] for r in rows])),
             "mode_kl_mean": float(np.mean([r["mode_kl"] for r in rows]))}, rows)


def balanced_subset(labels: torch.Tensor, n_classes: int, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of `per_class` items of each class (without replacement where the class has enough)."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(n_classes):
        idx = torch.nonzero(labels.cpu() == c).flatten()
        if len(idx) == 0:
            raise ValueError(f"class {c} has no real held-out images for the mode ceiling")
        if len(idx) >= per_class:
            picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
        else:
            picks.append(idx[torch.randint(len(idx), (per_class,), generator=g)])
    return torch.cat(picks)


def mode_metrics(gen_digits: torch.Tensor, gen_labels: torch.Tensor, real_digits: torch.Tensor,
                 real_labels: torch.Tensor, n_classes: int, collapse_fraction: float) -> tuple[dict, list[dict]]:
    """Generated mode statistics beside the real ceiling (same count per class). A class is mode-collapsed
    when it covers fewer than `collapse_fraction` x the modes the real images of that class cover."""
    summary, rows = mode_stats(gen_digits, gen_labels, n_classes)
    real_summary, real_rows = mode_stats(real_digits, real_labels, n_classes)
    for row, real in zip(rows, real_rows):
        row["real_modes_covered"] = real["modes_covered"]
        row["real_mode_kl"] = real["mode_kl"]
        row["mode_collapsed"] = bool(row["modes_covered"] < collapse_fraction * real["modes_covered"])
    summary.update({f"real_{k}": v for k, v in real_summary.items()})
    summary["mode_collapsed_classes"] = int(sum(r["mode_collapsed"] for r in rows))
    return summary, rows
