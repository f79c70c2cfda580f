"""The centre/surround split of an image: a centred square standing in for the object.

CIFAR has no object masks, but its objects sit near the image centre, so a centred square of
side ``size`` pixels is a *proxy* for the object and the rest of the image, the *surround*, for
the background (16 of 32 pixels by default: rows and columns 8-23, a quarter of the area). One
definition for every user: the background stress (:mod:`cnnstress.stress.background`) and the
failure modes (:mod:`cnnstress.core.failure_modes`), which describe a mode's centre and surround and
its CAM mass outside the centre.
"""

from __future__ import annotations

from typing import Any

import torch

from cnnstress.core.errors import ConfigError

DEFAULT_CENTRE_SIZE = 16


def centre_mask(
    height: int,
    width: int,
    size: int,
    device: Any = "cpu",
    key: str = "stress.background.centre_size",
) -> torch.Tensor:
    """Bool ``(H, W)``, True on the centred ``size`` x ``size`` square.

    The square starts at row ``(H - size) // 2`` and column ``(W - size) // 2``. ``key`` names
    the setting in the one :class:`ConfigError` line raised for a size that does not fit.
    """
    if not 1 <= size < min(height, width):
        raise ConfigError(
            f"{key} must be between 1 and {min(height, width) - 1} "
            f"for {height}x{width} images, got {size}"
        )
    top, left = (height - size) // 2, (width - size) // 2
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[top : top + size, left : left + size] = True
    return mask


def outside_share(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per map, the share of its mass outside ``mask``: ``sum(map * ~mask) / sum(map)``.

    ``maps``: non-negative ``(N, H, W)``; ``mask``: bool ``(H, W)``. Returns float64 ``(N,)``,
    NaN for a map with no mass. A flat map gives the surround's share of the area (0.75 for the
    default 16-of-32 centre).
    """
    maps = maps.double()
    total = maps.sum((1, 2))
    outside = (maps * (~mask).to(maps.device)).sum((1, 2))
    return torch.where(total > 0, outside / total.clamp_min(1e-300), torch.nan)
