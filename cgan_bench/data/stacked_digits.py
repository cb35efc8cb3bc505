"""Stacked digits: a class-conditional benchmark with exactly countable modes (embedded, no download).

The Stacked-MNIST construction of the mode-collapse literature (Metz et al. 2017; Srivastava et al. 2017;
Lin et al. 2018) made class-conditional from scikit-learn's 8x8 digits: each RGB image holds one digit per
channel. The class is the red channel's digit (10 classes); the green and blue digits make 100 modes per
class (1000 in all), drawn uniformly. A generator that drops modes shows it as uncovered (green, blue)
pairs, counted exactly by a digit classifier applied per channel (metrics/modes.py).

Construction (fixed, so every run and every cache agrees): the digits' own stratified 80/20 split
(data/digits.py) keeps train and test digit images apart; each split then gets a class-balanced set of
stacked images (20000 train, 10000 test: 2000 / 1000 per class), with the green/blue digits and the
digit image used for each channel drawn uniformly with numpy's RandomState(SPLIT_SEED + split offset).
"""
import numpy as np
import torch

from . import digits
from .dataset import ImageData

SIZES = {"train": 20000, "test": 10000}
SEED_OFFSET = {"train": 1, "test": 2}
N_CLASSES, MODES_PER_CLASS = 10, 100


def stack_codes(split: str) -> np.ndarray:
    """(N, 3) digits per channel: column 0 = class (balanced), columns 1-2 uniform over 0..9."""
    n = SIZES[split]
    rng = np.random.RandomState(digits.SPLIT_SEED + SEED_OFFSET[split])
    first = np.repeat(np.arange(N_CLASSES), n // N_CLASSES)
    rest = rng.randint(0, 10, size=(n, 2))
    return np.column_stack([first, rest])


def load(split: str, resolution: int, **_) -> ImageData:
    source = digits.load(split, resolution)  # grayscale digits replicated to RGB, this split's images only
    gray = source.images[:, 0]  # (M, H, W)
    labels = source.labels.numpy()
    codes = stack_codes(split)
    rng = np.random.RandomState(digits.SPLIT_SEED + 10 * SEED_OFFSET[split])
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    channels = []
    for ch in range(3):  # for every image and channel: a random digit image of the wanted digit
        pick = np.array([by_digit[d][rng.randint(len(by_digit[d]))] for d in codes[:, ch]])
        channels.append(gray[torch.from_numpy(pick)])
    images = torch.stack(channels, dim=1).contiguous()
    return ImageData(images, torch.from_numpy(codes[:, 0].astype(np.int64)), N_CLASSES, "stacked_digits", split,
                     [str(c) for c in range(N_CLASSES)])
