"""Test-time augmentation (TTA): evaluate a model on several views of each image and average.

Modes (the ``module.tta`` config key):

* ``null``: the plain model, one view.
* ``flip``: the mean of the logits of the image and of its left-right mirror (2 views).
* ``flip_translate``: airbench's level 2 (Jordan 2024): half the ``flip`` logits plus half the
  mean of the ``flip`` logits of the image translated by one pixel down-right and up-left
  (reflect-padded): 6 views with weights 1/4 (identity, mirror) and 1/8 (each translated view).

Every view is one batched forward pass on the device. The views are pixel shifts and mirrors of
normalised images, so the same function serves any backbone. Only evaluation (validation and
test logits, hence metrics, failures, calibration and ``predictions.npz``) uses TTA; CAMs and
the stresses explain or attack the plain model, since the CAM or the gradient of an averaged
ensemble of views is not the model's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from cnnstress.core.rules import OneOf

#: Number of views per image of each mode.
TTA_VIEWS: dict[str | None, int] = {None: 1, "flip": 2, "flip_translate": 6}


#: The rule of ``module.tta``.
TTA_RULE = OneOf(tuple(m for m in TTA_VIEWS if m is not None), optional=True)


def translate(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift ``(N, C, H, W)`` images by ``dy`` rows down and ``dx`` columns right (each -1, 0
    or 1), filling the uncovered border by reflection (``F.pad(..., "reflect")``)."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    return padded[..., 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def tta_logits(
    model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str | None
) -> torch.Tensor:
    """Logits ``(N, num_classes)`` of ``model`` on normalised ``images`` ``(N, C, H, W)``,
    averaged over the views of ``mode`` (see the module docstring)."""

    if mode not in TTA_VIEWS:
        raise ValueError(f"unknown test-time augmentation {mode!r}; valid: {list(TTA_VIEWS)}")

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * model(x) + 0.5 * model(x.flip(-1))

    if mode is None:
        return model(images)
    if mode == "flip":
        return mirrored(images)
    down_right, up_left = translate(images, 1, 1), translate(images, -1, -1)
    shifted = 0.5 * mirrored(down_right) + 0.5 * mirrored(up_left)
    return 0.5 * mirrored(images) + 0.5 * shifted
