"""Real-data reference features: computed once per (dataset, split, count, resolution, preprocessing,
feature space, content) and stored on disk; parallel jobs wait on a lock and share one file."""
import json
from pathlib import Path

import torch

from ..data import ImageData
from ..io import atomic_torch_save, atomic_write_json
from .cache import cache_key, cache_root, fingerprint, load_or_build
from .compute import noise_floor
from .feature_space import FeatureSpace


def reference_path(space: FeatureSpace, data: ImageData, cache_dir: str | None) -> Path:
    key = cache_key(dataset=data.name, split=data.split, count=len(data), resolution=data.resolution,
                    feature_space=space.key)
    return cache_root(cache_dir) / "reference" / f"{key}-{fingerprint(data)}.pt"


def fit_probe(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict:
    """A multinomial logistic-regression probe on real features (for class accuracy in Inception space)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(features.numpy())
    clf = LogisticRegression(max_iter=500).fit(scaler.transform(features.numpy()), labels.numpy())
    weight = torch.tensor(clf.coef_ / scaler.scale_[None], dtype=torch.float32)
    bias = torch.tensor(clf.intercept_ - (clf.coef_ * (scaler.mean_ / scaler.scale_)[None]).sum(1), dtype=torch.float32)
    return {"weight": weight, "bias": bias}


def load_or_compute_reference(space: FeatureSpace, data: ImageData, batch_size: int,
                              cache_dir: str | None = None) -> dict:
    """{'features', 'logits', 'labels', 'probe'?} for every image of the real split (CPU tensors)."""
    path = reference_path(space, data, cache_dir)

    def load(p):
        ref = torch.load(p, map_location="cpu", weights_only=True)
        needed = ("features", "logits", "labels") + (("probe",) if space.classify is None else ())
        if not isinstance(ref, dict) or not all(k in ref for k in needed):
            raise KeyError(f"{p} lacks one of {needed}")
        return ref

    def build():
        features, logits = space.extract(data.images, batch_size, progress=f"reference features ({space.name})")
        ref = {"features": features, "logits": logits, "labels": data.labels.cpu(), "key": path.stem}
        if space.classify is None:
            ref["probe"] = fit_probe(features, ref["labels"], data.n_classes)
        return ref

    what = f"the reference features of {data.name} {data.split} ({len(data)} images, {space.name} space)" \
        + ("" if space.classify is not None else " and its class-accuracy probe")
    return load_or_build(path, load, build, atomic_torch_save, what)  # lock-free read; corrupt: aside, rebuilt


def load_or_compute_noise_floor(space: FeatureSpace, data: ImageData, ref: dict, n_real: int, n_fake: int,
                                kid_subset_size: int, cache_dir: str | None = None) -> dict:
    """Real-vs-real floor of FID/KID/intra-FID for one protocol's sizes, computed once beside the reference
    (Inception-sized intra-FID costs minutes: one 2048-d matrix square root per class)."""
    base = reference_path(space, data, cache_dir)
    path = base.with_name(f"{base.stem}.floor-r{n_real}-f{n_fake}-k{kid_subset_size}.json")
    return load_or_build(path, lambda p: json.loads(p.read_text()),  # lock-free read; corrupt: aside, rebuilt
                         lambda: noise_floor(ref["features"], ref["labels"], data.n_classes, n_real, n_fake,
                                             kid_subset_size), atomic_write_json,
                         f"the real-vs-real noise floor ({n_real} vs {n_fake} images, FID/KID/intra-FID)")
