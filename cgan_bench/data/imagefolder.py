"""The user's own data: one sub-folder per class of png/jpg files (torchvision's ImageFolder layout).

Images are resized on the short side and center-cropped to the configured resolution.
Splits: `train` is every image; `test` is the same set (imagefolder has no held-out split unless
the user points `path` at a folder that holds one).
"""
from pathlib import Path

import torch

from .dataset import DataMissingError, ImageData

EXTENSIONS = (".png", ".jpg", ".jpeg")


def load(split: str, resolution: int, path: str | None = None, **_) -> ImageData:
    import torchvision  # imported here: keeps `python -m cgan_bench` quick to start
    from torchvision.transforms import v2
    if not path:
        raise DataMissingError("dataset=imagefolder needs dataset.path=/folder/with/one/sub-folder/per/class")
    root = Path(path).expanduser()
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not classes:
        raise DataMissingError(f"dataset.path={root} has no class sub-folders; put each class's png/jpg images "
                               f"in its own folder, e.g. {root}/cat/001.png")
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution)])
    ds = torchvision.datasets.ImageFolder(str(root), transform=transform, allow_empty=True,
                                          is_valid_file=lambda p: p.lower().endswith(EXTENSIONS))
    if len(ds) == 0:
        raise DataMissingError(f"no {'/'.join(EXTENSIONS)} images under {root}")
    images = torch.stack([img for img, _ in ds])
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return ImageData(images, labels, len(ds.classes), "imagefolder", split, list(ds.classes))
