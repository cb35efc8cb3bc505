"""Datasets -> ImageData (uint8 images + labels). Add a dataset: a loader function here and conf/dataset/NAME.yaml."""
from functools import partial

from . import cifar, digits, imagefolder, stacked_digits
from .dataset import DataMissingError, ImageData, data_root
from .image_store import StreamedImageData

LOADERS = {
    "digits": digits.load,
    "stacked_digits": stacked_digits.load,
    "cifar10": partial(cifar.load, "cifar10"),
    "cifar100": partial(cifar.load, "cifar100"),
    "imagefolder": imagefolder.load,
}


def load_dataset(name: str, split: str, resolution: int, **options) -> ImageData:
    """Load one split of a dataset at a resolution; options are the dataset config's other keys (root, path, ...)."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    return LOADERS[name](split=split, resolution=resolution, **options)


__all__ = ["DataMissingError", "ImageData", "LOADERS", "StreamedImageData", "data_root", "load_dataset"]
