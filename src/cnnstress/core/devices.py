"""What a device can compute: one answer for the augmentation, the models and the stresses.

Apple's MPS backend has no float64: a float64 tensor on an MPS device raises. Code that computes
in float64 for accuracy (the Gamma sampler of CutMix/MixUp, the elastic corruption's
coordinates) asks :func:`exact_float` for its dtype, so it runs in float32 there, and code
whose float64 step is worth a host round-trip (FastNet's whitening covariance, computed once)
asks :func:`supports_float64`. :func:`on_device_for` decides where the data splits live.
"""

from __future__ import annotations

from typing import Any

import torch

from cnnstress.core.rules import Either, Flag, OneOf, check


def supports_float64(device: torch.device | str) -> bool:
    """Whether tensors of ``device`` may be float64 (all devices but Apple's MPS)."""
    return torch.device(device).type != "mps"


def exact_float(device: torch.device | str) -> torch.dtype:
    """``torch.float64`` where ``device`` supports it (:func:`supports_float64`), else
    ``torch.float32``."""
    return torch.float64 if supports_float64(device) else torch.float32


ON_DEVICE_RULE = Either((Flag(), OneOf(("auto",))))


def on_device_for(value: Any, device_kind: str) -> bool:
    """``dataset.on_device`` for a run on ``device_kind``: ``auto`` keeps the data splits on the
    device for CUDA only (:class:`cnnstress.core.data.device_batches.DeviceBatches`)."""
    flag = check(ON_DEVICE_RULE, value, "dataset.on_device")
    return device_kind == "cuda" if flag == "auto" else flag
