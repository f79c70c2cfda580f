"""Data: read CIFAR splits into uint8 tensors and serve them as Lightning batches."""

from cnnstress.core.data.classes import class_names
from cnnstress.core.data.datamodule import CIFARDataModule
from cnnstress.core.data.label_errors import CleanAccuracy, LabelErrors, load_label_errors
from cnnstress.core.data.sources import LabeledImages, load_split

__all__ = [
    "CIFARDataModule",
    "CleanAccuracy",
    "LabelErrors",
    "LabeledImages",
    "class_names",
    "load_label_errors",
    "load_split",
]
