"""CIFAR-10/100 through torchvision's real download and loaders, under a file lock for parallel jobs."""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from .dataset import DataMissingError, ImageData, data_root, to_uint8_images

DATASETS = {  # name -> (torchvision class name, archive, extracted folder)
    "cifar10": ("CIFAR10", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python.tar.gz", "cifar-100-python"),
}


def _open(cls, root: Path, train: bool, download: bool):
    """Open the extracted dataset; download (once, under a lock) if allowed and missing."""
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{cls.__name__}.lock")):
        try:
            return cls(str(root), train=train, download=False)
        except RuntimeError:  # torchvision: "Dataset not found or corrupted"
            if not download:
                raise
        return cls(str(root), train=train, download=True)


def load(name: str, split: str, resolution: int, root: str | None = None, download: bool = True, **_) -> ImageData:
    import torchvision  # imported here: keeps `python -m cgan_bench` quick to start
    class_name, archive, folder = DATASETS[name]
    cls = getattr(torchvision.datasets, class_name)
    root_path = data_root(root)
    try:
        ds = _open(cls, root_path, split == "train", download)
    except Exception as e:  # no network, corrupt files, ...
        raise DataMissingError(
            f"{name} is not available under {root_path} ({type(e).__name__}: {e}). Download {archive} "
            f"(see https://www.cs.toronto.edu/~kriz/cifar.html) and extract it there so that "
            f"{root_path / folder} exists, or point dataset.root / $CGAN_BENCH_DATA at a folder that has it.") from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    if images.shape[-1] != resolution:
        images = to_uint8_images(F.interpolate(images.float(), size=(resolution, resolution), mode="bilinear",
                                               antialias=True, align_corners=False))
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return ImageData(images, labels, len(ds.classes), name, split, list(ds.classes))
