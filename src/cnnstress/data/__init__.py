"""Data: read CIFAR splits into uint8 tensors and serve them as Lightning batches."""

from cnnstress.data.classes import class_names
from cnnstress.data.datamodule import CIFARDataModule
from cnnstress.data.label_errors import CleanAccuracy, LabelErrors, load_label_errors
from cnnstress.data.sources import LabeledImages, load_split

__all__ = [
    "CIFARDataModule",
    "CleanAccuracy",
    "LabelErrors",
    "LabeledImages",
    "class_names",
    "load_label_errors",
    "load_split",
]
