"""Data: read CIFAR splits into uint8 tensors and serve them as Lightning batches."""

from cnnstress.data.classes import class_names
from cnnstress.data.datamodule import CIFARDataModule
from cnnstress.data.sources import LabeledImages, load_split

__all__ = ["CIFARDataModule", "LabeledImages", "class_names", "load_split"]
