"""Paper-ready figures: labelled, upscaled sample grids and morphing (the pixel grid inside them unchanged),
morph classes from the config, and the report's figures as PNG and PDF."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import cgan_bench
from cgan_bench.models import Generator
from cgan_bench.report import plots
from cgan_bench.train.samples import (class_grid_figure, make_grid, morph_grid, read_png, save_final_figures,
                                      save_figure, save_png, split_channels)
from conftest import SMOKE, run_cli

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def random_grid(n_rows: int, n_cols: int, size: int, channels_apart: bool = False, seed: int = 0) -> torch.Tensor:
    """A make_grid image of random uint8 images (colourful: easy to find among black text)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 240, (n_rows * n_cols, 3, size, size), generator=g, dtype=torch.uint8)
    return make_grid(split_channels(images) if channels_apart else images, n_cols)


def find_upscaled(figure: np.ndarray, grid: np.ndarray) -> int:
    """The integer factor s at which `grid` (H, W, 3), repeated s x s per pixel, lies unchanged in `figure`:
    the grid's (colourful) images are the rows and columns with the most coloured pixels (text is black or grey,
    anti-aliased); its white 1 px border is s px wide around them."""
    coloured = figure.max(axis=2) != figure.min(axis=2)
    rows, cols = coloured.sum(axis=1), coloured.sum(axis=0)
    ys, xs = np.flatnonzero(rows > 0.5 * rows.max()), np.flatnonzero(cols > 0.5 * cols.max())
    s = round((xs[-1] - xs[0] + 1) / (grid.shape[1] - 2))  # the image area: the grid less its 1 px border
    big = grid.repeat(s, axis=0).repeat(s, axis=1)
    y0, x0 = ys[0] - s, xs[0] - s
    np.testing.assert_array_equal(figure[y0:y0 + big.shape[0], x0:x0 + big.shape[1]], big)
    return s


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def assert_pdf(path) -> None:
    """A whole PDF file: the header, one page object, the end-of-file marker."""
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF"), data[:20]
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 1


@pytest.mark.parametrize("size,channels_apart,scale", [(16, False, 4), (32, False, 2), (16, True, 2)])
def test_labelled_grid_holds_the_pixel_grid_upscaled(tmp_path, size, channels_apart, scale):
    grid = random_grid(10, 10, size, channels_apart)
    fig = class_grid_figure(grid, NAMES, list(range(10)), 10, "projection head · cifar10 · iteration 5 · seed 0",
                            channels_apart)
    save_figure(fig, tmp_path / "final.png", tmp_path / "final.pdf")
    figure = png(tmp_path / "final.png")
    raw = grid.permute(1, 2, 0).numpy()
    assert find_upscaled(figure, raw) == scale  # nearest neighbour by an integer factor: every pixel kept
    assert figure.shape[1] >= 600 and figure.shape[1] >= raw.shape[1] * scale + 60  # + the row labels
    assert figure.shape[0] >= raw.shape[0] * scale + 30  # + the title
    assert scale * size >= 32  # every image at least 32 px tall
    assert_pdf(tmp_path / "final.pdf")


def test_long_class_names_and_a_narrow_grid_still_fit(tmp_path):
    grid = random_grid(3, 2, 16)
    names = ["a_very_long_image_folder_name_indeed", "b", "c"]
    save_figure(class_grid_figure(grid, names, [0, 1, 2], 2, "t" * 90), tmp_path / "f.png")
    figure = png(tmp_path / "f.png")
    assert find_upscaled(figure, grid.permute(1, 2, 0).numpy()) == 8  # images at most 128 px: 8x for 16 px
    assert figure.shape[1] < 1200  # the long name is cut, the figure is as wide as the title needs


def tiny_generator(n_classes: int = 10) -> Generator:
    """An untrained G whose classes differ (fresh conditional BN starts every class at gamma 1, beta 0)."""
    torch.manual_seed(0)
    G = Generator(n_classes, 16, 8, 16).eval()
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return G


def figures_cfg(morph_classes, channels_apart=False):
    return OmegaConf.create({"head": {"name": "projection"}, "seed": 3, "model": {"z_dim": 16},
                             "dataset": {"name": "digits", "channels_apart": channels_apart},
                             "figures": {"morph_classes": morph_classes}})


def test_morph_classes_come_from_the_config(tmp_path):
    G = tiny_generator()
    names = [str(c) for c in range(10)]
    for pair in ([0, 1], [2, 7]):
        folder = tmp_path / f"m{pair[0]}{pair[1]}"
        folder.mkdir()
        save_png(random_grid(10, 10, 16), folder / "final_raw.png")
        save_final_figures(G, folder, names, figures_cfg(pair), 12, "cpu")
        expected = morph_grid(G, pair[0], pair[1], 10, 16, "cpu").permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(read_png(folder / "morph_raw.png"), expected)
        find_upscaled(png(folder / "morph.png"), expected)
        find_upscaled(png(folder / "final.png"), read_png(folder / "final_raw.png"))
        for name in ("final.pdf", "morph.pdf"):
            assert_pdf(folder / name)
    assert not np.array_equal(read_png(tmp_path / "m01" / "morph_raw.png"),
                              read_png(tmp_path / "m27" / "morph_raw.png"))


def test_bad_morph_classes_are_one_line_before_training(tmp_path):
    for value, words in (("[0,10]", "between 0 and 9"), ("[3,3]", "two different class indices"),
                         ("5", "two class indices")):
        run_dir = tmp_path / value.strip("[]").replace(",", "_")
        r = run_cli(*SMOKE, f"figures.morph_classes={value}", f"hydra.run.dir={run_dir}")
        assert r.returncode == 2, r.stderr[-2000:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "figures.morph_classes" in lines[0] and words in lines[0], r.stderr
        assert not (run_dir / "checkpoints").exists()


def synthetic_curves() -> pd.DataFrame:
    rows = []
    for head, base in (("projection", 20.0), ("concat", 30.0), ("none", 900.0)):
        for seed in (0, 1):
            for it in (10, 20):
                rows.append({"head": head, "seed": seed, "iteration": it, "phase": "curve", "column": "digits",
                             "fid": base / it * 10 + seed, "is_mean": 2.0 + seed, "n_generated": 100})
            rows.append({"head": head, "seed": seed, "iteration": 20, "phase": "final", "column": "digits",
                         "fid": base + seed, "is_mean": 2.5, "n_generated": 1000})
    return pd.DataFrame(rows)


def synthetic_per_class() -> pd.DataFrame:
    rows = []
    for head, base in (("projection", 20.0), ("concat", 40.0), ("none", 3000.0)):
        for c in range(10):
            rows.append({"head": head, "seed": 0, "class": c, "column": "digits", "intra_fid": base + 3 * c,
                         "diversity_ratio": 0.5 + c / 20})
    return pd.DataFrame(rows)


def test_report_figures_are_png_and_pdf(tmp_path):
    curves = plots.curve_plot(synthetic_curves(), "digits", tmp_path)
    per_class = plots.per_class_plot(synthetic_per_class(), "digits", tmp_path)
    for path in (curves, per_class):
        with Image.open(path) as image:
            assert image.format == "PNG"
        assert_pdf(path.with_suffix(".pdf"))


def old_run(tmp_path, channels_apart: bool):
    """A run directory from before the labelled figures: final.png and morph.png are pixel grids."""
    run = tmp_path / ("old_apart" if channels_apart else "old")
    (run / "samples").mkdir(parents=True)
    save_png(random_grid(10, 10, 16, channels_apart), run / "samples" / "final.png")
    save_png(random_grid(5, 8, 16, channels_apart, seed=1), run / "samples" / "morph.png")
    pd.DataFrame({"class": range(10), "intra_fid": 1.0}).to_csv(run / "per_class.csv", index=False)
    return run


def test_report_labels_old_runs_and_copies_new_ones(tmp_path):
    new = tmp_path / "new"
    (new / "samples").mkdir(parents=True)
    save_png(random_grid(10, 10, 16), new / "samples" / "final_raw.png")
    save_final_figures(tiny_generator(), new / "samples", [str(c) for c in range(10)], figures_cfg([4, 5]), 7,
                       "cpu")
    old, old_apart = old_run(tmp_path, False), old_run(tmp_path, True)
    done = pd.DataFrame({"column": "digits", "head": ["projection", "concat", "none"], "seed": 0,
                         "path": [str(new), str(old), str(old_apart)], "dataset": "digits", "iteration": 7,
                         "resolution": 16})
    out = tmp_path / "report"
    out.mkdir()
    images = plots.copy_run_images(done, "digits", out)
    assert set(images) == {"projection", "concat", "none"}
    assert all(set(files) == {"samples", "morph"} for files in images.values())
    for name in ("final", "morph"):  # a new run's labelled figures are copied as they are
        kind = "samples" if name == "final" else "morph"
        assert (out / f"{kind}_digits_projection.png").read_bytes() == (new / "samples" / f"{name}.png").read_bytes()
        assert (out / f"{kind}_digits_projection.pdf").read_bytes() == (new / "samples" / f"{name}.pdf").read_bytes()
    for head, run in (("concat", old), ("none", old_apart)):  # an old run's pixel grids are labelled here
        for kind, name in (("samples", "final"), ("morph", "morph")):
            figure = png(images[head][kind])
            find_upscaled(figure, read_png(run / "samples" / f"{name}.png"))
            assert figure.shape[1] >= 600
            assert_pdf(images[head][kind].with_suffix(".pdf"))


@pytest.mark.slow
def test_a_run_writes_labelled_figures_of_its_configured_morph(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli(*SMOKE, "figures.morph_classes=[3,5]", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    samples = run_dir / "samples"
    raw = read_png(samples / "final_raw.png")
    assert raw.shape == (171, 171, 3)  # 10 x 10 digits of 16 px, 1 px padding
    assert find_upscaled(png(samples / "final.png"), raw) == 4
    for name in ("final.pdf", "morph.pdf"):
        assert_pdf(samples / name)
    gen = cgan_bench.load_generator(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert (gen.head, gen.dataset, gen.iteration) == ("projection", "digits", status["iteration"])
    expected = morph_grid(gen.G, 3, 5, 10, gen.z_dim, "cpu").permute(1, 2, 0).numpy()
    morph = read_png(samples / "morph_raw.png")
    assert np.abs(morph.astype(int) - expected.astype(int)).max() <= 1  # float rounding across processes
    find_upscaled(png(samples / "morph.png"), morph)


def captured_figure(monkeypatch):
    """The figure a report plot draws, kept open instead of written (save_png_and_pdf replaced)."""
    seen = {}
    monkeypatch.setattr(plots, "save_png_and_pdf", lambda fig, title, path: seen.update(fig=fig, title=title) or path)
    return seen


def test_curves_draw_each_real_vs_real_floor_with_its_image_counts(tmp_path, monkeypatch):
    curves = synthetic_curves()
    curves["floor_n_a"] = 1437
    curves["floor_n_b"] = curves["n_generated"]
    curves["floor_fid"] = np.where(curves["phase"] == "curve", 12.5, 4.25)  # a 100- and a 1000-image fake side
    seen = captured_figure(monkeypatch)
    plots.curve_plot(curves, "digits", tmp_path)
    fid_axes = seen["fig"].axes[0]
    flat = sorted(line.get_ydata()[0] for line in fid_axes.lines if len(set(line.get_ydata())) == 1
                  and line.get_linestyle() != "None")
    assert flat == [4.25, 12.5]
    labels = [t.get_text() for t in seen["fig"].axes[-1].get_legend().get_texts()]
    assert "real vs real FID (100 vs 1437 images)" in labels and "real vs real FID (1000 vs 1437 images)" in labels


def test_per_class_bars_show_the_spread_over_seeds(tmp_path, monkeypatch):
    one = synthetic_per_class()
    other = one.assign(seed=1, intra_fid=one["intra_fid"] + 10.0)  # every class 10 worse on seed 1
    seen = captured_figure(monkeypatch)
    plots.per_class_plot(pd.concat([one, other]), "digits", tmp_path)
    assert "whiskers = min..max over seeds" in seen["title"]
    intra = seen["fig"].axes[0]
    whiskers = [c for c in intra.containers if getattr(c, "has_yerr", False)]
    assert len(whiskers) == 3  # one per head
    # projection's class 0: seeds 20 and 30, bar at 25, whisker from 20 to 30
    segments = {tuple(np.round(s[:, 1], 6)) for c in whiskers for s in c.lines[2][0].get_segments()}
    assert (20.0, 30.0) in segments
