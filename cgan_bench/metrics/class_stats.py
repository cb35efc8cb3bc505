"""Intra-FID as the paper computes it at ImageNet scale: per class, K generated images against the statistics of
ALL training images of that class (paper-facts 2.4; the authors' calc_ref_stats.py + calc_intra_FID.py: 5000
generated per class), averaged over classes.

Why a mode of its own: the pooled path (metrics/compute.py per_class_metrics) scores the one class-balanced
generation of eval.n_generated images (50 per class at 1000 classes) against every real image's features held in
memory (~15 GB at 1.28M images). Here memory is bounded by one class on both sides:
- real side: each class's (mu, sigma, n) is computed once from all its images (read one class at a time, from an
  in-memory ImageData or straight from a streamed store's memmap) and cached one file per class, so a killed build
  keeps the classes done; rank r of N builds classes r, r+N, ... (load_or_build's lock makes overlaps safe);
- generated side: K images of the class from noise seeded per class (the same on any number of ranks), embedded
  in batches, reduced to statistics and dropped.
FID math: torch-fidelity's fid_features_to_statistics, then frechet.py's distance (float64, as the pooled path:
torch-fidelity's value up to rounding, 1.3 s instead of 2.3 s per 2048-d class on a 2-core Xeon).

The other per-class columns in this mode: diversity ratio, near-duplicate rate (and `collapsed`) and within-class
coverage are computed as in the pooled path, on m = min(K, n_c, eval.diversity_pairs_max) evenly spaced samples of
each side; the real side's samples are the evenly spaced min(n_c, diversity_pairs_max) features stored with the
class statistics (so the cache folder's name holds diversity_pairs_max). Accuracy: the feature space's classifier
(or the linear probe) on the K generated images of the class.

Cache size: sigma is D x D float64, 33.5 MB per class at Inception's D=2048 (33.5 GB for ImageNet's 1000 classes),
plus the stored real samples (8 MB per class at diversity_pairs_max=1000).
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..io import atomic_torch_save
from .cache import cache_key, cache_root, load_or_build
from .compute import class_row, evenly_spaced
from .feature_space import FeatureSpace
from .frechet import frechet_distance, statistics
from .reference import extract_on

log = logging.getLogger(__name__)
CLASS_NOISE_STRIDE = 1_000_003  # class c's noise seed = run seed + EVAL_NOISE_OFFSET + this * (c + 1)


def selected_classes(n_classes: int, wanted: int) -> list[int]:
    """eval.intra_fid_classes: -1 = every class; n = n evenly spaced classes (0 and the last one included)."""
    if wanted < 0 or wanted >= n_classes:
        return list(range(n_classes))
    return sorted(set(evenly_spaced(n_classes, wanted).tolist()))


def class_rows(data, c: int) -> np.ndarray:
    """Indices (into the split) of the images of class c, in the split's order."""
    return np.flatnonzero(data.labels.cpu().numpy() == c)


def class_images(data, c: int) -> torch.Tensor:
    """The uint8 images of class c (CPU for a streamed store: read from its memmap, never the whole split)."""
    idx = class_rows(data, c)
    store = getattr(data, "store", None)
    if store is None:  # ImageData: already in memory (on its device)
        return data.images[torch.from_numpy(idx).to(data.images.device)]
    from ..data.image_store import open_images
    rows = idx if data.rows is None else np.asarray(data.rows)[idx]
    return torch.from_numpy(np.ascontiguousarray(open_images(store)[rows]))  # rows ascending: sequential reads


def class_stats_dir(space: FeatureSpace, data, cache_dir: str | None, pairs_max: int, fp: str) -> Path:
    """<cache>/class_stats/<dataset-split-count-resolution-preprocessing-space>-<fingerprint>-pairs<m>/: keyed like
    the reference features (reference.reference_path), plus the number of stored real samples per class."""
    key = cache_key(dataset=data.name, split=data.split, count=len(data), resolution=data.resolution,
                    feature_space=space.key)
    return cache_root(cache_dir) / "class_stats" / f"{key}-{fp}-pairs{pairs_max}"


@dataclass
class ClassStats:
    """One cache file per class: {'mu', 'sigma' (float64), 'n', 'real_subset' (float32), 'class'}."""
    folder: Path
    space: FeatureSpace
    data: object  # ImageData or data.image_store.StreamedImageData (the real split)
    batch_size: int
    pairs_max: int
    device: torch.device

    def path(self, c: int) -> Path:
        return self.folder / f"class_{c:05d}.pt"

    def compute(self, c: int) -> dict:
        """One class's statistics from all of its images (the class's features only are ever in memory)."""
        features, _ = extract_on(self.space, class_images(self.data, c), self.batch_size, self.device)
        if len(features) < 2:
            raise ValueError(f"class {c} of {self.data.name} {self.data.split} has {len(features)} images; intra-FID "
                             f"needs at least 2 per class")
        stats = statistics(features)
        subset = features[evenly_spaced(len(features), min(len(features), self.pairs_max))].clone()
        return {"mu": torch.from_numpy(stats["mu"]), "sigma": torch.from_numpy(stats["sigma"]),
                "n": len(features), "real_subset": subset, "class": c}

    def get(self, c: int) -> dict:
        """The cached statistics of class c (built, under a lock, where missing; a damaged file is rebuilt)."""
        def load(p):
            value = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(value, dict) or value.get("class") != c or "sigma" not in value:
                raise KeyError(f"{p} is not the statistics of class {c}")
            return value
        return load_or_build(self.path(c), load, lambda: self.compute(c), atomic_torch_save,
                             f"the real statistics of class {c}")

    def build_missing(self, classes: list[int]) -> None:
        """Build the classes of `classes` that have no file yet (a rerun after a kill starts where it stopped)."""
        todo = [c for c in classes if not self.path(c).exists()]
        if not todo:
            return
        log.info("building the real statistics of %d classes (one-time; cached in %s)", len(todo), self.folder)
        for c in tqdm(todo, desc="class statistics", unit="class", dynamic_ncols=True, mininterval=1.0):
            self.get(c)


def class_noise(seed: int, c: int, k: int, z_dim: int, device) -> torch.Tensor:
    """K latent vectors for class c, seeded by the run and the class only (so any rank draws the same)."""
    from .evaluator import EVAL_NOISE_OFFSET
    g = torch.Generator(device=device).manual_seed((seed + EVAL_NOISE_OFFSET + CLASS_NOISE_STRIDE * (c + 1)) % 2**64)
    return torch.randn(k, z_dim, generator=g, device=device)


def per_class_mode_row(c: int, gen_feats: torch.Tensor, gen_class_logits: torch.Tensor, stats: dict, *,
                       pairs_max: int, coverage_k: int, collapse_threshold: float) -> dict:
    """One per_class.csv row in the per-class mode: intra-FID against the class's cached statistics (all its
    real images), diversity against the cached real subset."""
    real_stats = {"mu": stats["mu"].numpy(), "sigma": stats["sigma"].numpy()}  # real first: frechet.py's order
    return class_row(c, frechet_distance(real_stats, statistics(gen_feats)), gen_feats, stats["real_subset"],
                     (gen_class_logits.argmax(1) == c).float().mean().item(), int(stats["n"]),
                     pairs_max=pairs_max, coverage_k=coverage_k, collapse_threshold=collapse_threshold)
