"""Batched, per-sample augmentation that runs on the training device."""

from cnnstress.augment.pipeline import IMAGE_OPS, MIX_OPS, BatchAugmentation, build_augmentation

__all__ = ["IMAGE_OPS", "MIX_OPS", "BatchAugmentation", "build_augmentation"]
