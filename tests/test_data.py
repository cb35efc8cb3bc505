"""Datasets: digits, CIFAR in torchvision's on-disk format written by the test, imagefolder from pngs."""
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from cgan_bench.data import DataMissingError, load_dataset


def test_digits_is_uint8_rgb_with_a_fixed_split():
    train = load_dataset("digits", "train", 16)
    test = load_dataset("digits", "test", 16)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 16, 16)
    assert len(train) + len(test) == 1797 and train.n_classes == 10
    assert torch.equal(train.images[:, 0], train.images[:, 1])  # grey replicated to RGB
    assert train.images.max() == 255 and train.images.min() == 0
    again = load_dataset("digits", "train", 16)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert (train.class_counts() > 130).all()  # stratified


def test_digits_matches_sklearn_pixels_at_native_scale():
    from sklearn.datasets import load_digits
    raw = load_digits()
    d16 = load_dataset("digits", "train", 16)
    # every 8x8 image upsampled 2x: the mean brightness is preserved (bilinear), within rounding
    src_mean = raw.images.mean() * 255 / 16
    assert abs(d16.images.float().mean().item() - src_mean) < 3.0


def test_sampling_stays_on_the_data_device():
    d = load_dataset("digits", "train", 16)
    x, y = d.sample(32)
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.uint8 and y.device == d.images.device
    # each sampled image carries its own label
    for xi, yi in zip(x[:5], y[:5]):
        matches = (d.images == xi).flatten(1).all(1)
        assert yi.item() in d.labels[matches].tolist()


def skip_md5(monkeypatch):
    """torchvision checks each file's md5, which files the test writes cannot match; it still checks they
    exist, and everything else is torchvision's real loader."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def _write_cifar10(root, n_per_batch=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    expected = {}
    for name in names:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        expected[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n_per_batch}, f)
    return expected


def test_cifar10_loader_reads_torchvision_format(tmp_path, monkeypatch):
    expected = _write_cifar10(tmp_path)
    skip_md5(monkeypatch)
    train = load_dataset("cifar10", "train", 32, root=str(tmp_path), download=False)
    test = load_dataset("cifar10", "test", 32, root=str(tmp_path), download=False)
    assert len(train) == 100 and len(test) == 20 and train.class_names[3] == "class3"
    data, labels = expected["data_batch_1"]
    first = torch.from_numpy(data[0].reshape(3, 32, 32))
    assert torch.equal(train.images[0], first) and train.labels[0].item() == labels[0]
    small = load_dataset("cifar10", "test", 16, root=str(tmp_path), download=False)
    assert small.images.shape == (20, 3, 16, 16) and small.images.dtype == torch.uint8


def test_cifar100_loader_reads_torchvision_format(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 30), ("test", 10)):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": rng.integers(0, 100, n).tolist(),
                         "coarse_labels": rng.integers(0, 20, n).tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    skip_md5(monkeypatch)
    train = load_dataset("cifar100", "train", 32, root=str(tmp_path), download=False)
    assert len(train) == 30 and train.n_classes == 100


def test_missing_cifar_without_network_says_where_files_go(tmp_path):
    with pytest.raises(DataMissingError) as err:
        load_dataset("cifar10", "train", 32, root=str(tmp_path / "empty"), download=True)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and str(tmp_path / "empty") in msg and "dataset.root" in msg


def test_imagefolder_resizes_and_center_crops(tmp_path):
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    for name, rgb in colours.items():
        (tmp_path / name).mkdir()
        for i in range(3):
            img = Image.new("RGB", (40, 20), rgb)  # wide: the center crop keeps the middle square
            img.save(tmp_path / name / f"{i}.png")
    (tmp_path / "red" / "notes.txt").write_text("ignored")
    d = load_dataset("imagefolder", "train", 16, path=str(tmp_path))
    assert d.images.shape == (6, 3, 16, 16) and d.class_names == ["blue", "red"]
    blue = d.images[d.labels == 0].float().mean(dim=(0, 2, 3))
    assert blue[2] > 250 and blue[0] < 5


def test_imagefolder_without_class_folders_is_a_clear_error(tmp_path):
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DataMissingError, match="no class sub-folders"):
        load_dataset("imagefolder", "train", 16, path=str(tmp_path))


def test_imagenet_with_a_flat_val_folder_is_refused_not_two_classes(tmp_path):
    """ILSVRC's val tarball unpacks flat: train/<classes> beside a flat val/ must not load as the classes
    `train` and `val` (a 2-class GAN, silently); nor train/ alone."""
    write_numbered_folder(tmp_path / "train", {"n01": 3, "n02": 3})
    (tmp_path / "val").mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16)).save(tmp_path / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(DataMissingError) as err:
        load_dataset("imagefolder", "train", 16, path=str(tmp_path))
    # one line naming the problem and both ways out
    assert f"{tmp_path / 'val'} has no class folders (as ImageNet val/ unpacks)" in str(err.value)
    assert f"dataset.path={tmp_path / 'train'}" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(DataMissingError, match="val does not exist"):
        load_dataset("imagefolder", "train", 16, path=str(tmp_path))
    d = load_dataset("imagefolder", "train", 16, path=str(tmp_path / "train"), val_fraction=0.34)  # the way out
    assert d.class_names == ["n01", "n02"]


# ---- imagefolder's held-out split ----------------------------------------------------------------------------

def write_numbered_folder(root, counts: dict[str, int]):
    """One 16x16 image per (class, i) whose colour names it: red = 10 * class index + 1, green = i."""
    for c, (name, n) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (16, 16), (10 * c + 1, i, 7)).save(root / name / f"{i:03d}.png")
    return root


def image_ids(d) -> list[tuple[int, int]]:
    return sorted((int(r), int(g)) for r, g in d.images[:, :2, 0, 0].tolist())


def test_imagefolder_holds_out_a_seeded_fraction_of_each_class(tmp_path):
    from cgan_bench.data import imagefolder
    root = write_numbered_folder(tmp_path / "data", {"a": 20, "b": 10, "c": 3})
    train = load_dataset("imagefolder", "train", 16, path=str(root), val_fraction=0.2)
    test = load_dataset("imagefolder", "test", 16, path=str(root), val_fraction=0.2)
    assert (train.split, test.split) == ("train", "test") and test.class_names == ["a", "b", "c"]
    assert test.class_counts().tolist() == [4, 2, 1] and train.class_counts().tolist() == [16, 8, 2]
    assert not set(image_ids(train)) & set(image_ids(test))  # disjoint
    assert sorted(image_ids(train) + image_ids(test)) == [(10 * c + 1, i) for c, n in enumerate((20, 10, 3))
                                                          for i in range(n)]
    for d in (train, test):  # labels follow the images (red channel names the class)
        assert ((d.images[:, 0, 0, 0] - 1) // 10).tolist() == d.labels.tolist()
    imagefolder._CACHE.clear()  # decoded afresh: the same images held out
    assert image_ids(load_dataset("imagefolder", "test", 16, path=str(root), val_fraction=0.2)) == image_ids(test)
    (root / "0first").mkdir()  # a new class, sorted first: the other classes keep their held-out images
    for i in range(5):
        Image.new("RGB", (16, 16), (200, i, 7)).save(root / "0first" / f"{i}.png")
    again = load_dataset("imagefolder", "test", 16, path=str(root), val_fraction=0.2)
    assert again.class_names == ["0first", "a", "b", "c"] and len(again) == 1 + len(test)
    assert set(image_ids(test)) < set(image_ids(again))


def test_imagefolder_fraction_zero_tests_on_the_training_images(tmp_path):
    root = write_numbered_folder(tmp_path / "data", {"a": 4, "b": 4})
    train, test = (load_dataset("imagefolder", s, 16, path=str(root), val_fraction=0) for s in ("train", "test"))
    assert len(train) == 8 and torch.equal(train.images, test.images)


def test_imagefolder_train_and_val_folders_are_used_as_they_are(tmp_path):
    write_numbered_folder(tmp_path / "data" / "train", {"a": 4, "b": 3})
    for c, name in enumerate(("a", "b")):  # val images: green 100 + i, never in train
        (tmp_path / "data" / "val" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (10 * c + 1, 100 + i, 7)).save(tmp_path / "data" / "val" / name / f"{i}.png")
    root = str(tmp_path / "data")
    train = load_dataset("imagefolder", "train", 16, path=root, val_fraction=0.5)  # not used with val/
    test = load_dataset("imagefolder", "test", 16, path=root, val_fraction=0.5)
    assert train.class_names == test.class_names == ["a", "b"] and test.split == "val"
    assert image_ids(train) == [(1, i) for i in range(4)] + [(11, i) for i in range(3)]
    assert image_ids(test) == [(1, 100), (1, 101), (11, 100), (11, 101)]
    (tmp_path / "data" / "val" / "c").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "data" / "val" / "c" / "0.png")
    with pytest.raises(DataMissingError, match="must hold the same class folders") as err:
        load_dataset("imagefolder", "train", 16, path=root)
    assert "\n" not in str(err.value) and "only in train: none; only in val: c (1)" in str(err.value)
    for i in range(7):  # at ImageNet's 1000 classes the line names a few and counts them
        (tmp_path / "data" / "train" / f"z{i}").mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / "data" / "train" / f"z{i}" / "0.png")
    with pytest.raises(DataMissingError) as err:
        load_dataset("imagefolder", "train", 16, path=root)
    assert "only in train: z0, z1, z2, z3, z4, ... (7); only in val: c (1)" in str(err.value)


def test_imagefolder_bad_val_fraction_is_one_clear_line(tmp_path):
    root = write_numbered_folder(tmp_path / "data", {"a": 1, "b": 1})
    for bad in (1, -0.1, "half"):
        with pytest.raises(DataMissingError, match=rf"dataset.val_fraction={bad} is not allowed"):
            load_dataset("imagefolder", "train", 16, path=str(root), val_fraction=bad)
    with pytest.raises(DataMissingError, match="holds out no image.*dataset.val_fraction=0"):
        load_dataset("imagefolder", "train", 16, path=str(root), val_fraction=0.5)


def test_imagefolder_config_holds_out_a_tenth_by_default():
    from hydra import compose, initialize_config_dir
    from cgan_bench.app import CONF_DIR
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", ["dataset=imagefolder", "dataset.path=/x"])
    assert cfg.dataset.val_fraction == 0.1


def test_a_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    """PIL's convert("RGB") clips 16-bit greyscale at 255: a 0..63000 ramp came out almost all white."""
    ramp = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(ramp).save(tmp_path / name / "ramp.png")
    d = load_dataset("imagefolder", "train", 8, path=str(tmp_path), val_fraction=0)
    got = d.images[0, 0].numpy().astype(int)
    assert np.abs(got - np.rint(ramp / 257.0)).max() <= 1 and got.min() == 0 and got.max() == 245
