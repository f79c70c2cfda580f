"""Read a whole CIFAR split into memory as uint8 tensors.

A dataset root is one of three kinds, detected from what is on disk:

* a zip file holding an image-folder tree (``train/<class>/<file>``, ``test/<class>/<file>``,
  optionally below one top-level folder);
* a directory holding that tree;
* a torchvision CIFAR root (``cifar-10-batches-py/`` or ``cifar-100-python/``), downloaded
  there by torchvision when it is missing and downloading is allowed.

Every split is decoded once (no PIL) and kept in a process-wide cache, so repeated
``setup`` calls and tests pay the decoding cost once.

Official test indices: a torchvision root has them (its order is the official one). A zip or
folder has them when every test file is named by an integer (``test/cat/00000.jpg``), the
integers are unique and below the official test-set size (10,000), and the labels agree with
the official ones wherever the shipped label-error lists know them; the test split is then
ordered by that index (so a complete copy loads in torchvision's order), and it may be a subset
of the official test set (classes may be missing). Otherwise the test split keeps the sorted
(class, file name) order and its indices are positions; the log says why, once. Train file names
are never official indices (the official train split has no such naming convention).
"""

from __future__ import annotations

import functools
import logging
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from cnnstress.core.data.classes import class_names
from cnnstress.core.data.label_errors import load_label_errors
from cnnstress.core.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGE_SIZE = 32
_TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
# What torchvision.io.decode_image reads (no BMP, no TIFF).
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}
_MEMBER = re.compile(r"^(?:.*/)?(train|test)/([^/]+)/([^/]+)$")
OFFICIAL_TEST_SIZE = 10_000  # CIFAR-10 and CIFAR-100 alike


@dataclass(frozen=True)
class LabeledImages:
    """A split held in memory.

    Attributes:
        images: ``(N, 3, 32, 32)`` uint8 tensor.
        labels: ``(N,)`` int64 tensor of official class indices.
        ids: ``(N,)`` int64 tensor of the official index of each image, strictly increasing;
            ``None`` when unknown (then an image's dataset index is its position).
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.ids is not None and (
            self.ids.shape != self.labels.shape or bool((self.ids.diff() <= 0).any())
        ):
            raise ValueError("ids must be a strictly increasing (N,) tensor, one per image")

    def __len__(self) -> int:
        return self.labels.numel()

    def contains(self, index: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Bool ``(K,)``: is each dataset ``index`` ``(K,)`` one of this split's images?"""
        index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        if self.ids is None:
            return (index >= 0) & (index < len(self))
        if len(self) == 0:
            return torch.zeros(index.shape, dtype=torch.bool)
        pos = torch.searchsorted(self.ids, index).clamp(max=len(self) - 1)
        return self.ids[pos] == index

    def rows(self, index: torch.Tensor | np.ndarray) -> torch.Tensor:
        """int64 ``(K,)`` rows of ``images``/``labels`` holding the images at dataset ``index``
        ``(K,)`` (official indices when ``ids`` is known, else positions).

        Raises:
            IndexError: an index is not in this split.
        """
        index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        missing = index[~self.contains(index)]
        if missing.numel():
            raise IndexError(f"dataset indices {missing[:5].tolist()} are not in this split")
        return index if self.ids is None else torch.searchsorted(self.ids, index)


# Names a local copy of each dataset may have inside a data folder ($CNNSTRESS_DATA), in the
# order they are looked for; a torchvision root is the data folder itself.
LOCAL_COPIES = {
    "cifar10": ("cifar10-jpeg.zip", "cifar10.zip", "cifar10"),
    "cifar100": ("cifar100.zip", "cifar100"),
}


def holds_dataset(path: Path, dataset: str) -> bool:
    """Whether ``path`` is a usable local copy of ``dataset`` (a zip, an image-folder tree
    with a train split, or a torchvision root with the dataset's folder)."""
    if path.is_file():
        return path.suffix.lower() == ".zip"
    if (path / "train").is_dir() and (path / "test").is_dir():
        return True
    return (path / _TORCHVISION_FOLDERS.get(dataset, "?")).is_dir()


@dataclass(frozen=True)
class DataRoot:
    """Where a dataset is read from and how it was found.

    Attributes:
        path: the root handed to :func:`load_split`.
        download: whether torchvision may download into ``path`` (only for the fallback).
        source: ``"dataset.root"``, ``"data_dir"`` or ``"download"``.
    """

    path: str
    download: bool
    source: str


def resolve_root(
    dataset: str,
    root: str | Path | None,
    data_dir: str | Path | None,
    download_dir: str | Path,
    download: bool = True,
) -> DataRoot:
    """Find ``dataset``, in this order: ``root`` when given; a local copy in ``data_dir``
    (``$CNNSTRESS_DATA``, by default the shared copy beside the project; names in
    :data:`LOCAL_COPIES`, or ``data_dir`` as a torchvision root); else the torchvision root
    ``download_dir``, which torchvision fills on first use when ``download`` is true.

    Paths are returned absolute with links and ``..`` resolved, so the run record names the
    same data the same way from any checkout or working directory.

    Nothing is read or downloaded here; :func:`load_split` does that.
    """
    class_names(dataset)  # an unknown dataset is a ConfigError naming the valid ones
    if root not in (None, ""):
        return DataRoot(str(Path(root).expanduser().resolve()), download, "dataset.root")
    if data_dir not in (None, ""):
        folder = Path(data_dir).expanduser().resolve()
        for name in LOCAL_COPIES.get(dataset, ()):
            if holds_dataset(folder / name, dataset):
                return DataRoot(str(folder / name), False, "data_dir")
        if holds_dataset(folder, dataset):
            return DataRoot(str(folder), False, "data_dir")
    return DataRoot(str(Path(download_dir).expanduser().resolve()), download, "download")


def detect_root_kind(root: Path) -> str:
    """Return ``"zip"``, ``"folder"`` or ``"torchvision"`` for a dataset root.

    A path that does not exist yet counts as a torchvision root (torchvision may download there).
    """
    if root.is_file():
        return "zip"
    if (root / "train").is_dir() or (root / "test").is_dir():
        return "folder"
    return "torchvision"


def load_split(root: str | Path, dataset: str, split: str, download: bool = False) -> LabeledImages:
    """Load one split (``train`` or ``test``) of ``dataset`` from ``root``.

    Raises:
        DataError: the root is missing, unreadable, corrupt or in an unknown layout.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root).expanduser().resolve()
    stamp = root.stat().st_mtime_ns if root.exists() else 0
    return _load_split_cached(root, stamp, dataset, split, download)


@functools.lru_cache(maxsize=8)
def _load_split_cached(
    root: Path, stamp: int, dataset: str, split: str, download: bool
) -> LabeledImages:
    kind = detect_root_kind(root)
    if kind == "zip":
        return _load_zip(root, dataset, split)
    if kind == "folder":
        return _load_folder(root, dataset, split)
    return _load_torchvision(root, dataset, split, download)


def _is_image_entry(name: str) -> bool:
    """Whether an archive or folder entry is an image of the tree: not macOS metadata
    (``__MACOSX/``, ``._name`` resource forks) or another hidden file."""
    parts = Path(name).parts
    return (
        Path(name).suffix.lower() in _IMAGE_SUFFIXES
        and "__MACOSX" not in parts
        and not parts[-1].startswith(".")
    )


def _decode(data: bytes, where: str) -> torch.Tensor:
    try:
        image = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB
        )
    except (RuntimeError, ValueError) as err:
        raise DataError(f"cannot decode image {where}: {err}") from None
    if image.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"image {where} is {tuple(image.shape[-2:])}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    return image


def _class_index(
    folder_names: set[str], dataset: str, where: Path, allow_missing: bool = False
) -> dict[str, int]:
    official = class_names(dataset)
    unknown = sorted(folder_names - set(official))[:5]
    missing = sorted(set(official) - folder_names)[:5]
    if unknown or (missing and not allow_missing):
        raise DataError(
            f"class folders in {where} do not match the official {dataset} classes "
            f"(unexpected: {unknown or 'none'}, missing: {missing or 'none'})"
        )
    return {name: i for i, name in enumerate(official)}


_INTEGER_STEM = re.compile(r"[0-9]+")


def _file_ids(names: list[str]) -> tuple[np.ndarray | None, str]:
    """Official test indices from the file names, or ``(None, why not)``."""
    stems = [Path(name).stem for name in names]
    for name, stem in zip(names, stems, strict=True):
        if not _INTEGER_STEM.fullmatch(stem):
            return None, f"file {name!r} is not named by an integer"
    ids = np.array([int(stem) for stem in stems], dtype=np.int64)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        return None, f"{int((counts > 1).sum())} file numbers repeat (e.g. {unique[counts > 1][0]})"
    if ids.max() >= OFFICIAL_TEST_SIZE:
        return None, f"file number {ids.max()} is not below the official size {OFFICIAL_TEST_SIZE}"
    return ids, ""


def _stack(
    items: list[tuple[int, torch.Tensor]],
    where: Path,
    dataset: str,
    split: str,
    ids: np.ndarray | None = None,
    why_no_ids: str = "",
) -> LabeledImages:
    """The split from ``(label, image)`` items; ordered by ``ids`` when they are official."""
    if not items:
        raise DataError(f"no {split} images found in {where}")
    labels = torch.tensor([label for label, _ in items], dtype=torch.int64)
    images = torch.stack([image for _, image in items])
    if split != "test":
        return LabeledImages(images, labels)
    errors = load_label_errors(dataset)
    if ids is not None and errors is not None:
        wrong = errors.label_mismatches(ids, labels.numpy())
        if wrong:
            ids, why_no_ids = None, f"{wrong} images have labels other than the official ones"
    if ids is None:
        log.warning(
            "%s: test images are indexed by position, not by official test index (%s); "
            "label-error features are off",
            where,
            why_no_ids,
        )
        return LabeledImages(images, labels)
    order = torch.from_numpy(np.argsort(ids, kind="stable"))
    return LabeledImages(images[order], labels[order], torch.from_numpy(ids)[order])


def _load_zip(path: Path, dataset: str, split: str) -> LabeledImages:
    try:
        with zipfile.ZipFile(path) as archive:
            members = []
            for name in archive.namelist():
                match = _MEMBER.match(name)
                if match and match[1] == split and _is_image_entry(name):
                    members.append((match[2], name))
            if not members:
                raise DataError(f"zip {path} has no {split}/<class>/<image> entries")
            ids, why = _file_ids([n for _, n in members]) if split == "test" else (None, "")
            index = _class_index({c for c, _ in members}, dataset, path, ids is not None)
            order = sorted(range(len(members)), key=lambda i: (index[members[i][0]], members[i][1]))
            members = [members[i] for i in order]
            items = [(index[c], _decode(archive.read(n), f"{path}:{n}")) for c, n in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error) as err:
        raise DataError(f"cannot read zip {path}: {err} (is it a complete zip file?)") from None
    return _stack(items, path, dataset, split, None if ids is None else ids[order], why)


def _load_folder(root: Path, dataset: str, split: str) -> LabeledImages:
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{root} has no {split}/ folder of {split}/<class>/<image> files")
    try:
        folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name != "__MACOSX")
        files = [
            (folder.name, file)
            for folder in folders
            for file in folder.iterdir()
            if _is_image_entry(file.name)
        ]
        ids, why = (
            _file_ids([f.name for _, f in files]) if split == "test" and files else (None, "")
        )
        index = _class_index({p.name for p in folders}, dataset, split_dir, ids is not None)
        order = sorted(range(len(files)), key=lambda i: (index[files[i][0]], files[i][1].name))
        files = [files[i] for i in order]
        items = [(index[name], _decode(file.read_bytes(), str(file))) for name, file in files]
    except OSError as err:  # an unreadable folder or file
        raise DataError(f"cannot read {err.filename or split_dir}: {err.strerror}") from None
    return _stack(items, split_dir, dataset, split, None if ids is None else ids[order], why)


def download_dataset(root: str | Path, dataset: str) -> bool:
    """Download ``dataset`` into ``root`` with torchvision unless a copy is there already (or
    ``root`` is a zip or an image folder). Returns whether it downloaded.

    The data module's ``prepare_data`` calls it once (per node, or once in all) before the
    other processes read the data, so DDP ranks never download into one folder at once.

    Raises:
        DataError: the download failed (offline, a disk error), with what to pass instead.
    """
    root = Path(root).expanduser().resolve()
    if detect_root_kind(root) != "torchvision" or (root / _TORCHVISION_FOLDERS[dataset]).is_dir():
        return False
    _torchvision_dataset(root, dataset, "train", download=True)  # one archive holds both splits
    return True


def _torchvision_dataset(root: Path, dataset: str, split: str, download: bool) -> Any:
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset_cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[dataset]
    example = {"cifar10": "/data/cifar10-jpeg.zip", "cifar100": "/data/cifar-100-root"}[dataset]
    hint = (
        f"pass a local copy of {dataset} as dataset.root=PATH (a zip or folder of "
        f"train/<class>/* and test/<class>/*, or a torchvision root; e.g. "
        f"dataset.root={example}), or put it in $CNNSTRESS_DATA"
    )
    if root.suffix.lower() == ".zip" or (
        not (root / _TORCHVISION_FOLDERS[dataset]).is_dir() and not download
    ):
        raise DataError(f"no {dataset} data at {root} and dataset.download=false; {hint}")
    try:
        return dataset_cls(str(root), train=split == "train", download=download)
    except Exception as err:  # torchvision raises URLError, RuntimeError, OSError, ...
        reason = " ".join(str(err).split()) or type(err).__name__
        what = "download" if download else "load"
        raise DataError(f"could not {what} {dataset} into {root} ({reason}); {hint}") from None


def _load_torchvision(root: Path, dataset: str, split: str, download: bool) -> LabeledImages:
    data = _torchvision_dataset(root, dataset, split, download)
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(data.targets, dtype=torch.int64)
    # torchvision keeps the official order: the test index is the position.
    return LabeledImages(images, labels, torch.arange(len(labels)) if split == "test" else None)
