"""Sample grids (rows = classes, columns = fixed z) and the category-morphing figure of the paper.

Each comes twice in a run's samples/ folder: `NAME_raw.png`, the pixel-exact grid (what
`python -m cgan_bench.sample --format grid` reproduces), and `NAME.png` / `NAME.pdf`, the figure to look at:
the grid upscaled (nearest neighbour, pixels stay crisp) with class names on the rows and a title.
"""
import math
from pathlib import Path

import numpy as np
import torch

from ..io import replace_atomically

GRID_COLS = 10  # samples/final*: images per class (the same z down each column)
MORPH_Z, MORPH_STEPS = 5, 8  # samples/morph*: rows (one z each) x mixing steps from class a to class b
FIGURE_MIN_WIDTH = 600  # px: a labelled figure's grid is upscaled by an integer factor to at least this width
FIGURE_MIN_CELL = 32  # px: ... and each image to at least this height (16 px digits: 2x at least)
FIGURE_MAX_CELL = 128  # px: ... but no image above this height (a narrow grid of two columns stays small)
FIGURE_DPI = 100  # the figure is laid out in pixels at this dpi, so the upscaled grid is drawn 1:1 in the PNG
LABEL_MAX_CHARS = 24  # longer class names (image folders) are cut with "..."


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
def class_grid(G, n_classes: int, z_dim: int, device, n_cols: int = GRID_COLS, seed: int = 1234, max_rows: int = 10,
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
def morph_grid(G, class_a: int, class_b: int, n_classes: int, z_dim: int, device, n_z: int = MORPH_Z,
               n_steps: int = MORPH_STEPS, seed: int = 1234, channels_apart: bool = False):
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


# ---- labelled figures --------------------------------------------------------------------------------------

def run_title(head: str, dataset: str, iteration, seed) -> str:
    """The title line every sample figure of a run carries."""
    return f"{head} head · {dataset} · iteration {iteration} · seed {seed}"


def figure_scale(width: int, cell_height: int) -> int:
    """The integer nearest-neighbour factor: the grid at least FIGURE_MIN_WIDTH px wide where its images stay
    at most FIGURE_MAX_CELL px tall, and every image at least FIGURE_MIN_CELL px tall."""
    cell_height = max(cell_height, 1)
    return max(1, min(math.ceil(FIGURE_MIN_WIDTH / width), FIGURE_MAX_CELL // cell_height),
               math.ceil(FIGURE_MIN_CELL / cell_height))


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, C) -> (H*factor, W*factor, C), each pixel repeated (nearest neighbour)."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def _hwc(image) -> np.ndarray:
    """A uint8 grid as (H, W, 3) numpy: torch (3, H, W) as make_grid returns it, or numpy (H, W, 3) as read."""
    if isinstance(image, torch.Tensor):
        image = image.permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(image)


def _text_px(text: str, size: float, weight: str = "normal") -> float:
    """Width of `text` in pixels at font size `size` (points) and FIGURE_DPI."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath
    if not text:
        return 0.0
    return TextPath((0, 0), text, size=size, prop=FontProperties(weight=weight)).get_extents().width * FIGURE_DPI / 72


def _short(label: str) -> str:
    return label if len(label) <= LABEL_MAX_CHARS else label[:LABEL_MAX_CHARS - 3] + "..."


def grid_figure(grid, row_labels: list[str], n_cols: int, title: str, subtitle: str = "",
                col_labels: list[str] | None = None, xlabel: str = ""):
    """A matplotlib Figure of a make_grid image (1 px padding): the grid upscaled by `figure_scale` and drawn
    pixel for pixel (figimage: no resampling), `row_labels` beside the rows, `col_labels`/`xlabel` below,
    `title` and `subtitle` on top. Save it with `save_figure` (PNG: the upscaled grid is in it unchanged)."""
    from matplotlib.figure import Figure
    image = _hwc(grid)
    n_rows = len(row_labels)
    height, width = image.shape[:2]
    cell_h, cell_w = (height - 1) / n_rows, (width - 1) / n_cols  # one image plus its padding line
    scale = figure_scale(width, round(cell_h) - 1)
    big = upscale(image, scale)
    labels = [_short(str(label)) for label in row_labels]
    pad, font, title_font = 10, 10, 12
    left = round(max(_text_px(label, font) for label in labels)) + 2 * pad
    top = 2 * pad + 18 + (16 if subtitle else 0)
    bottom = pad + (18 if col_labels else 0) + (18 if xlabel else 0)
    fig_w = max(left + big.shape[1] + pad,
                round(max(_text_px(title, title_font, "bold"), _text_px(subtitle, font - 1))) + 3 * pad)
    fig_h = top + big.shape[0] + bottom
    fig = Figure(figsize=(fig_w / FIGURE_DPI, fig_h / FIGURE_DPI), dpi=FIGURE_DPI, facecolor="white")
    fig.figimage(big, xo=left, yo=bottom, origin="upper")  # offsets in pixels from the lower left corner

    def at(x_px: float, y_px_from_top: float) -> tuple[float, float]:
        return x_px / fig_w, 1 - y_px_from_top / fig_h

    fig.text(*at(fig_w / 2, pad), title, ha="center", va="top", fontsize=title_font, weight="bold")
    if subtitle:
        fig.text(*at(fig_w / 2, pad + 20), subtitle, ha="center", va="top", fontsize=font - 1)
    for r, label in enumerate(labels):  # centred on the row's image, right-aligned against the grid
        fig.text(*at(left - pad / 2, top + (r * cell_h + 0.5 + cell_h / 2) * scale), label, ha="right",
                 va="center", fontsize=font)
    grid_bottom = top + big.shape[0]
    for c, label in enumerate(col_labels or []):
        fig.text(*at(left + (c * cell_w + 0.5 + cell_w / 2) * scale, grid_bottom + 3), label, ha="center",
                 va="top", fontsize=font - 1)
    if xlabel:
        fig.text(*at(left + big.shape[1] / 2, grid_bottom + (21 if col_labels else 3)), xlabel, ha="center",
                 va="top", fontsize=font - 1)
    return fig


# No creation date in the files: rebuilding a report from the same runs gives the same bytes.
STABLE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None}}


def save_figure(fig, *paths: Path) -> None:
    """Write the figure to each path (PNG or PDF by its suffix), atomically, at FIGURE_DPI."""
    for path in paths:
        path = Path(path)
        kind = path.suffix.lstrip(".").lower()
        replace_atomically(path, lambda f: fig.savefig(f, format=kind, dpi=FIGURE_DPI, metadata=STABLE_METADATA[kind]))


def class_grid_figure(grid, class_names: list[str], classes: list[int], n_cols: int, title: str,
                      channels_apart: bool = False, note: str = ""):
    """The readable sample grid: class names on the rows, `title` on top."""
    subtitle = "rows = classes, the same z down each column"
    if channels_apart:
        subtitle += "; each image's red, green and blue channel side by side"
    return grid_figure(grid, [class_names[c] for c in classes], n_cols, title,
                       subtitle + (f"; {note}" if note else ""))


def morph_figure(grid, name_a: str, name_b: str, title: str, n_z: int = MORPH_Z, n_steps: int = MORPH_STEPS):
    """The category-morphing figure: "a -> b" in the title, the mixing weight of class b under each column."""
    weights = [f"{t:.2f}" for t in torch.linspace(0, 1, n_steps).tolist()]
    return grid_figure(grid, [f"z{i + 1}" for i in range(n_z)], n_steps,
                       f"Category morphing: class {_short(name_a)} → class {_short(name_b)}", title,
                       col_labels=weights, xlabel=f"weight of class {_short(name_b)!r} (the conditional-BN "
                                                  f"parameters mixed; the same z along each row)")


def read_png(path: Path) -> np.ndarray:
    """A PNG as uint8 (H, W, 3)."""
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def save_final_figures(G, folder: Path, class_names: list[str], cfg, iteration: int, device) -> None:
    """After training (final_raw.png is written): final.png/.pdf, the labelled grid read from final_raw.png;
    morph_raw.png and morph.png/.pdf, morphing figures.morph_classes (default 0 -> 1)."""
    folder = Path(folder)
    title = run_title(cfg.head.name, cfg.dataset.name, iteration, cfg.seed)
    apart = bool(cfg.dataset.get("channels_apart", False))
    n_classes = len(class_names)
    save_figure(class_grid_figure(read_png(folder / "final_raw.png"), class_names, grid_classes(n_classes),
                                  GRID_COLS, title, apart), folder / "final.png", folder / "final.pdf")
    if n_classes < 2:
        return
    a, b = cfg.get("figures", {}).get("morph_classes", [0, 1])
    raw = morph_grid(G, a, b, n_classes, cfg.model.z_dim, device, channels_apart=apart)
    save_png(raw, folder / "morph_raw.png")
    save_figure(morph_figure(raw, class_names[a], class_names[b], title), folder / "morph.png", folder / "morph.pdf")
