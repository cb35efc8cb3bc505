"""The one in-memory dataset type every loader returns: uint8 images and labels, kept on the training device."""
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch


class DataMissingError(RuntimeError):
    """Data files are absent and could not be fetched; the message says where they go."""


@dataclass
class ImageData:
    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    n_classes: int
    name: str
    split: str
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        if not self.class_names:
            self.class_names = [str(c) for c in range(self.n_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def to(self, device) -> "ImageData":
        return ImageData(self.images.to(device), self.labels.to(device), self.n_classes, self.name, self.split,
                         self.class_names)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch drawn on the data's device (no host round trip)."""
        idx = torch.randint(0, len(self.labels), (batch_size,), device=self.labels.device)
        return self.images[idx], self.labels[idx]

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.n_classes)

    def image_chunks(self, size: int):
        """The images in order, `size` at a time (StreamedImageData reads them from disk this way)."""
        return self.images.split(size)


def data_root(configured: str | None) -> Path:
    """Where datasets live: the config value, else $CGAN_BENCH_DATA, else ~/.cache/cgan_bench/datasets."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("CGAN_BENCH_DATA"):
        return Path(os.environ["CGAN_BENCH_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "cgan_bench" / "datasets"


def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 255] -> uint8, rounding to nearest."""
    return x.clamp(0, 255).round().to(torch.uint8)
