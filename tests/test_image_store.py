"""The streaming image store (cgan_bench/data/image_store.py): preprocessing, resuming, sampling, choosing the path."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cgan_bench.data import DataMissingError, ImageData, StreamedImageData, image_store, load_dataset

R = 16
SIZES = [(40, 24), (24, 40), (33, 33), (50, 21), (17, 29)]  # wide, tall, square, odd sizes


def make_tree(root, per_class=(5, 4, 3)):
    """JPEGs of random noise (so the crop and the interpolation matter), mixed sizes, one corrupt file, one hidden."""
    rng = np.random.default_rng(0)
    for c, n in enumerate(per_class):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(n):
            w, h = SIZES[(c + i) % len(SIZES)]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg", quality=90)
    (root / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("RGB", (20, 20)).save(root / "class_0" / ".hidden.jpg")
    return root


def expected(root):
    """An independent decoding: per class folder (sorted), per sorted file: PIL center square + bilinear resize."""
    images, labels = [], []
    for c, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for f in sorted(folder.glob("[!.]*.jpg")):
            if f.name == "broken.jpg":
                continue
            img = Image.open(f).convert("RGB")
            s = min(img.size)
            left, top = (img.size[0] - s) // 2, (img.size[1] - s) // 2
            img = img.crop((left, top, left + s, top + s)).resize((R, R), Image.BILINEAR)
            images.append(np.asarray(img).transpose(2, 0, 1))
            labels.append(c)
    return np.stack(images), np.array(labels)


def store_bytes(store):
    return {name: (store / name).read_bytes() for name in ("images.u8", "labels.npy", "meta.json")}


def test_store_matches_pil_and_counts_the_corrupt_file(tmp_path):
    root = make_tree(tmp_path / "data")
    store = image_store.build_store(root, R, tmp_path / "stores", chunk=4, workers=2)
    meta = image_store.read_meta(store)
    want_images, want_labels = expected(root)
    assert np.array_equal(np.asarray(image_store.open_images(store)), want_images)
    assert np.load(store / "labels.npy").tolist() == want_labels.tolist()
    assert meta["classes"] == ["class_0", "class_1", "class_2"] and meta["class_counts"] == [5, 4, 3]
    assert meta["skipped"] == 1 and meta["skipped_files"][0][0].endswith("broken.jpg") and meta["files"] == 13
    assert not (store / "progress.json").exists()
    # cached: a second call reuses it; a changed folder is a different store
    assert image_store.build_store(root, R, tmp_path / "stores") == store
    Image.new("RGB", (20, 30)).save(root / "class_2" / "new.jpg")
    assert image_store.build_store(root, R, tmp_path / "stores") != store


def test_a_build_killed_midway_resumes_to_the_same_bytes(tmp_path):
    root = make_tree(tmp_path / "data")
    whole = store_bytes(image_store.build_store(root, R, tmp_path / "whole", chunk=3, workers=1))
    # SIGKILL itself right after the 2nd chunk's progress is recorded: no cleanup runs
    script = f"""
import os, signal
from cgan_bench.data import image_store
saved = image_store._save_progress
def save_then_die(path, progress):
    saved(path, progress)
    if progress["files_done"] == 6:
        os.kill(os.getpid(), signal.SIGKILL)
image_store._save_progress = save_then_die
image_store.build_store({str(root)!r}, {R}, {str(tmp_path / "killed")!r}, chunk=3, workers=1)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    [store] = [p for p in (tmp_path / "killed").iterdir() if p.is_dir()]
    assert not (store / "meta.json").exists()
    assert json.loads((store / "progress.json").read_text())["files_done"] == 6
    assert store_bytes(image_store.build_store(root, R, tmp_path / "killed", chunk=3, workers=1)) == whole


def test_a_crash_inside_a_chunk_redoes_that_chunk(tmp_path, monkeypatch):
    """Rows written but not yet recorded (the crash comes before the progress file) are written again."""
    root = make_tree(tmp_path / "data")
    whole = store_bytes(image_store.build_store(root, R, tmp_path / "whole", chunk=5, workers=1))
    saved, calls = image_store._save_progress, []

    def crash_on_second(path, progress):
        calls.append(progress["files_done"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        saved(path, progress)

    monkeypatch.setattr(image_store, "_save_progress", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        image_store.build_store(root, R, tmp_path / "crashed", chunk=5, workers=1)
    monkeypatch.setattr(image_store, "_save_progress", saved)
    assert store_bytes(image_store.build_store(root, R, tmp_path / "crashed", chunk=5, workers=1)) == whole


def test_batches_stream_through_worker_processes(tmp_path):
    root = make_tree(tmp_path / "data")
    data = load_dataset("imagefolder", "train", R, path=str(root), storage="stream", store_dir=str(tmp_path / "s"),
                        skip_bad_files=True, val_fraction=0, stream_workers=2)
    assert isinstance(data, StreamedImageData) and len(data) == 12 and data.n_classes == 3
    assert data.class_counts().tolist() == [5, 4, 3] and data.resolution == R
    want_images, want_labels = expected(root)
    source = {img.tobytes(): int(label) for img, label in zip(want_images, want_labels)}
    data = data.to("cpu")
    seen = set()
    torch.manual_seed(0)
    for _ in range(6):
        x, y = data.sample(8)
        assert x.dtype == torch.uint8 and x.shape == (8, 3, R, R) and y.dtype == torch.int64
        for img, label in zip(x.numpy(), y.tolist()):
            assert source[img.tobytes()] == label  # every image is a source image, with its own label
            seen.add(img.tobytes())
    assert len(seen) > 6  # random rows, not one repeated
    assert torch.equal(data.images, torch.from_numpy(want_images))  # the whole store, mapped
    data.close()


def test_more_workers_than_cores_are_capped_and_give_the_same_batches(tmp_path, monkeypatch):
    """dataset.stream_workers=4 (the default) on a 2-core machine printed torch's DataLoader warning; the workers
    are capped at the usable cores, which changes no batch (the sampler draws every batch's rows here)."""
    import os
    import warnings
    root = make_tree(tmp_path / "data")
    opts = dict(path=str(root), storage="stream", store_dir=str(tmp_path / "s"), skip_bad_files=True, val_fraction=0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    batches = []
    for workers in (1, 8):
        data = load_dataset("imagefolder", "train", R, stream_workers=workers, **opts).to("cpu")
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's "suggested max number of worker" warning fails here
            batches.append([data.sample(4) for _ in range(3)])
        data.close()
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*batches))


def test_held_out_split_is_the_device_paths_split(tmp_path):
    root = make_tree(tmp_path / "data")
    opts = dict(path=str(root), skip_bad_files=True, val_fraction=0.25, store_dir=str(tmp_path / "s"),
                stream_workers=0)
    for split in ("train", "test"):
        device = load_dataset("imagefolder", split, R, storage="device", **opts)
        stream = load_dataset("imagefolder", split, R, storage="stream", **opts)
        assert isinstance(device, ImageData) and isinstance(stream, StreamedImageData)
        assert stream.labels.tolist() == device.labels.tolist() and len(stream.images) == len(device.images)
        x, y = stream.sample(4)  # no workers: read in this process
        assert x.shape == (4, 3, R, R)
    train = load_dataset("imagefolder", "train", R, storage="stream", **opts)
    test = load_dataset("imagefolder", "test", R, storage="stream", **opts)
    assert sorted(train.rows.tolist() + test.rows.tolist()) == list(range(12))


def test_a_subset_split_is_hashed_from_disk_and_copied_into_memory_at_most_once(tmp_path, caplog):
    """A held-out split of a streamed folder (dataset.val_fraction) is a subset of the store's rows. Its cache
    fingerprint was taken through `.images`, an in-memory copy of the whole split (ImageNet: ~57 GB), and each
    `.to(device)` made its own copy (a run made two, a rank of a multi-process run one more). Now the fingerprint
    reads the store chunk by chunk (the same hash as the in-memory path's), and one copy serves every `.to()`."""
    import logging

    from cgan_bench.metrics.cache import fingerprint
    root = make_tree(tmp_path / "data")
    opts = dict(path=str(root), skip_bad_files=True, val_fraction=0.25, store_dir=str(tmp_path / "s"),
                stream_workers=0)
    device = load_dataset("imagefolder", "train", R, storage="device", **opts)
    stream = load_dataset("imagefolder", "train", R, storage="stream", **opts)
    with caplog.at_level(logging.WARNING, logger="cgan_bench"):
        assert fingerprint(stream.to("cpu")) == fingerprint(device)  # the same images, the same key
        assert torch.equal(torch.cat(list(stream.image_chunks(2))), device.images)
        assert "copying" not in caplog.text  # hashed from disk, nothing copied
        a, b = stream.to("cpu"), stream.to("cpu").for_rank(1)
        assert a.images is b.images and torch.equal(a.images, device.images)
    assert caplog.text.count(f"copying the {len(device)} images of the streamed train split") == 1



def test_a_stores_fingerprints_are_kept_beside_it(tmp_path, monkeypatch):
    """A store never changes once built: each split's fingerprint is hashed once and then read (ImageNet: 63 GB
    were read at every job start); the in-memory path of the same folder gets the same key."""
    from cgan_bench.metrics import cache
    root = make_tree(tmp_path / "data")
    opts = dict(path=str(root), skip_bad_files=True, val_fraction=0.25, store_dir=str(tmp_path / "s"),
                stream_workers=0)
    train, test = (load_dataset("imagefolder", s, R, storage="stream", **opts) for s in ("train", "test"))
    keys = [cache.fingerprint(d) for d in (train, test)]
    assert keys == [cache.fingerprint(load_dataset("imagefolder", s, R, storage="device", **opts))
                    for s in ("train", "test")] and keys[0] != keys[1]
    assert sorted(json.loads((train.store / "fingerprints.json").read_text()).values()) == sorted(keys)
    monkeypatch.setattr(cache, "_content_hash", lambda data: pytest.fail("hashed the store again"))
    assert [cache.fingerprint(d) for d in (train.to("cpu"), test)] == keys


def test_an_unusable_store_dir_is_one_line(tmp_path):
    """dataset.store_dir under a file (or a read-only mount) was a FileNotFoundError traceback."""
    root = make_tree(tmp_path / "data")
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(DataMissingError, match=r"cannot create the image store in .*a_file.*dataset\.store_dir="):
        load_dataset("imagefolder", "train", R, path=str(root), skip_bad_files=True, storage="stream",
                     store_dir=str(tmp_path / "a_file" / "stores"), val_fraction=0)


def test_unreadable_files_follow_skip_bad_files_without_a_rebuild(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data")
    opts = dict(path=str(root), storage="stream", store_dir=str(tmp_path / "s"), val_fraction=0)
    with pytest.raises(DataMissingError, match=r"cannot read image .*broken\.jpg.*dataset\.skip_bad_files=true"):
        load_dataset("imagefolder", "train", R, **opts)
    monkeypatch.setattr(image_store, "center_crop_resize", lambda *a: pytest.fail("the store was decoded again"))
    assert len(load_dataset("imagefolder", "train", R, skip_bad_files=True, **opts)) == 12


def test_auto_streams_only_what_does_not_fit(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data")
    opts = dict(path=str(root), skip_bad_files=True, val_fraction=0, store_dir=str(tmp_path / "s"))
    assert isinstance(load_dataset("imagefolder", "train", R, storage="auto", **opts), ImageData)
    monkeypatch.setattr(image_store, "free_memory_bytes", lambda: 2 * 13 * 3 * R * R - 1)  # just under 2x the data
    assert isinstance(load_dataset("imagefolder", "train", R, storage="auto", **opts), StreamedImageData)
    assert isinstance(load_dataset("imagefolder", "train", R, storage="device", **opts), ImageData)
    with pytest.raises(DataMissingError, match="dataset.storage='disk' is not allowed"):
        load_dataset("imagefolder", "train", R, storage="disk", **opts)


@pytest.mark.parametrize("override,message", [
    ("dataset.storage=disk", "dataset.storage='disk' is not allowed: auto"),
    ("dataset.stream_workers=-1", "dataset.stream_workers=-1 is not allowed"),
])
def test_storage_options_are_validated(override, message):
    from hydra import compose, initialize_config_dir

    from cgan_bench.app import CONF_DIR
    from cgan_bench.config import ConfigError, validate
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        ok = compose("config", overrides=["wandb.mode=disabled", "dataset=imagefolder", "dataset.path=/x"])
        bad = compose("config", overrides=["wandb.mode=disabled", "dataset=imagefolder", "dataset.path=/x", override])
    validate(ok)
    assert ok.dataset.storage == "auto"
    with pytest.raises(ConfigError, match=message):
        validate(bad)


def test_each_rank_streams_its_own_batches(tmp_path):
    """A multi-process run over a streamed store: rank r's sampler is seeded by the run and r, so ranks read
    different batches (the disk serves the global batch once), and rank 0 reads what one process reads."""
    root = make_tree(tmp_path / "data")
    data = load_dataset("imagefolder", "train", R, path=str(root), storage="stream", store_dir=str(tmp_path / "s"),
                        skip_bad_files=True, val_fraction=0, stream_workers=0)

    def batches(d, n=4):
        torch.manual_seed(3)  # the run's seed, the same on every rank
        out = [d.sample(6)[0] for _ in range(n)]
        d.close()
        return torch.cat(out)

    single, rank0, rank1 = batches(data), batches(data.for_rank(0)), batches(data.for_rank(1))
    assert torch.equal(single, rank0)
    assert not torch.equal(rank0, rank1)
    assert data.for_rank(1).sampler_rank == 1 and data.for_rank(1).store == data.store


def test_the_trainer_gives_a_streamed_rank_its_share_of_the_real_batch(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from cgan_bench.app import CONF_DIR
    from cgan_bench.train import distributed
    from cgan_bench.train.loop import Trainer
    from cgan_bench.train.run_dir import RunDir
    root = make_tree(tmp_path / "data")
    data = load_dataset("imagefolder", "train", R, path=str(root), storage="stream", store_dir=str(tmp_path / "s"),
                        skip_bad_files=True, val_fraction=0, stream_workers=0)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["wandb.mode=disabled", "train=smoke", "model=small",
                                           f"dataset.resolution={R}"])
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "wrap", lambda G, D, device, sync_bn: (G, D))  # no process group here
    trainer = Trainer(cfg, data, RunDir(tmp_path / "run"), torch.device("cpu"))
    assert trainer.data.sampler_rank == 1
    x, y = trainer.dequantized(*trainer.real_batch(8))
    assert x.shape == (4, 3, R, R) and x.dtype == torch.float32 and y.shape == (4,)
    assert -1.0 <= x.min() and x.max() < 1.0  # dequantised: [-1, 1)
    trainer.data.close()


@pytest.mark.slow
def test_resume_checks_come_before_the_data_and_a_path_is_one_folder_however_spelled(tmp_path):
    """A resume with other settings, and missing Inception weights, are refused before the data is loaded (an
    ImageNet store's first build takes hours); the same folder spelled relative or with `./` and a trailing `/`
    resumes (and shares one store), while a copy elsewhere is refused with advice for data that only moved."""
    import shutil

    from conftest import run_cli
    make_tree(tmp_path / "imgs", per_class=(4, 4, 4))
    (tmp_path / "imgs" / "class_1" / "broken.jpg").unlink()
    stores = tmp_path / "stores"
    common = ["dataset=imagefolder", "model=small", "train=smoke", "eval=smoke", "eval.feature_space=classifier",
              "eval.classifier_epochs=1", "dataset.resolution=16", "dataset.storage=stream", "dataset.stream_workers=0",
              "train.batch_d=4", "train.batch_g=4", "eval.n_generated=24", "eval.batch_size=8",
              f"dataset.store_dir={stores}", f"hydra.run.dir={tmp_path / 'run'}"]

    def built():
        return sorted(p.name for p in stores.iterdir() if p.is_dir())

    r = run_cli(*common, f"dataset.path={tmp_path / 'imgs'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(built()) == 1
    assert "3 classes, storage stream (dataset.storage=stream) | feature space" in r.stdout  # as resolved

    r = run_cli(*common, "dataset.path=./imgs/", "train.iterations=3", cwd=tmp_path)  # the same folder
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stdout and len(built()) == 1  # no second store for a second spelling
    assert "extending the completed run from 2 to 3 iterations" in r.stdout  # its final evaluation is replaced

    shutil.copytree(tmp_path / "imgs", tmp_path / "moved")
    r = run_cli(*common, f"dataset.path={tmp_path / 'moved'}", "train.iterations=4", cwd=tmp_path)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "dataset.path" in lines[0] and "only moved" in lines[0], r.stderr[-2000:]
    assert "dataset: imagefolder" not in r.stdout and len(built()) == 1  # refused before the data

    r = run_cli(*common, f"dataset.path={tmp_path / 'moved'}", "eval.feature_space=inception",
                f"eval.inception_weights={tmp_path / 'none.pth'}", f"hydra.run.dir={tmp_path / 'other'}", cwd=tmp_path)
    assert r.returncode == 2 and "none.pth does not exist" in r.stderr, r.stderr[-2000:]
    assert len(built()) == 1  # no store was built for a job that cannot evaluate
