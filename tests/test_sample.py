"""Using a trained generator: cgan_bench.load_generator and `python -m cgan_bench.sample` reproduce final.png
(the labelled figure) and final_raw.png (its pixel grid)."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cgan_bench
from cgan_bench.generator_api import sample, sample_grid, sample_z
from conftest import SMOKE, run_cli

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def sample_cli(*args):
    return subprocess.run([sys.executable, "-m", "cgan_bench.sample", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def rewrite_checkpoints(run_dir, edit):
    for path in (run_dir / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        edit(state)
        torch.save(state, path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sample") / "run"
    r = run_cli(*SMOKE, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def test_load_generator_reads_the_checkpoint(run):
    gen = cgan_bench.load_generator(run)
    assert (gen.n_classes, gen.class_names, gen.z_dim, gen.resolution, gen.seed) == \
           (10, [str(i) for i in range(10)], 128, 16, 0)
    assert gen.checkpoint == run / "checkpoints" / "last.pt" and not gen.G.training
    assert (gen.head, gen.dataset, gen.iteration) == ("projection", "digits", 2)  # for the figures' titles
    info = torch.load(gen.checkpoint, weights_only=True)["generator"]
    assert info == {"n_classes": 10, "class_names": gen.class_names, "resolution": 16, "g_ch": 32, "z_dim": 128}


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to a rounding flip of 1 (of 255) on at most 1% of the values."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert a.shape == b.shape and diff.max() <= 1 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())


def test_sample_reproduces_final_png(run, tmp_path):
    raw = png(run / "samples" / "final_raw.png")  # the pixel grid; final.png is it upscaled and labelled
    row = 16 + 2  # one row of the grid: 16 px images with 1 px padding above and below
    gen = cgan_bench.load_generator(run)  # the acceptance check: load_generator + sample -> final_raw.png's first row
    grid = sample_grid(gen, sample(gen, "all", 10), 10).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(grid[:row], raw[:row])
    # one class alone: the same z and images, up to float rounding (CPU kernels differ with the batch size)
    alone = sample_grid(gen, sample(gen, [0], 10), 10).permute(1, 2, 0).numpy()
    assert np.abs(alone.astype(int) - raw[:row]).max() <= 1
    r = sample_cli(run, "--classes", "all", "--n", 10, "--format", "grid", "--out", tmp_path / "all.png")
    assert r.returncode == 0, r.stderr[-3000:]
    # another process: the same images up to the last bit of rounding (oneDNN may pick other CPU kernels there)
    assert_same_image(png(tmp_path / "all.png"), raw)
    # the default: the labelled figure, with final.png's classes, seed, labels and title
    final = png(run / "samples" / "final.png")
    r = sample_cli(run, "--out", tmp_path / "default.png")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_image(png(tmp_path / "default.png"), final)
    r = sample_cli(run, "--seed", 1, "--truncation", 0.5, "--out", tmp_path / "other.png")
    assert r.returncode == 0, r.stderr[-3000:]
    other = png(tmp_path / "other.png")  # other images, and the title's second line says so: not final.png
    assert other.shape[1] == final.shape[1] and not np.array_equal(other, final)
    r = sample_cli(run, "--classes", "0,3", "--n", 4, "--out", tmp_path / "two.pdf")  # a figure as PDF
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "two.pdf").read_bytes().startswith(b"%PDF-")


def test_files_format_writes_one_png_per_image(run, tmp_path):
    r = sample_cli(run, "--classes", "0,3,7", "--n", 4, "--format", "files", "--out", tmp_path / "imgs")
    assert r.returncode == 0, r.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert names == sorted(f"{c}_{i}.png" for c in (0, 3, 7) for i in range(4))
    gen = cgan_bench.load_generator(run)
    images = sample(gen, ["3"], 4)
    np.testing.assert_array_equal(png(tmp_path / "imgs" / "3_2.png"), images[2].permute(1, 2, 0).numpy())


def test_bad_input_is_one_line_and_exit_2(run, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for args in ([run, "--classes", "0,42"], [run, "--classes", "cat"], [tmp_path / "nope"], [tmp_path],
                 [run, "--truncation", 0], [run, "--checkpoint", tmp_path / "junk.pt"]):
        r = sample_cli(*args, "--out", tmp_path / "x.png")
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "unknown class '42'" in sample_cli(run, "--classes", "42").stderr
    for fmt, name in (("figure", "x.jpg"), ("grid", "x.pdf")):  # a file type the format cannot be
        r = sample_cli(run, "--format", fmt, "--out", tmp_path / name)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "is written as" in r.stderr, r.stderr
        assert not (tmp_path / name).exists()
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's answer")
def test_a_device_this_machine_lacks_is_named_not_a_corrupt_checkpoint(run, tmp_path):
    """--device cuda on a CPU-only machine said both checkpoints were unreadable and advised resume=false,
    which would have thrown a finished run away."""
    for device, says in (("cuda", "no CUDA device is visible on this machine; use cpu"),
                         ("gpu0", "is not a torch device")):
        r = sample_cli(run, "--device", device, "--out", tmp_path / "x.png")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert says in r.stderr and "resume=false" not in r.stderr and "checkpoint" not in r.stderr, r.stderr
    assert not (tmp_path / "x.png").exists()


def test_an_unwritable_out_is_one_line_before_sampling(run, tmp_path):
    """--out that cannot be written (a folder that cannot be made, a file where a folder must be) is refused
    with one line naming the path and exit code 2 before the generator is loaded: no traceback after sampling,
    nothing written."""
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    cases = [(["--format", "files", "--out", blocker], f"--out {blocker} is a file; --format files writes"),
             (["--out", blocker / "x.png"], f"{blocker} is a file, not a folder"),
             (["--format", "grid", "--out", blocker / "sub" / "x.png"], f"{blocker} is a file, not a folder"),
             (["--format", "files", "--out", blocker / "imgs"], f"{blocker} is a file, not a folder")]
    if Path("/proc/self").is_dir():  # Linux: nothing can be made under /proc
        cases.append((["--out", "/proc/nope/a.png"], "--out /proc/nope/a.png: cannot write in /proc"))
    for args, shown in cases:
        r = sample_cli(run, *args)
        assert r.returncode == 2, (args, r.stderr[-3000:])
        assert r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1 and shown in r.stderr, r.stderr
        assert r.stdout == "" and [p.name for p in tmp_path.iterdir()] == ["afile"] and blocker.read_text() == "mine"
    # the refusal comes before the run is read: a missing run directory is not what is reported
    r = sample_cli(tmp_path / "no_run", "--format", "files", "--out", blocker)
    assert r.returncode == 2 and "is a file; --format files" in r.stderr, r.stderr


def test_class_names_from_the_checkpoint_and_old_checkpoints(run, tmp_path):
    named = tmp_path / "named"
    shutil.copytree(run, named)
    rewrite_checkpoints(named, lambda s: s["generator"].update(class_names=NAMES))
    gen = cgan_bench.load_generator(named)
    assert gen.class_names == NAMES and gen.class_index("three") == 3 == gen.class_index("3")
    r = sample_cli(named, "--classes", "three,nine", "--n", 2, "--format", "files", "--out", tmp_path / "f")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["nine_0.png", "nine_1.png", "three_0.png",
                                                                  "three_1.png"]
    # checkpoints from before the "generator" entry: config from the run, n_classes from G, names "0".."9"
    old = tmp_path / "old"
    shutil.copytree(run, old)
    rewrite_checkpoints(old, lambda s: (s.pop("generator"), s.pop("config")))
    gen_old, gen_new = cgan_bench.load_generator(old), cgan_bench.load_generator(run)
    assert (gen_old.n_classes, gen_old.class_names, gen_old.z_dim, gen_old.resolution, gen_old.seed) == \
           (gen_new.n_classes, gen_new.class_names, gen_new.z_dim, gen_new.resolution, gen_new.seed)
    assert torch.equal(sample(gen_old, "all", 3), sample(gen_new, "all", 3))
    # last.pt unreadable: previous.pt, with a warning, and the path says so
    (old / "checkpoints" / "last.pt").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        assert cgan_bench.load_generator(old).checkpoint == old / "checkpoints" / "previous.pt"


def test_truncation_keeps_z_within_the_bound():
    plain = sample_z(500, 128, seed=7)
    assert torch.equal(plain, torch.randn(500, 128, generator=torch.Generator().manual_seed(7)))
    assert plain.abs().max() > 2  # so the bound below is doing something
    for t in (0.5, 1.0, 2.0):
        z = sample_z(500, 128, seed=7, truncation=t)
        assert z.shape == (500, 128) and z.abs().max() <= t
        assert torch.equal(z, sample_z(500, 128, seed=7, truncation=t))  # deterministic
        kept = plain.abs() <= t
        assert torch.equal(z[kept], plain[kept])  # only the entries outside the bound are redrawn
    with pytest.raises(ValueError):
        sample_z(4, 8, seed=0, truncation=0.0)


def test_import_stays_light():
    code = "import sys, cgan_bench; assert 'torch' not in sys.modules; assert callable(cgan_bench.load_generator)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
