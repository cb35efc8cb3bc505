"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes): the embedded dataset, no download.

Upsampled bilinearly to the configured resolution and replicated to RGB; a fixed stratified
80/20 train/test split (seed 0) so every run and every cache agrees on it.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .dataset import ImageData, to_uint8_images

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load(split: str, resolution: int, **_) -> ImageData:
    from sklearn.datasets import load_digits  # imported here: keeps `python -m cgan_bench` quick to start
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = digits.images.astype(np.float32) * (255.0 / 16.0)  # values 0..16 -> 0..255
    y = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                           stratify=y)
    idx = {"train": idx_train, "test": idx_test}[split]
    images = torch.from_numpy(x[np.sort(idx)])[:, None]  # (N, 1, 8, 8)
    images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = to_uint8_images(images).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(y[np.sort(idx)])
    return ImageData(images, labels, 10, "digits", split, [str(c) for c in range(10)])
