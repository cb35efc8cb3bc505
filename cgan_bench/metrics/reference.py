"""Real-data reference features: computed once per (dataset, split, count, resolution, preprocessing,
feature space, content) and stored on disk; parallel jobs wait on a lock and share one file."""
import contextlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data import ImageData
from ..io import atomic_torch_save, atomic_write_json
from .cache import cache_key, cache_root, fingerprint, load_or_build
from .compute import effective_kid_subset_size, floor_kid, floor_parts, noise_floor, noise_floor_sizes
from .kid_error import with_floor_kid_error
from .feature_space import FeatureSpace


REAL_SUBSET_SEED = 2020  # the fixed real subset for FID/KID/PR: randperm(len(split), seed 2020)[:n_real]


def real_subset_order(n_total: int) -> torch.Tensor:
    """The seeded order whose first n_real images are the FID/KID/PR reference (the paper: 10k real)."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))


def reference_path(space: FeatureSpace, data: ImageData, cache_dir: str | None, first: int | None = None,
                   fp: str | None = None) -> Path:
    """`first`: the entry holds only the first `first` images of real_subset_order (the per-class intra-FID mode,
    where no metric needs every real image's features); `fp`: fingerprint(data), where the caller has it."""
    key = cache_key(dataset=data.name, split=data.split, count=len(data), resolution=data.resolution,
                    feature_space=space.key)
    part = "" if first is None else f"-first{first}"
    return cache_root(cache_dir) / "reference" / f"{key}{part}-{fp or fingerprint(data)}.pt"


def fit_probe(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict:
    """A multinomial logistic-regression probe on real features (for class accuracy in Inception space)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(features.numpy())
    clf = LogisticRegression(max_iter=500).fit(scaler.transform(features.numpy()), labels.numpy())
    # a class absent from the features (a small real subset) gets a row that never wins the argmax
    weight = torch.zeros(n_classes, features.shape[1])
    bias = torch.full((n_classes,), -1e9)
    present = torch.as_tensor(clf.classes_, dtype=torch.long)
    coef = clf.coef_ if len(clf.classes_) > 2 else np.concatenate([-clf.coef_, clf.coef_])  # binary: one row
    intercept = clf.intercept_ if len(clf.classes_) > 2 else np.concatenate([-clf.intercept_, clf.intercept_])
    weight[present] = torch.tensor(coef / scaler.scale_[None], dtype=torch.float32)
    bias[present] = torch.tensor(intercept - (coef * (scaler.mean_ / scaler.scale_)[None]).sum(1),
                                 dtype=torch.float32)
    return {"weight": weight, "bias": bias}


def extract_on(space: FeatureSpace, images: torch.Tensor, batch_size: int, device,
               progress: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """space.extract batch by batch, each batch moved to `device` first: images may live on the CPU (a streamed
    store's memmap) while the feature extractor runs on a GPU; only one batch is ever copied there."""
    feats, logits = [], []
    quiet = {"disable": True} if progress is None else {}
    with tqdm(total=len(images), desc=progress, unit="img", dynamic_ncols=True, mininterval=1.0, **quiet) as bar:
        for batch in images.split(batch_size):
            f, lg = space.extract(batch.to(device), batch_size)
            feats.append(f)
            logits.append(lg)
            bar.update(len(batch))
    return torch.cat(feats), torch.cat(logits)


def load_or_compute_reference(space: FeatureSpace, data: ImageData, batch_size: int,
                              cache_dir: str | None = None, first: int | None = None, fp: str | None = None,
                              device=None) -> dict:
    """{'features', 'logits', 'labels', 'probe'?} for every image of the real split (CPU tensors), or with
    `first` for the first `first` images of real_subset_order, in that order (the probe is then fit on them).
    `device`: where the images are embedded when they live elsewhere (a streamed store's memmap)."""
    path = reference_path(space, data, cache_dir, first, fp)

    def load(p):
        ref = torch.load(p, map_location="cpu", weights_only=True)
        needed = ("features", "logits", "labels") + (("probe",) if space.classify is None else ())
        if not isinstance(ref, dict) or not all(k in ref for k in needed):
            raise KeyError(f"{p} lacks one of {needed}")
        return ref

    def build():
        if first is None:
            images, labels = data.images, data.labels.cpu()
        else:
            idx = real_subset_order(len(data))[:first]
            images, labels = data.images[idx.to(data.images.device)], data.labels.cpu()[idx]
        features, logits = extract_on(space, images, batch_size, device or images.device,
                                      progress=f"reference features ({space.name})")
        ref = {"features": features, "logits": logits, "labels": labels, "key": path.stem}
        if space.classify is None:
            ref["probe"] = fit_probe(features, ref["labels"], data.n_classes)
        return ref

    count = len(data) if first is None else min(first, len(data))
    what = f"the reference features of {data.name} {data.split} ({count} images, {space.name} space)" \
        + ("" if space.classify is not None else " and its class-accuracy probe")
    return load_or_build(path, load, build, atomic_torch_save, what)  # lock-free read; corrupt: aside, rebuilt


def load_or_compute_noise_floor(space: FeatureSpace, data: ImageData, ref: dict, n_real: int, n_fake: int,
                                kid_subset_size: int, cache_dir: str | None = None, first: int | None = None,
                                fp: str | None = None) -> dict:
    """Real-vs-real floor of FID/KID/intra-FID for one protocol's sizes, computed once beside the reference
    (Inception-sized intra-FID costs minutes: one 2048-d matrix square root per class). Beside a `first` subset
    reference (the per-class mode) there is no intra-FID floor: a few images per class give no meaningful one."""
    base = reference_path(space, data, cache_dir, first, fp)
    # the name carries the sizes the floor really uses (the parts and the KID subset), so a floor cached under
    # an earlier sizing rule (the split halved where the protocol's fake side would fit; KID subsets of both
    # halves whole) is rebuilt, and one whose sizes never changed is kept
    size_a, size_b = noise_floor_sizes(len(ref["features"]), n_real, n_fake)
    kid_size = effective_kid_subset_size(size_b, size_a, kid_subset_size)
    path = base.with_name(f"{base.stem}.floor-r{size_a}-f{size_b}-k{kid_size}.json")

    def load(p):
        floor = {"floor_kid_subset_size": kid_size, **json.loads(p.read_text())}
        if "floor_kid_se" in floor:
            return floor
        floor = with_floor_kid_error(floor)  # cached before the floor's KID error was recorded
        if math.isnan(floor.get("floor_kid_se", float("nan"))):
            # the old spread cannot give it: the KID part alone is recomputed (seconds; the intra-FID kept)
            # and the file completed where writable
            _, a, b = floor_parts(len(ref["features"]), n_real, n_fake)
            floor.update(floor_kid(ref["features"][b], ref["features"][a], kid_subset_size))
            with contextlib.suppress(OSError):
                atomic_write_json(p, floor)
        return floor

    return load_or_build(path, load,  # lock-free read; corrupt: aside, rebuilt
                         lambda: noise_floor(ref["features"], ref["labels"], data.n_classes, n_real, n_fake,
                                             kid_subset_size, intra=first is None), atomic_write_json,
                         f"the real-vs-real noise floor ({size_a} vs {size_b} real images standing in for "
                         f"{n_real} real vs {n_fake} generated: FID/KID"
                         + ("; intra-FID on class halves)" if first is None else ")"))
