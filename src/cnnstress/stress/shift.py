"""Natural distribution shift: CIFAR-10.1 (Recht et al. 2019), a new test set for CIFAR-10.

Keys written: ``shift/cifar10.1/acc``, ``shift/cifar10.1/drop`` (clean test accuracy minus
CIFAR-10.1 accuracy; positive = worse on the new images), ``shift/cifar10.1/num_images``,
``shift/clean_acc``, and the string ``shift/cifar10.1/version``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from cnnstress.core.data.sources import LabeledImages
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.rules import OneOf, Text
from cnnstress.stress.context import StressContext, accuracy

VERSIONS = ("v6", "v4")


@dataclasses.dataclass
class ShiftSettings:
    """Knobs of ``stress.shift`` (conf/stress/shift.yaml)."""

    # folder holding cifar10.1_<version>_data.npy and cifar10.1_<version>_labels.npy
    root: Annotated[str | None, Text(optional=True)] = None
    version: Annotated[str, OneOf(VERSIONS)] = "v6"

    def validate(self, key: str) -> None:
        if self.root is None:
            raise ConfigError(
                f"{key}.root is not set: point it to the folder holding "
                f"cifar10.1_{self.version}_data.npy and cifar10.1_{self.version}_labels.npy"
            )


def load_cifar101(root: str | Path, version: str = "v6") -> LabeledImages:
    """CIFAR-10.1 from ``cifar10.1_<version>_data.npy`` (uint8 ``(N, 32, 32, 3)``) and
    ``cifar10.1_<version>_labels.npy`` (``(N,)``, CIFAR-10 class indices).

    Returns uint8 ``(N, 3, 32, 32)`` images and int64 labels.
    """
    root = Path(root)
    paths = [root / f"cifar10.1_{version}_{part}.npy" for part in ("data", "labels")]
    for path in paths:
        if not path.is_file():
            raise DataError(f"CIFAR-10.1 file {path} not found")
    try:
        data, labels = (np.load(p, allow_pickle=False) for p in paths)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read CIFAR-10.1 in {root}: {err}") from None
    if data.ndim != 4 or data.shape[1:] != (32, 32, 3) or data.dtype != np.uint8:
        raise DataError(f"{paths[0]} is {data.dtype} {data.shape}; expected uint8 (N, 32, 32, 3)")
    if labels.shape != (data.shape[0],) or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{paths[1]} must hold {data.shape[0]} labels in 0..9")
    images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    return LabeledImages(images, torch.from_numpy(labels.astype(np.int64)))


def evaluate(ctx: StressContext, settings: ShiftSettings | None = None) -> dict[str, Any]:
    """Accuracy on CIFAR-10.1 and its drop from the clean test accuracy."""
    s = settings or ShiftSettings()
    if ctx.dataset_name != "cifar10":
        raise ConfigError(
            f"stress shift (CIFAR-10.1) needs a cifar10 run, this one is {ctx.dataset_name}"
        )
    data = load_cifar101(s.root, s.version)
    acc = accuracy(ctx.logits(data.images), data.labels)
    clean = ctx.clean_acc()
    return {
        "shift/clean_acc": clean,
        "shift/cifar10.1/acc": acc,
        "shift/cifar10.1/drop": clean - acc,
        "shift/cifar10.1/num_images": len(data),
        "shift/cifar10.1/version": s.version,
    }
