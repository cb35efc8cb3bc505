"""Nothing lost, nothing mixed: bad image folders, unknown config keys, out-of-range seeds and resolutions,
unwritable or full run directories. Each is refused before training with one line (exit code 2), or, for the
image folder, skipped and counted where the user asked for it."""
import errno
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from cgan_bench.app import CONF_DIR, CannotWrite, cannot_write
from cgan_bench.config import ConfigError, validate
from cgan_bench.data import DataMissingError, load_dataset
from cgan_bench.data import imagefolder
from cgan_bench.train.checkpoint import load_checkpoint
from conftest import SMOKE, run_cli

COLOURS = {"blue": (0, 0, 255), "red": (255, 0, 0)}


def make_folder(root: Path, n: int = 3, colours=COLOURS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rgb in colours.items():
        (root / name).mkdir(exist_ok=True)
        for i in range(n):
            Image.new("RGB", (40, 20), rgb).save(root / name / f"{i}.png")
    return root


def png_bytes(size=(64, 64)) -> bytes:
    path = Path(os.environ["CGAN_BENCH_CACHE"]) / "noise.png"
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(path)
    return path.read_bytes()


def corrupt_png() -> bytes:
    b = bytearray(png_bytes())
    for i in range(40, len(b) - 20):
        b[i] ^= 0x5A
    return bytes(b)


BAD_FILES = {
    "corrupt.png": corrupt_png,
    "text.jpg": lambda: b"this is not a jpeg\n",
    "truncated.png": lambda: png_bytes()[:300],
}


def load(root: Path, **options):
    imagefolder._CACHE.clear()
    return load_dataset("imagefolder", "train", 16, path=str(root), **options)


# ---- A. the image folder, decoded and checked before training ----------------------------------------------

@pytest.mark.parametrize("name", BAD_FILES)
def test_an_unreadable_image_is_one_line_naming_the_file(name, tmp_path):
    root = make_folder(tmp_path / "data")
    bad = root / "red" / name
    bad.write_bytes(BAD_FILES[name]())
    with pytest.raises(DataMissingError) as err:
        load(root)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "dataset.skip_bad_files=true" in msg


def test_skip_bad_files_skips_counts_and_logs(tmp_path, caplog):
    root = make_folder(tmp_path / "data")
    for name, make in BAD_FILES.items():
        (root / "red" / name).write_bytes(make())
    with caplog.at_level(logging.WARNING):
        d = load(root, skip_bad_files=True)
    assert d.images.shape == (6, 3, 16, 16) and d.class_counts().tolist() == [3, 3]
    assert f"skipped 3 unreadable files, e.g. {root / 'red' / 'corrupt.png'}" in caplog.text


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (20, 20)).save(root / ".ipynb_checkpoints" / "x.png")
    (root / "red" / ".ipynb_checkpoints").mkdir()
    (root / "red" / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes(b"garbage")
    (root / "red" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (root / ".DS_Store").write_bytes(b"\x00")
    d = load(root)
    assert d.class_names == ["blue", "red"] and len(d) == 6


def test_an_empty_class_folder_is_refused_naming_it(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "green").mkdir()
    (root / "green" / "notes.txt").write_text("no images")
    with pytest.raises(DataMissingError, match="remove the folder or fill it") as err:
        load(root)
    assert str(root / "green") in str(err.value)


def test_a_class_of_only_unreadable_files_is_empty_even_when_skipping(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "green").mkdir()
    (root / "green" / "0.png").write_bytes(corrupt_png())
    with pytest.raises(DataMissingError, match="remove the folder or fill it") as err:
        load(root, skip_bad_files=True)
    assert str(root / "green") in str(err.value)


def test_fewer_than_two_classes_is_refused(tmp_path):
    root = make_folder(tmp_path / "data", colours={"red": (255, 0, 0)})
    (root / ".hidden_class").mkdir()
    Image.new("RGB", (20, 20)).save(root / ".hidden_class" / "0.png")
    with pytest.raises(DataMissingError, match="a class-conditional GAN needs at least 2 classes") as err:
        load(root)
    assert "did you mean" not in str(err.value)
    wrapped = make_folder(tmp_path / "wrap" / "imgs")  # one level too high: the classes are one folder down
    with pytest.raises(DataMissingError) as err:
        load(wrapped.parent)
    assert f"did you mean dataset.path={wrapped}, whose sub-folders would be the classes?" in str(err.value)


def test_symlinks_out_of_the_root_are_skipped_and_loops_detected(tmp_path, caplog):
    outside = make_folder(tmp_path / "elsewhere", colours={"green": (0, 255, 0)})
    root = make_folder(tmp_path / "data")
    (root / "green").symlink_to(outside / "green")  # a class folder outside the root: skipped
    (root / "red" / "extra.png").symlink_to(outside / "green" / "0.png")  # a file outside the root: skipped
    (root / "red" / "loop").symlink_to(root / "red")  # a loop: walked once
    (root / "blue" / "inside.png").symlink_to(root / "blue" / "0.png")  # inside the root: followed
    with caplog.at_level(logging.WARNING):
        d = load(root)
    assert d.class_names == ["blue", "red"] and d.class_counts().tolist() == [4, 3]
    assert "2 symlinks pointing outside dataset.path were skipped" in caplog.text
    assert "1 symlinked folders already visited (a symlink loop) were skipped" in caplog.text


def test_same_images_labels_and_order_as_torchvision_imagefolder(tmp_path):
    import torchvision
    from torchvision.transforms import v2
    root = make_folder(tmp_path / "data")
    for sub in ("a", "a-1", "a/b"):  # nested folders, ordered the way torchvision sorts os.walk
        (root / "red" / sub).mkdir(parents=True, exist_ok=True)
        Image.new("L", (30, 50), len(sub) * 40).save(root / "red" / sub / "x.jpg")
    Image.new("RGBA", (16, 16), (1, 2, 3, 4)).save(root / "blue" / "Z.PNG")
    d = load(root)
    def transform(img):  # the official preprocessing, written out: centered short-side square, bilinear resize
        w, h = img.size
        s = min(w, h)
        square = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        return v2.functional.pil_to_tensor(square.resize((16, 16), Image.Resampling.BILINEAR))
    ref = torchvision.datasets.ImageFolder(str(root), transform=transform,
                                           is_valid_file=lambda p: p.lower().endswith((".png", ".jpg", ".jpeg")))
    assert d.class_names == ref.classes and d.labels.tolist() == ref.targets
    assert torch.equal(d.images, torch.stack([img for img, _ in ref]))


def test_the_test_split_reuses_the_decoded_train_split(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    calls = []
    decode = imagefolder._decode
    monkeypatch.setattr(imagefolder, "_decode", lambda f, t: calls.append(f) or decode(f, t))
    train = load(root)
    test = load_dataset("imagefolder", "test", 16, path=str(root))
    assert len(calls) == 6 and test.split == "test" and torch.equal(train.images, test.images)
    Image.new("RGB", (20, 20), (0, 0, 1)).save(root / "red" / "new.png")  # the folder changed: decoded again
    assert len(load_dataset("imagefolder", "test", 16, path=str(root))) == 7 and len(calls) == 13


# ---- B. config safety (the compose API path: validate) ------------------------------------------------------

def composed(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("config", overrides=["wandb.mode=disabled", *overrides])


@pytest.mark.parametrize("overrides,message", [
    (["+train.iteration=5"], "train.iteration=5 is not allowed: no config file defines this key "
                             "(did you mean train.iterations?)"),
    (["+wandb.projet=x"], "did you mean wandb.project?"),
    (["+trian.lr=0.1"], "did you mean train.lr?"),
    (["seed=99999999999999999999"], "seed=99999999999999999999 is not allowed: an integer between 0 and 2**64-1"),
    (["seed=-1"], "an integer between 0 and 2**64-1"),
    (["dataset.resolution=4096"], "dataset.resolution=4096 is not allowed: at most 256"),
    (["dataset.resolution=512"], "at most 256"),
    (["dataset=imagefolder", "dataset.path=/x", "dataset.skip_bad_files=maybe"], "dataset.skip_bad_files"),
    (["eval.kid_subset_size=1"], "eval.kid_subset_size=1 is not allowed: an integer >= 2"),  # gave a NaN KID
])
def test_validate_refuses_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(composed(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides", [
    ["+sweep=digits"], ["+sweep=hparams"], ["+adam=B"], ["+adam=paper", "train=smoke"], ["+dataset.root=/data"],
    ["++train.lr=0.1"], ["head=concat", "head.stage=1"], ["seed=18446744073709551615"], ["dataset.resolution=256"],
    ["dataset=stacked_digits"], ["dataset=imagefolder", "dataset.path=/x", "dataset.skip_bad_files=true"],
])
def test_known_keys_and_the_shipped_sweeps_pass(overrides):
    validate(composed(*overrides))


def test_the_largest_seed_and_the_seeds_derived_from_it_are_accepted_by_torch():
    seed = 2**64 - 1
    torch.manual_seed(seed)
    torch.Generator().manual_seed((seed + 7919) % 2**64)  # evaluation noise (metrics/evaluator.py)
    torch.Generator().manual_seed((seed + 1234) % 2**64)  # sample grids (train/loop.py)
    torch.manual_seed(0)


def test_write_errors_name_the_path_and_reads_elsewhere_are_left_alone(tmp_path):
    run = tmp_path / "run"
    full = cannot_write(OSError(errno.ENOSPC, "No space left on device"), run)
    assert isinstance(full, CannotWrite) and str(full) == \
        f"cannot write {run}: No space left on device (free space or choose another hydra.run.dir)"
    ro = cannot_write(OSError(errno.EROFS, "Read-only file system", str(run / "status.json")), run)
    assert str(ro).startswith(f"cannot write {run / 'status.json'}: Read-only file system")
    assert cannot_write(OSError(errno.EACCES, "Permission denied", "/data/cat/1.png"), run) is None
    assert cannot_write(OSError(errno.ENOENT, "No such file or directory"), run) is None
    assert cannot_write(OSError(errno.ENOENT, "No such file or directory", "/data/cat/1.png"), run) is None
    in_a_file = cannot_write(OSError(errno.ENOTDIR, "Not a directory", str(run / "status.json")), run)
    assert str(in_a_file) == f"cannot write {run / 'status.json'}: a file stands where its path needs a folder; " \
        "choose another hydra.run.dir"


# ---- end to end: exit code 2, one line on stderr, no training ----------------------------------------------

def assert_refused(r, *needles: str) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def bad_folder(tmp_path: Path, case: str) -> list[str]:
    root = make_folder(tmp_path / "data")
    if case == "corrupt":
        (root / "red" / "corrupt.png").write_bytes(corrupt_png())
    elif case == "empty_class":
        (root / "green").mkdir()
    elif case == "one_class":
        root = make_folder(tmp_path / "one", colours={"red": (255, 0, 0)})
    elif case == "missing":
        root = tmp_path / "no_such_folder"
    # the harness's own feature space: missing Inception weights are refused first, before the data is read
    return ["dataset=imagefolder", f"dataset.path={root}", "dataset.resolution=16", "model=small",
            "eval.feature_space=classifier"]


CLI_CASES = [
    (["+train.iteration=5"], ["train.iteration=5", "did you mean train.iterations?"]),
    (["train.iteratons=5"], ["did you mean train.iterations?"]),
    (["seed=99999999999999999999"], ["seed=99999999999999999999", "between 0 and 2**64-1"]),
    (["dataset.resolution=4096"], ["dataset.resolution=4096", "at most 256"]),
    (["FOLDER:corrupt"], ["corrupt.png", "dataset.skip_bad_files=true"]),
    (["FOLDER:empty_class"], ["green", "remove the folder or fill it"]),
    (["FOLDER:one_class"], ["at least 2 classes"]),
    (["FOLDER:missing"], ["dataset.path=", "does not exist"]),
    (["RUN_IN_A_FILE"], ["a file stands where its path needs a folder", "hydra.run.dir"]),  # was a traceback
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,needles", CLI_CASES, ids=[" ".join(o) for o, _ in CLI_CASES])
def test_cli_refuses_before_training_with_one_line(overrides, needles, tmp_path):
    args = [a for o in overrides for a in (bad_folder(tmp_path, o.split(":")[1]) if o.startswith("FOLDER:") else [o])]
    run = tmp_path / "run"
    if args == ["RUN_IN_A_FILE"]:
        (tmp_path / "notes.txt").write_text("a file")
        args, run = [], tmp_path / "notes.txt" / "run"
    r = run_cli(*SMOKE, *args, f"hydra.run.dir={run}")
    assert_refused(r, *needles)
    assert not (run / "checkpoints").exists() if run.parent.is_dir() else (tmp_path / "notes.txt").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs (a location nobody can write)")
def test_an_unwritable_run_directory_is_one_line_before_hydra_writes(tmp_path):
    run = Path("/sys/cgan_bench_test_unwritable/run")
    r = run_cli(*SMOKE, f"hydra.run.dir={run}")
    assert_refused(r, "cannot write /sys/cgan_bench_test_unwritable", "hydra.run.dir")
    assert not run.parent.exists()


NO_SPACE_ON_SECOND_CHECKPOINT = textwrap.dedent("""
    import errno, sys
    import cgan_bench.io as io
    real, saves = io.replace_atomically, []

    def replace_atomically(path, write):  # the disk fills up while the second checkpoint is being written
        if path.name == ".next.pt":
            saves.append(path)
            if len(saves) == 2:
                def partial(f):
                    f.write(b"PK\\x03\\x04 half a checkpoint")
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(path, partial)
        return real(path, write)

    io.replace_atomically = replace_atomically
    from cgan_bench.app import cli
    sys.argv = ["cgan_bench", *sys.argv[1:]]
    cli()
""")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", NO_SPACE_ON_SECOND_CHECKPOINT, *SMOKE, "train.iterations=3",
                        "train.checkpoint_every=1", "train.sample_every=1000", f"hydra.run.dir={run}"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "TQDM_DISABLE": "1"})
    assert_refused(r, f"cannot write {run}", "No space left on device (free space or choose another hydra.run.dir)")
    state = load_checkpoint(run / "checkpoints")
    assert state is not None and state["iteration"] == 1  # the finished checkpoint is intact
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 1
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
