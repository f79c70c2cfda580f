"""Read a whole CIFAR split into memory as uint8 tensors.

A dataset root is one of three kinds, detected from what is on disk:

* a zip file holding an image-folder tree (``train/<class>/<file>``, ``test/<class>/<file>``,
  optionally below one top-level folder);
* a directory holding that tree;
* a torchvision CIFAR root (``cifar-10-batches-py/`` or ``cifar-100-python/``), downloaded
  there by torchvision when it is missing and downloading is allowed.

Every split is decoded once (no PIL) and kept in a process-wide cache, so repeated
``setup`` calls and tests pay the decoding cost once.
"""

from __future__ import annotations

import functools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image

from cnnstress.data.classes import class_names
from cnnstress.errors import DataError

SPLITS = ("train", "test")
IMAGE_SIZE = 32
_TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_MEMBER = re.compile(r"^(?:.*/)?(train|test)/([^/]+)/([^/]+)$")


@dataclass(frozen=True)
class LabeledImages:
    """A split held in memory.

    Attributes:
        images: ``(N, 3, 32, 32)`` uint8 tensor.
        labels: ``(N,)`` int64 tensor of official class indices.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.numel()


def detect_root_kind(root: Path) -> str:
    """Return ``"zip"``, ``"folder"`` or ``"torchvision"`` for a dataset root.

    A path that does not exist yet counts as a torchvision root (torchvision may download there).
    """
    if root.is_file():
        return "zip"
    if (root / "train").is_dir() and (root / "test").is_dir():
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


def _decode(data: bytes, where: str) -> torch.Tensor:
    try:
        image = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB
        )
    except RuntimeError as err:
        raise DataError(f"cannot decode image {where}: {err}") from None
    if image.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"image {where} is {tuple(image.shape[-2:])}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    return image


def _class_index(folder_names: set[str], dataset: str, where: Path) -> dict[str, int]:
    official = class_names(dataset)
    if folder_names != set(official):
        unknown = sorted(folder_names - set(official))[:5]
        missing = sorted(set(official) - folder_names)[:5]
        raise DataError(
            f"class folders in {where} do not match the official {dataset} classes "
            f"(unexpected: {unknown or 'none'}, missing: {missing or 'none'})"
        )
    return {name: i for i, name in enumerate(official)}


def _stack(items: list[tuple[int, torch.Tensor]], where: Path, split: str) -> LabeledImages:
    if not items:
        raise DataError(f"no {split} images found in {where}")
    labels = torch.tensor([label for label, _ in items], dtype=torch.int64)
    return LabeledImages(torch.stack([image for _, image in items]), labels)


def _load_zip(path: Path, dataset: str, split: str) -> LabeledImages:
    try:
        with zipfile.ZipFile(path) as archive:
            members = []
            for name in archive.namelist():
                match = _MEMBER.match(name)
                if match and match[1] == split and Path(name).suffix.lower() in _IMAGE_SUFFIXES:
                    members.append((match[2], name))
            if not members:
                raise DataError(f"zip {path} has no {split}/<class>/<image> entries")
            index = _class_index({c for c, _ in members}, dataset, path)
            members.sort(key=lambda m: (index[m[0]], m[1]))
            items = [(index[c], _decode(archive.read(n), f"{path}:{n}")) for c, n in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
        raise DataError(f"cannot read zip {path}: {err} (is it a complete zip file?)") from None
    return _stack(items, path, split)


def _load_folder(root: Path, dataset: str, split: str) -> LabeledImages:
    split_dir = root / split
    folders = {p.name: p for p in split_dir.iterdir() if p.is_dir()}
    index = _class_index(set(folders), dataset, split_dir)
    items = []
    for name in sorted(folders, key=index.__getitem__):
        for file in sorted(folders[name].iterdir()):
            if file.suffix.lower() in _IMAGE_SUFFIXES:
                items.append((index[name], _decode(file.read_bytes(), str(file))))
    return _stack(items, split_dir, split)


def _load_torchvision(root: Path, dataset: str, split: str, download: bool) -> LabeledImages:
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset_cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[dataset]
    hint = (
        "pass dataset.root=<zip of train/<class>/*, test/<class>/*>, such a folder, or a "
        "torchvision CIFAR root (e.g. ../shared/datasets/cifar10-jpeg.zip)"
    )
    if root.suffix.lower() == ".zip" or (
        not (root / _TORCHVISION_FOLDERS[dataset]).is_dir() and not download
    ):
        raise DataError(f"no {dataset} data at {root} and dataset.download=false; {hint}")
    try:
        data = dataset_cls(str(root), train=split == "train", download=download)
    except Exception as err:  # torchvision raises URLError, RuntimeError, OSError, ...
        raise DataError(f"cannot load or download {dataset} at {root} ({err}); {hint}") from None
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
    return LabeledImages(images, torch.tensor(data.targets, dtype=torch.int64))
