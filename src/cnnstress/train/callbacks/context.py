"""What the stress-test callbacks read from their Trainer: the dataset's class names, the
images of a split, the known label errors and the TensorBoard writer."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from cnnstress.core.data.label_errors import LabelErrors


def trainer_class_names(trainer: L.Trainer, num_classes: int) -> list[str]:
    """The datamodule's official class names, else ``"0"``, ``"1"``, ..."""
    names = getattr(trainer.datamodule, "classes", None) if trainer.datamodule else None
    if names is not None and len(names) == num_classes:
        return list(names)
    return [str(i) for i in range(num_classes)]


def split_images(trainer: L.Trainer, stage: str, index: np.ndarray) -> torch.Tensor | None:
    """uint8 ``(N, 3, H, W)`` images of the ``stage`` split at dataset ``index``, if known.

    ``index`` is what batches carry: official test indices in a test split that has them, else
    positions in the official split the images come from (the validation split's indices are
    positions in the official training split); the split's ``rows`` maps them to its images.
    """
    datamodule = trainer.datamodule
    split = getattr(datamodule, f"{stage}_set", None) if datamodule is not None else None
    if split is None or not hasattr(split, "images"):
        return None
    index = torch.as_tensor(np.asarray(index), dtype=torch.long)
    return split.images[split.rows(index) if hasattr(split, "rows") else index]


def label_errors_of(trainer: L.Trainer, stage: str) -> LabelErrors | None:
    """The known label errors that apply to the ``stage`` split's indices (see
    :meth:`CIFARDataModule.label_errors`), or None."""
    getter = getattr(trainer.datamodule, "label_errors", None) if trainer.datamodule else None
    return getter(stage) if callable(getter) else None


def tensorboard_writer(trainer: L.Trainer) -> Any | None:
    """The SummaryWriter of the first TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
