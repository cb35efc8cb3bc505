"""Image folders larger than device memory: a one-time preprocessed, memory-mapped uint8 store, streamed in batches.

Why: the device path (imagefolder.load -> ImageData) keeps every image on the training device; ImageNet at 128px
is ~63 GB. Here the folder is decoded once into `<store_dir>/<name>-<R>px-<hash>/`:
  images.u8     raw uint8 array (count, 3, R, R), C order, read with numpy.memmap (shape in meta.json)
  labels.npy    int64 class index of each row
  meta.json     classes, class counts, skipped (unreadable) files and why; written last: it marks a complete store
  progress.json while building: files done and rows written, replaced atomically after each flushed chunk
Preprocessing is the official code's: center crop on the short side, then PIL bilinear resize to R x R.
An unreadable file never stops the build: it is skipped and counted (no slot is kept for it: rows are written
compacted, in file order, and the file is cut to the rows written at the end). The build is resumable: a rerun
after a kill continues at the last recorded chunk and gives the same bytes as an uninterrupted build.
The store is keyed by the folder's resolved path, its file list (names, sizes, mtimes) and the resolution.

Training draws batches through `StreamedImageData.sample(batch_size)`, the same call as `ImageData.sample`:
background DataLoader workers read random rows (with replacement) into pinned memory, and the batch is copied to
the device with non_blocking=True, so a GPU step does not wait on the disk.
"""
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..metrics.cache import cache_root
from . import imagefolder
from .imagefolder import center_crop_resize
from .dataset import DataMissingError

log = logging.getLogger(__name__)

STORE_VERSION = 1  # bump when the preprocessing or the file layout changes: old stores are then never reused
STORAGES = ("auto", "device", "stream")
AUTO_FRACTION = 0.5  # auto streams when the uint8 images would take more than this share of free memory
CHUNK = 1024  # images decoded, written and recorded per step of the build


# ---- choosing the path -------------------------------------------------------------------------------------

def free_memory_bytes() -> int:
    """Free host memory (MemAvailable), and on a CUDA machine the smaller of that and the smallest GPU's memory:
    the device path decodes every image into host memory before copying it to the GPU. The loader does not know
    which GPU the job will use, and asking a GPU for its free memory would open a context on it (a sweep's jobs
    each use their own GPU), so a GPU counts with its total memory."""
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if torch.cuda.is_available():
        free = min([free] + [torch.cuda.get_device_properties(i).total_memory
                             for i in range(torch.cuda.device_count())])
    return free


def wants_stream(storage: str, n_images: int, resolution: int) -> bool:
    """dataset.storage: stream / device as asked; auto streams when the images exceed AUTO_FRACTION of free memory."""
    if storage not in STORAGES:
        raise DataMissingError(f"dataset.storage={storage!r} is not allowed: auto, device or stream")
    if storage != "auto":
        return storage == "stream"
    return n_images * 3 * resolution * resolution > AUTO_FRACTION * free_memory_bytes()


# ---- preprocessing -------------------------------------------------------------------------------------------

def store_path(root: Path, scan, resolution: int, store_dir: str | Path | None = None) -> Path:
    """<store_dir or cache dir/image_store>/<folder name>-<R>px-<hash of path, file list, resolution, version>."""
    h = hashlib.sha256(json.dumps([STORE_VERSION, str(Path(root).resolve()), resolution]).encode())
    for entry in scan.signature():  # (path, size, mtime) of every file, hashed one by one (ImageNet: 1.28M)
        h.update(json.dumps(entry).encode())
    h = h.hexdigest()[:16]
    base = Path(store_dir).expanduser() if store_dir else cache_root() / "image_store"
    return base / f"{Path(root).resolve().name or 'root'}-{resolution}px-{h}"


def _write_json(path: Path, value) -> None:
    """Atomic: a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _save_progress(path: Path, progress: dict) -> None:
    _write_json(path / "progress.json", progress)


def _decode(f: Path, resolution: int):
    """(3, R, R) uint8, or the exception that made the file unreadable (any: a bad file never stops the build)."""
    try:
        return imagefolder._decode(f, lambda img: center_crop_resize(img, resolution))
    except Exception as err:  # PIL raises more than the usual kinds on damaged files
        return err


def build_store(root: str | Path, resolution: int, store_dir: str | Path | None = None, *, scan=None,
                chunk: int = CHUNK, workers: int | None = None) -> Path:
    """Preprocess the class folders under `root` into a store once (resuming an interrupted build); its folder.
    `scan` is imagefolder's listing of `root` (made here when not given): the same files the device path reads."""
    from filelock import FileLock
    from tqdm import tqdm
    root = Path(root).expanduser()
    scan = scan if scan is not None else imagefolder._checked_scan(root)
    out = store_path(root, scan, resolution, store_dir)
    if (out / "meta.json").exists():
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a typo, a read-only or missing mount
        raise DataMissingError(f"cannot create the image store in {out.parent} ({err.strerror or err}): give "
                               "dataset.store_dir=<a writable folder> (a local SSD for ImageNet), or leave it unset "
                               f"for {cache_root() / 'image_store'}") from None
    with FileLock(str(out) + ".lock"):  # two jobs of a sweep: one builds, the other waits and reuses it
        if (out / "meta.json").exists():
            return out
        files = [f for files in scan.files for f in files]
        labels = [c for c, files in enumerate(scan.files) for _ in files]
        n, row = len(files), 3 * resolution * resolution
        progress = {"files_done": 0, "rows": 0, "skipped": []}
        if (out / "progress.json").exists() and (out / "images.u8").exists():
            progress = json.loads((out / "progress.json").read_text())
            log.info("resuming the image store build of %s at %d/%d files (%s)", root, progress["files_done"], n, out)
        else:
            log.info("building the image store of %s at %dpx: %d files, %s, a one-time step (%s)", root,
                     resolution, n, size_text(n * row), out)
        if progress["files_done"] < n:
            mode = "r+" if progress["files_done"] else "w+"
            images = np.memmap(out / "images.u8", dtype=np.uint8, mode=mode, shape=(n, 3, resolution, resolution))
            workers = workers or max(1, min(8, os.cpu_count() or 1))
            with ThreadPoolExecutor(workers) as pool, \
                    tqdm(total=n, initial=progress["files_done"], desc="image store", unit="img") as bar:
                while progress["files_done"] < n:  # PIL releases the GIL while decoding and resizing
                    start = progress["files_done"]
                    batch = files[start:start + chunk]
                    results = list(pool.map(lambda f: _decode(f, resolution), batch))
                    rows = progress["rows"]
                    for f, r in zip(batch, results):
                        if isinstance(r, BaseException):
                            progress["skipped"].append([str(f), imagefolder.bad_file_reason(f, r)])
                        else:
                            images[rows] = r
                            rows += 1
                    images.flush()  # the rows are on disk before the progress that counts them
                    progress = {"files_done": start + len(batch), "rows": rows, "skipped": progress["skipped"]}
                    _save_progress(out, progress)
                    bar.update(len(batch))
            del images
        _finish(out, root, scan, resolution, labels, progress)
    return out


def _finish(out: Path, root: Path, scan, resolution: int, labels: list[int], progress: dict) -> None:
    """Cut the file to the rows written, then labels.npy, then meta.json (its presence = a complete store)."""
    os.truncate(out / "images.u8", progress["rows"] * 3 * resolution * resolution)  # idempotent on a rerun
    skipped = {f for f, _ in progress["skipped"]}
    kept = [label for f, label in zip((f for files in scan.files for f in files), labels) if str(f) not in skipped]
    kept = np.asarray(kept, dtype=np.int64)
    tmp = out / "labels.tmp.npy"
    np.save(tmp, kept)
    os.replace(tmp, out / "labels.npy")
    _write_json(out / "meta.json", {
        "version": STORE_VERSION, "root": str(root.resolve()), "resolution": resolution,
        "preprocessing": "center crop on the short side, PIL bilinear resize",
        "count": int(progress["rows"]), "files": progress["files_done"], "classes": list(scan.classes),
        "class_counts": np.bincount(kept, minlength=len(scan.classes)).tolist(),
        "skipped": len(progress["skipped"]), "skipped_files": progress["skipped"]})
    (out / "progress.json").unlink(missing_ok=True)
    if progress["skipped"]:
        log.warning("image store: skipped %d unreadable files, e.g. %s (%s)", len(progress["skipped"]),
                    *progress["skipped"][0])
    log.info("image store complete: %d images at %dpx in %s", progress["rows"], resolution, out)


def read_meta(store: Path) -> dict:
    return json.loads((Path(store) / "meta.json").read_text())


def open_images(store: Path, mode: str = "r") -> np.memmap:
    """The store's images as a (count, 3, R, R) uint8 memmap (nothing is read until rows are indexed)."""
    meta = read_meta(store)
    r = meta["resolution"]
    if meta["count"] == 0:
        return np.zeros((0, 3, r, r), dtype=np.uint8)
    return np.memmap(Path(store) / "images.u8", dtype=np.uint8, mode=mode, shape=(meta["count"], 3, r, r))


# ---- streaming batches -----------------------------------------------------------------------------------------

class _Rows(torch.utils.data.Dataset):
    """Reads a list of rows in one go (sorted, for sequential disk access) in a DataLoader worker. The memmap is
    opened in the worker: a pickled memmap would carry the whole array."""

    def __init__(self, store: Path, rows: np.ndarray | None, labels: np.ndarray):
        self.store, self.rows, self.labels, self._images = store, rows, labels, None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self):
        return {**self.__dict__, "_images": None}

    def __getitem__(self, idx):
        if self._images is None:
            self._images = open_images(self.store)
        idx = np.asarray(idx, dtype=np.int64)
        rows = idx if self.rows is None else self.rows[idx]
        order = np.argsort(rows, kind="stable")
        x = np.empty((len(rows), *self._images.shape[1:]), dtype=np.uint8)
        x[order] = self._images[rows[order]]
        return torch.from_numpy(x), torch.from_numpy(self.labels[idx])


@dataclass
class StreamedImageData:
    """ImageData's interface (len, labels, n_classes, class_names, resolution, sample, to, class_counts, images)
    over a store on disk. `sample` streams; `images` maps the store (a split that is a subset of the store's rows,
    as with dataset.val_fraction, is copied into memory on first use: avoid it for the training split)."""
    store: Path
    labels: torch.Tensor  # (N,) int64 on the CPU
    n_classes: int
    name: str
    split: str
    class_names: list[str]
    rows: np.ndarray | None = None  # this split's rows of the store; None = every row
    device: torch.device = torch.device("cpu")
    workers: int = 4
    sampler_rank: int = 0  # a multi-process run's rank (for_rank): each rank reads its own random batches
    _batches: object = field(default=None, init=False, repr=False)
    _batch_size: int = field(default=0, init=False, repr=False)
    # the split's in-memory copy (images of a subset split), one for this object and all its .to()/for_rank copies
    _copy: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def resolution(self) -> int:
        return read_meta(self.store)["resolution"]

    @property
    def images(self) -> torch.Tensor:
        mm = open_images(self.store, mode="c")  # copy-on-write: writable for torch, never written back
        if self.rows is None:
            return torch.from_numpy(mm)
        if "images" not in self._copy:  # made once, shared by every .to()/for_rank copy of this split
            log.warning("copying the %d images of the streamed %s split into memory (%s)", len(self.rows),
                        self.split, size_text(len(self.rows) * np.prod(mm.shape[1:])))
            self._copy["images"] = torch.from_numpy(mm[self.rows])  # rows are sorted (a mask of the store's rows)
        return self._copy["images"]

    def image_chunks(self, size: int):
        """The split's images in order, `size` at a time, read from the store (never the whole split in memory)."""
        if "images" in self._copy:
            yield from self._copy["images"].split(size)
            return
        mm = open_images(self.store)
        rows = np.arange(len(mm)) if self.rows is None else np.asarray(self.rows)
        for start in range(0, len(rows), size):
            yield torch.from_numpy(np.ascontiguousarray(mm[rows[start:start + size]]))

    def to(self, device) -> "StreamedImageData":
        """The images stay on disk; `sample` then delivers batches on `device`."""
        return replace(self, device=torch.device(device))  # `_copy` is shared: a subset split is copied once

    def for_rank(self, rank: int) -> "StreamedImageData":
        """This split as rank `rank` of a multi-process run reads it: the same images, its own batch sampler
        (seeded by the run's RNG and the rank), so N ranks read N different batches instead of one each."""
        return replace(self, sampler_rank=int(rank))

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.n_classes)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch (with replacement, like ImageData.sample) on `device`, read ahead by the workers."""
        if self._batches is None or self._batch_size != batch_size:
            self._start(batch_size)
        x, y = next(self._batches)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _start(self, batch_size: int) -> None:
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler
        self.close()
        dataset = _Rows(self.store, self.rows, self.labels.numpy())
        seed = int(torch.randint(0, 2**62, (1,)))  # follows the run's seed (the same draw on every rank)
        g = torch.Generator().manual_seed(seed + 7919 * self.sampler_rank)  # then apart by rank
        sampler = BatchSampler(RandomSampler(dataset, replacement=True, num_samples=2**62, generator=g),
                               batch_size, drop_last=True)
        # at most one worker per usable core (torch warns beyond that); the batches do not depend on the count:
        # the sampler above draws every batch's rows in this process, the workers only read them
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(self.workers, cores)
        loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                            prefetch_factor=4 if workers > 0 else None)
        self._batches, self._batch_size = iter(loader), batch_size

    def close(self) -> None:
        """Stop the workers (they also stop when this object is garbage collected)."""
        self._batches, self._batch_size = None, 0


def load_split(root: Path, folders: dict, scans: dict, split: str, resolution: int, skip_bad_files: bool,
               val_fraction: float, store_dir: str | None = None, workers: int = 4) -> StreamedImageData:
    """imagefolder.load's stream path: the same folders, splits and refusals, over stores instead of tensors."""
    stores = {name: build_store(folders[name], resolution, store_dir, scan=scans[name]) for name in folders}
    for name, store in stores.items():
        _check_skipped(folders[name], scans[name], read_meta(store), skip_bad_files)
    layout = "val" in folders
    store = stores[("val" if split == "test" else "train") if layout else "all"]
    meta, labels = read_meta(store), torch.from_numpy(np.load(store / "labels.npy"))
    rows = None
    if not layout and val_fraction:
        parts = imagefolder._split_by_fraction(root, torch.arange(len(labels)), labels, meta["classes"],
                                               float(val_fraction))
        rows, labels = parts["test" if split == "test" else "train"]
        rows = rows.numpy()
    return StreamedImageData(store, labels, len(meta["classes"]), "imagefolder",
                             "val" if layout and split == "test" else split, meta["classes"], rows,
                             workers=int(workers))


_SKIPS_SAID: set = set()


def size_text(n_bytes: float) -> str:
    """1.3 GB, 42 MB, 7 kB: a small store is not "0.0 GB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}" if unit == "GB" else f"{n_bytes / scale:.0f} {unit}"
    return f"{max(1, round(n_bytes / 1e3))} kB"


def _check_skipped(folder: Path, scan, meta: dict, skip_bad_files: bool) -> None:
    """The build skips unreadable files (hours of work are never lost); using them follows dataset.skip_bad_files."""
    bad = meta["skipped_files"]
    if not bad:
        return
    if not skip_bad_files:
        more = f" ({len(bad)} unreadable files in all)" if len(bad) > 1 else ""
        raise DataMissingError(f"cannot read image {bad[0][0]}: {bad[0][1]}{more}; remove or replace it, or set "
                               f"dataset.skip_bad_files=true to skip unreadable files (the preprocessed store "
                               f"is kept and reused)")
    if folder not in _SKIPS_SAID:  # once per folder and process, not once per split loaded
        _SKIPS_SAID.add(folder)
        log.warning("skipped %d unreadable files, e.g. %s (%s)", len(bad), *bad[0])
    imagefolder._refuse_empty_classes(folder, meta["classes"], meta["class_counts"], "readable", scan)
