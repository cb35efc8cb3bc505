"""The user's own data: one sub-folder per class of png/jpg files (torchvision's ImageFolder layout).

Images are resized on the short side and center-cropped to the configured resolution.
Splits: `train` is every image; `test` is the same set (imagefolder has no held-out split unless
the user points `path` at a folder that holds one).
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .dataset import DataMissingError, ImageData

EXTENSIONS = (".png", ".jpg", ".jpeg")
log = logging.getLogger(__name__)


def load(split: str, resolution: int, path: str | None = None, skip_bad_files: bool = False, **_) -> ImageData:
    """Every image is decoded once here, before any training: an unreadable file stops the run with one line
    naming it (or, with `skip_bad_files`, is skipped and counted). Hidden files and folders ('.x') are ignored,
    symlinks are followed only while they stay inside `path` (loops are detected), an empty class folder or
    fewer than 2 classes are refused. The train and test splits are the same images: decoded once for both."""
    if not path:
        raise DataMissingError("dataset=imagefolder needs dataset.path=/folder/with/one/sub-folder/per/class")
    root = Path(path).expanduser()
    scan = _scan(root)
    if not scan.classes:
        raise DataMissingError(f"dataset.path={root} has no class sub-folders; put each class's png/jpg images "
                               f"in its own folder, e.g. {root}/cat/001.png{scan.note()}")
    _refuse_empty_classes(root, scan.classes, [len(files) for files in scan.files], "png/jpg/jpeg", scan)
    if len(scan.classes) < 2:
        raise DataMissingError(f"dataset.path={root} has 1 class folder ({scan.classes[0]}): a class-conditional "
                               f"GAN needs at least 2 classes (one sub-folder of images per class)")
    key = (str(root.resolve()), resolution, bool(skip_bad_files), scan.signature())
    if _CACHE.get("key") != key:  # the other split of the same call: reuse the decoded images
        _CACHE.clear()
        _CACHE.update(key=key, data=_decode_all(root, scan, resolution, bool(skip_bad_files)))
    images, labels = _CACHE["data"]
    return ImageData(images, labels, len(scan.classes), "imagefolder", split, list(scan.classes))


_CACHE: dict = {}  # the last load's decoded images (imagefolder's test split is its train split)


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


def _decode(f: Path, transform):
    from PIL import Image
    try:
        with open(f, "rb") as fh:
            img = Image.open(fh)
            img = img.convert("RGB")  # decodes the whole file: truncated/corrupt data fails here
        return transform(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return e


def _decode_all(root: Path, scan: _Scan, resolution: int, skip_bad_files: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.transforms import v2  # imported here: keeps `python -m cgan_bench` quick to start
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution)])
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
        reason = " ".join(str(getattr(err, "strerror", None) or err).split()).replace(repr(str(f)), "").strip()
        if "cannot identify image file" in reason:
            reason = "not a readable image"
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
