"""Sample grids (rows = classes, columns = fixed z) and the category-morphing figure of the paper."""
from pathlib import Path

import torch

from ..io import replace_atomically


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 0..255 (torch-fidelity's convention)."""
    return (255 * (x.clamp(-1, 1) * 0.5 + 0.5)).round().to(torch.uint8)


def grid_classes(n_classes: int, max_rows: int = 10) -> list[int]:
    """Which classes get a row: all of them, or `max_rows` evenly spread ones (CIFAR-100)."""
    if n_classes <= max_rows:
        return list(range(n_classes))
    return torch.linspace(0, n_classes - 1, max_rows).round().long().tolist()


def make_grid(images: torch.Tensor, n_cols: int) -> torch.Tensor:
    import torchvision
    return torchvision.utils.make_grid(images, nrow=n_cols, padding=1, pad_value=255)


def split_channels(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, H, 3W): the red, green and blue channels side by side, each in its own colour,
    so the three digits of a stacked-digits image are readable one by one."""
    parts = []
    for c in range(images.shape[1]):
        part = torch.zeros_like(images)
        part[:, c] = images[:, c]
        parts.append(part)
    return torch.cat(parts, dim=3)


@torch.no_grad()
def class_grid(G, n_classes: int, z_dim: int, device, n_cols: int = 10, seed: int = 1234, max_rows: int = 10,
               channels_apart: bool = False):
    """uint8 (3, H', W') grid image: one row per class, the same z down each column (`channels_apart`:
    each sample shown as its three channels side by side)."""
    classes = grid_classes(n_classes, max_rows)
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n_cols, z_dim, generator=g).to(device).repeat(len(classes), 1)
    y = torch.tensor(classes, device=device).repeat_interleave(n_cols)
    was_training = G.training
    G.eval()
    images = to_uint8(G(z, y))
    G.train(was_training)
    return make_grid(split_channels(images.cpu()) if channels_apart else images.cpu(), n_cols)


@torch.no_grad()
def morph_grid(G, class_a: int, class_b: int, n_classes: int, z_dim: int, device, n_z: int = 5, n_steps: int = 8,
               seed: int = 1234, channels_apart: bool = False):
    """Category morphing: fixed z per row, the conditional-BN parameters mixed from class a to class b."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n_z, z_dim, generator=g).to(device).repeat_interleave(n_steps, 0)
    t = torch.linspace(0, 1, n_steps, device=device).repeat(n_z)
    w = torch.zeros(n_z * n_steps, n_classes, device=device)
    w[:, class_a], w[:, class_b] = 1 - t, t
    was_training = G.training
    G.eval()
    images = to_uint8(G(z, w))
    G.train(was_training)
    return make_grid(split_channels(images.cpu()) if channels_apart else images.cpu(), n_steps)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write a uint8 (3, H, W) image as PNG, atomically."""
    from PIL import Image
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    replace_atomically(Path(path), lambda f: pil.save(f, format="PNG"))
