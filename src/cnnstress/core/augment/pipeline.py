"""Compose the configured augmentation ops into one batched, seeded pipeline.

The ``augmentation`` config node maps op names to their parameters, e.g.
``{"crop": {"padding": 4, "p": 1.0}, "cutout": {"size": 16, "p": 1.0, "fill": 0.0}}``; on
the command line, ``augmentation=[crop,flip,cutout]`` picks the ops (one file per op in
``conf/augmentation/``) and ``augmentation.cutout.size=8`` sets a parameter.

Order of application is fixed, whatever order the config lists the ops in:

1. geometry: ``crop``, ``flip``, ``rotation``;
2. colour: ``color_jitter``;
3. occlusion: ``cutout``, ``erasing`` (after geometry, so holes stay axis-aligned squares and
   rectangles of exactly the fill value);
4. at most one batch-mixing op, ``cutmix`` or ``mixup``, last, so a pasted or blended
   partner carries its own augmentation; it adds soft targets.

All ops run in pixel space (float in ``[0, 1]``) before normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnstress.core.augment.mix import CutMix, MixUp
from cnnstress.core.augment.ops import (
    ColorJitter,
    Cutout,
    RandomCrop,
    RandomErasing,
    RandomHorizontalFlip,
    RandomRotation,
)
from cnnstress.core.errors import ConfigError

ImageOp = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
MixOp = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

#: Image ops by config name, in the order they are applied whatever order the config lists.
IMAGE_OPS: dict[str, type] = {
    "crop": RandomCrop,
    "flip": RandomHorizontalFlip,
    "rotation": RandomRotation,
    "color_jitter": ColorJitter,
    "cutout": Cutout,
    "erasing": RandomErasing,
}
#: Batch-mixing ops by config name; they run after every image op and produce soft targets.
MIX_OPS: dict[str, type] = {
    "cutmix": CutMix,
    "mixup": MixUp,
}


class BatchAugmentation:
    """Image ops in a fixed order, then at most one batch-mixing op.

    Call with a uint8 batch ``(N, C, H, W)`` (or float in ``[0, 1]``) and int64 targets
    ``(N,)``; returns a float batch in ``[0, 1]`` and either ``None`` (targets unchanged) or
    float soft targets ``(N, num_classes)``.
    """

    def __init__(
        self, image_ops: list[ImageOp], mix_op: MixOp | None = None, num_classes: int = 10
    ) -> None:
        self.image_ops = image_ops
        self.mix_op = mix_op
        self.num_classes = num_classes

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = images.float().div_(255) if images.dtype == torch.uint8 else images
        for op in self.image_ops:
            x = op(x, generator)
        if self.mix_op is None:
            return x, None
        soft = torch.nn.functional.one_hot(targets, self.num_classes).to(x.dtype)
        return self.mix_op(x, soft, generator)


def build_augmentation(ops: Mapping[str, Any] | None, num_classes: int) -> BatchAugmentation:
    """The pipeline of the ``augmentation`` config node: op name -> op (the node's schema
    objects, e.g. ``{"crop": RandomCrop(padding=4), "cutout": Cutout(size=16)}``), applied in
    the fixed order of :data:`IMAGE_OPS` then at most one of :data:`MIX_OPS`.

    Raises:
        ConfigError: an unknown op name, an op of the wrong type, or two batch-mixing ops.
    """
    ops = dict(ops or {})
    known = {**IMAGE_OPS, **MIX_OPS}
    for name, op in ops.items():
        if name not in known:
            raise ConfigError(f"unknown augmentation op {name!r}; valid: {', '.join(known)}")
        if not isinstance(op, known[name]):
            raise ConfigError(f"augmentation.{name} must be a {known[name].__name__}, got {op!r}")
    mixes = [name for name in MIX_OPS if name in ops]
    if len(mixes) > 1:
        raise ConfigError(
            f"augmentation: choose at most one batch-mixing op of {', '.join(MIX_OPS)}, got {mixes}"
        )
    image_ops = [ops[name] for name in IMAGE_OPS if name in ops]
    return BatchAugmentation(image_ops, ops[mixes[0]] if mixes else None, num_classes)


def drop_unlisted_ops(cfg: DictConfig) -> list[str]:
    """Remove from ``cfg.augmentation`` the ops that are not in the augmentation list but whose
    parameters a recipe or an override set; return their names.

    An op of the list comes from its ``conf/augmentation`` file and carries its schema (the op's
    dataclass). A plain node was created by a setting alone, such as the fast recipe's
    ``augmentation.crop.padding: 2`` in a run whose list does not have the op
    (``experiment=fast_cifar10 augmentation=[]``): it must not add the op with default values.
    """
    node = cfg.get("augmentation")
    if not isinstance(node, DictConfig):
        return []
    known = {**IMAGE_OPS, **MIX_OPS}
    dropped = [
        name
        for name, params in node.items()
        if name in known
        and isinstance(params, DictConfig)
        and OmegaConf.get_type(params) is not known[name]
    ]
    with open_dict(cfg):
        for name in dropped:
            del cfg.augmentation[name]
    return dropped
