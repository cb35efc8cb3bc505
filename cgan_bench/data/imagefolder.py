"""The user's own data: one sub-folder per class of png/jpg files (torchvision's ImageFolder layout).

Images are center-cropped to the square of their short side, then resized (PIL bilinear) to the configured
resolution: the official ImageNet preprocessing, shared with the streaming store (data/image_store.py).
Splits (the `test` split is what the domain classifier's held-out accuracy and eval.real_split=test use):
- `path` holds `train/` and `val/`, each with the same class sub-folders: `train/` trains, `val/` is the test
  split (named "val"); `val_fraction` is not used.
- otherwise `val_fraction` (conf/dataset/imagefolder.yaml: 0.1) of each class's images, chosen by a fixed seed
  per class name, are the test split and training uses the rest; 0 = no held-out part (the test split is the
  training images, as before).
"""
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .dataset import DataMissingError, ImageData

EXTENSIONS = (".png", ".jpg", ".jpeg")
log = logging.getLogger(__name__)


SPLIT_SEED = 2018  # the held-out images of a class: randperm seeded by this + crc32(class name)


def load(split: str, resolution: int, path: str | None = None, skip_bad_files: bool = False,
         val_fraction: float = 0.0, storage: str = "auto", store_dir: str | None = None, stream_workers: int = 4,
         before_decoding=None, **_) -> ImageData:
    """Every image is decoded once here, before any training: an unreadable file stops the run with one line
    naming it (or, with `skip_bad_files`, is skipped and counted). Hidden files and folders ('.x') are ignored,
    symlinks are followed only while they stay inside `path` (loops are detected), an empty class folder or
    fewer than 2 classes are refused. Both splits come from one decoding (the app loads train, then test).
    `before_decoding()`: the job's own refusals (missing weights), once the folder checks have passed and before
    the decoding (hours for a first ImageNet store)."""
    if not path:
        raise DataMissingError("dataset=imagefolder needs dataset.path=/folder/with/one/sub-folder/per/class")
    root = Path(path).expanduser().resolve()  # one folder, one spelling: `imgs`, `./imgs/` and `/abs/imgs` share a store
    layout = _train_val_layout(root)
    if not layout and _has_class_folders(root / "train"):  # ILSVRC's val tarball unpacks flat: not 2 classes
        raise DataMissingError(
            f"dataset.path={root} holds train/ with class folders but {root / 'val'} "
            f"{'has no class folders (as ImageNet val/ unpacks)' if (root / 'val').is_dir() else 'does not exist'}: "
            f"sort val/ into the same class folders as train/ (for ImageNet, e.g. with its valprep.sh), or give "
            f"dataset.path={root / 'train'} to hold out dataset.val_fraction of it instead")
    folders = {"train": root / "train", "val": root / "val"} if layout else {"all": root}
    scans = {name: _checked_scan(folder) for name, folder in folders.items()}
    if layout and scans["val"].classes != scans["train"].classes:
        train, val = set(scans["train"].classes), set(scans["val"].classes)

        def listed(names):  # ImageNet has 1000 classes: a few names and the count
            names = sorted(names)
            return f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''} ({len(names)})" if names else "none"
        raise DataMissingError(f"{root / 'val'} and {root / 'train'} must hold the same class folders; only in "
                               f"train: {listed(train - val)}; only in val: {listed(val - train)}")
    if not layout:
        _check_fraction(val_fraction)
    if before_decoding is not None:
        before_decoding()
    from . import image_store  # storage=stream (or auto, for a folder too large for memory): image_store.py
    if image_store.wants_stream(storage, sum(len(f) for s in scans.values() for f in s.files), resolution):
        return image_store.load_split(root, folders, scans, split, resolution, bool(skip_bad_files), val_fraction,
                                      store_dir, stream_workers)
    key = (str(root.resolve()), resolution, bool(skip_bad_files), None if layout else float(val_fraction),
           tuple(s.signature() for s in scans.values()))
    if _CACHE.get("key") != key:  # the other split of the same call: reuse the decoded images
        _CACHE.clear()
        decoded = {name: _decode_all(folders[name], scan, resolution, bool(skip_bad_files))
                   for name, scan in scans.items()}
        if layout:
            splits = {"train": decoded["train"], "test": decoded["val"]}
            log.info("%s has train/ and val/: training on train/, testing on val/ (dataset.val_fraction unused)",
                     root)
        else:
            splits = _split_by_fraction(root, *decoded["all"], list(scans["all"].classes), float(val_fraction))
        _CACHE.update(key=key, splits=splits)
    images, labels = _CACHE["splits"]["test" if split == "test" else "train"]
    name = "val" if layout and split == "test" else split
    classes = list(next(iter(scans.values())).classes)
    return ImageData(images, labels, len(classes), "imagefolder", name, classes)


_CACHE: dict = {}  # the last load's decoded splits (the app loads train, then test, of the same folder)


def _has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def _train_val_layout(root: Path) -> bool:
    """True where `root` holds train/ and val/ folders that both hold class sub-folders (ImageNet's layout)."""
    return _has_class_folders(root / "train") and _has_class_folders(root / "val")


def _checked_scan(root: Path) -> "_Scan":
    if not root.is_dir():  # a typo in the path: say so, not "no class sub-folders"
        raise DataMissingError(f"dataset.path={root} {'is a file' if root.exists() else 'does not exist'}; give "
                               f"the folder that holds one sub-folder of png/jpg images per class")
    scan = _scan(root)
    if not scan.classes:
        raise DataMissingError(f"dataset.path={root} has no class sub-folders; put each class's png/jpg images "
                               f"in its own folder, e.g. {root}/cat/001.png{scan.note()}")
    _refuse_empty_classes(root, scan.classes, [len(files) for files in scan.files], "png/jpg/jpeg", scan)
    if len(scan.classes) < 2:
        inner = root / scan.classes[0]
        deeper = f"; did you mean dataset.path={inner}, whose sub-folders would be the classes?" \
            if sum(p.is_dir() and not p.name.startswith(".") for p in inner.iterdir()) >= 2 else ""
        raise DataMissingError(f"dataset.path={root} has 1 class folder ({scan.classes[0]}): a class-conditional "
                               f"GAN needs at least 2 classes (one sub-folder of images per class){deeper}")
    return scan


def _check_fraction(val_fraction) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise DataMissingError(f"dataset.val_fraction={val_fraction} is not allowed: give the share of each "
                               f"class's images held out for testing, a number in [0, 1) (0.1; 0 = none)")


def held_out_count(n: int, val_fraction: float) -> int:
    """Held-out images of a class of n: round(fraction * n), at least 1 and at most n - 1 (a class of one
    image is kept for training)."""
    if val_fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(val_fraction * n)))


def _split_by_fraction(root: Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
                       val_fraction: float) -> dict:
    """{"train": (images, labels), "test": (...)}: per class, held_out_count images chosen by a permutation
    seeded from the class name (the same images on every call and machine); fraction 0: test = train."""
    if val_fraction == 0:
        return {"train": (images, labels), "test": (images, labels)}
    test = torch.zeros(len(labels), dtype=torch.bool)
    for c, name in enumerate(classes):
        idx = (labels == c).nonzero().flatten()
        g = torch.Generator().manual_seed(SPLIT_SEED + zlib.crc32(name.encode()))
        test[idx[torch.randperm(len(idx), generator=g)[:held_out_count(len(idx), val_fraction)]]] = True
    if not test.any():
        raise DataMissingError(f"dataset.val_fraction={val_fraction} holds out no image of {root}: every class has "
                               f"a single image; add images or set dataset.val_fraction=0 (the test split is then "
                               f"the training images)")
    return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}


@dataclass
class _Scan:
    classes: list[str] = field(default_factory=list)
    files: list[list[Path]] = field(default_factory=list)  # per class, in torchvision ImageFolder's order
    outside: list[Path] = field(default_factory=list)  # symlinks resolving outside the root (skipped)
    revisited: list[Path] = field(default_factory=list)  # folders reached twice (symlink loops; skipped)

    def signature(self) -> tuple:
        return tuple((str(f), *_stat_key(f)) for files in self.files for f in files)

    def note(self) -> str:
        parts = []
        if self.outside:
            parts.append(f"{len(self.outside)} symlinks pointing outside dataset.path were skipped, "
                         f"e.g. {self.outside[0]}")
        if self.revisited:
            parts.append(f"{len(self.revisited)} symlinked folders already visited (a symlink loop) were skipped, "
                         f"e.g. {self.revisited[0]}")
        return f" ({'; '.join(parts)})" if parts else ""


def _stat_key(f: Path) -> tuple:
    try:
        st = f.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _scan(root: Path) -> _Scan:
    """Walk the class folders ourselves (torchvision follows every symlink, loops included): sorted class names,
    per class the image files ordered as torchvision's ImageFolder orders them (sorted folders, sorted names)."""
    scan = _Scan()
    if not root.is_dir():
        return scan
    real_root = root.resolve()
    visited = {real_root}
    for entry in sorted(_entries(root, real_root, scan), key=lambda e: e.name):
        if _is_dir(entry) and _visit(Path(entry.path), visited, scan):
            scan.classes.append(entry.name)
            folders: list[tuple[str, list[Path]]] = []
            _walk(Path(entry.path), real_root, visited, scan, folders)
            scan.files.append([f for _, names in sorted(folders, key=lambda x: x[0]) for f in names])
    n_skipped = len(scan.outside) + len(scan.revisited)
    if n_skipped:
        log.warning("skipped %d symlinks under %s%s", n_skipped, root, scan.note())
    return scan


def _entries(folder: Path, real_root: Path, scan: _Scan) -> list:
    """Visible entries of a folder; symlinks resolving outside the root are recorded and left out."""
    out = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):  # .ipynb_checkpoints/, macOS ._x.png, .DS_Store
                    continue
                if entry.is_symlink():
                    real = Path(os.path.realpath(entry.path))
                    if not real.is_relative_to(real_root):
                        scan.outside.append(Path(entry.path))
                        continue
                out.append(entry)
    except OSError as e:
        raise DataMissingError(f"cannot list {folder}: {e.strerror or e}") from None
    return out


def _is_dir(entry) -> bool:
    try:
        return entry.is_dir()  # follows a symlink (already known to stay inside the root)
    except OSError:
        return False


def _visit(folder: Path, visited: set, scan: _Scan) -> bool:
    real = Path(os.path.realpath(folder))
    if real in visited:
        scan.revisited.append(folder)
        return False
    visited.add(real)
    return True


def _walk(folder: Path, real_root: Path, visited: set, scan: _Scan, out: list) -> None:
    names, subdirs = [], []
    for entry in _entries(folder, real_root, scan):
        if _is_dir(entry):
            subdirs.append(entry)
        elif entry.name.lower().endswith(EXTENSIONS):
            names.append(Path(entry.path))
    out.append((str(folder), sorted(names, key=lambda p: p.name)))
    for entry in subdirs:
        if _visit(Path(entry.path), visited, scan):
            _walk(Path(entry.path), real_root, visited, scan, out)


def _refuse_empty_classes(root: Path, classes: list[str], counts: list[int], what: str, scan: _Scan) -> None:
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        more = f" (and {len(empty) - 1} more: {', '.join(empty[1:4])}{', ...' if len(empty) > 4 else ''})" \
            if len(empty) > 1 else ""
        raise DataMissingError(f"class folder {root / empty[0]}{more} has no {what} images: remove the folder or "
                               f"fill it (every sub-folder of dataset.path is a class){scan.note()}")


def center_crop_resize(img, resolution: int) -> np.ndarray:
    """The official ImageNet preprocessing (one function for the in-memory path and the streaming store, so both give
    the same pixels): the centered square of the short side, PIL bilinear resize; uint8 (3, R, R)."""
    from PIL import Image
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # PIL's modes of 16-bit greyscale files


def _decode(f: Path, transform):
    from PIL import Image
    try:
        with open(f, "rb") as fh:
            img = Image.open(fh)
            if img.mode in WIDE_GREY:  # 16-bit greyscale (PNG): scaled to 8 bits; convert() would clip at 255
                grey = np.asarray(img, dtype=np.float64) / 257.0
                img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
            img = img.convert("RGB")  # decodes the whole file: truncated/corrupt data fails here
        return transform(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return e


def bad_file_reason(f: Path, err: BaseException) -> str:
    """One short line saying why a file could not be decoded (PIL's message without the file name)."""
    reason = " ".join(str(getattr(err, "strerror", None) or err).split()).replace(repr(str(f)), "").strip()
    return "not a readable image" if "cannot identify image file" in reason else reason


def _decode_all(root: Path, scan: _Scan, resolution: int, skip_bad_files: bool) -> tuple[torch.Tensor, torch.Tensor]:
    def transform(img):
        return torch.from_numpy(center_crop_resize(img, resolution).copy())
    paths = [f for files in scan.files for f in files]
    labels = [c for c, files in enumerate(scan.files) for _ in files]
    workers = max(1, min(8, os.cpu_count() or 1, len(paths) // 64))
    if workers > 1:  # PIL and torch release the GIL while decoding and resizing
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda f: _decode(f, transform), paths))
    else:
        results = [_decode(f, transform) for f in paths]
    bad = [(f, r) for f, r in zip(paths, results) if isinstance(r, BaseException)]
    if bad:
        f, err = bad[0]
        reason = bad_file_reason(f, err)
        if not skip_bad_files:
            more = f" ({len(bad)} unreadable files in all)" if len(bad) > 1 else ""
            raise DataMissingError(f"cannot read image {f}: {reason}{more}; remove or replace it, or set "
                                   f"dataset.skip_bad_files=true to skip unreadable files")
        log.warning("skipped %d unreadable files, e.g. %s (%s)", len(bad), f, reason)
        keep = [not isinstance(r, BaseException) for r in results]
        counts = [0] * len(scan.classes)
        for label, ok in zip(labels, keep):
            counts[label] += ok
        _refuse_empty_classes(root, scan.classes, counts, "readable", scan)
        results = [r for r, ok in zip(results, keep) if ok]
        labels = [label for label, ok in zip(labels, keep) if ok]
    return torch.stack(results), torch.tensor(labels, dtype=torch.int64)
