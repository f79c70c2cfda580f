"""Batched, per-sample augmentation that runs on the training device (order: see pipeline)."""

from cnnstress.core.augment.mix import CutMix, MixUp, sample_beta
from cnnstress.core.augment.ops import (
    ColorJitter,
    Cutout,
    RandomCrop,
    RandomErasing,
    RandomHorizontalFlip,
    RandomRotation,
)
from cnnstress.core.augment.pipeline import (
    IMAGE_OPS,
    MIX_OPS,
    BatchAugmentation,
    build_augmentation,
    drop_unlisted_ops,
)

__all__ = [
    "IMAGE_OPS",
    "MIX_OPS",
    "BatchAugmentation",
    "ColorJitter",
    "CutMix",
    "Cutout",
    "MixUp",
    "RandomCrop",
    "RandomErasing",
    "RandomHorizontalFlip",
    "RandomRotation",
    "build_augmentation",
    "drop_unlisted_ops",
    "sample_beta",
]
