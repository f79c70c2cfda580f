"""Per-sample random image ops on whole batches, run on the training device.

Each op takes a float batch ``(N, C, H, W)`` with values in ``[0, 1]`` and a
:class:`torch.Generator` on the batch's device, and draws independent parameters for every
image. They are written here because torchvision.transforms.v2 draws one set of parameters
per call (one crop offset for the whole batch) and kornia draws its parameters on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnstress.errors import ConfigError


def check_probability(name: str, p: float) -> float:
    """Return ``p`` as a float, or raise :class:`ConfigError` if it is outside ``[0, 1]``."""
    if not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


def draw_mask(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Return a ``(N,)`` bool tensor, each entry True with probability ``p``."""
    return torch.rand(n, generator=generator, device=generator.device) < p


class RandomCrop:
    """Zero-pad by ``padding`` pixels, then crop back to the input size at a random offset.

    Offsets are drawn uniformly per image from ``[0, 2 * padding]`` on each axis.
    """

    def __init__(self, padding: int = 4, p: float = 1.0) -> None:
        if int(padding) < 0:
            raise ConfigError(f"augmentation.crop.padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.p = check_probability("augmentation.crop.p", p)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = images.shape
        pad, dev = self.padding, images.device
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=dev)
        # An image that is not cropped keeps the centre offset, i.e. stays unchanged.
        offsets = torch.where(draw_mask(n, self.p, generator), offsets, pad)
        rows = (offsets[0, :, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (offsets[1, :, None] + torch.arange(w, device=dev))[:, None, None, :]
        padded = F.pad(images, (pad, pad, pad, pad))
        batch = torch.arange(n, device=dev)[:, None, None, None]
        channel = torch.arange(c, device=dev)[None, :, None, None]
        return padded[batch, channel, rows, cols]


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = check_probability("augmentation.flip.p", p)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = draw_mask(images.shape[0], self.p, generator)[:, None, None, None]
        return torch.where(flip, images.flip(-1), images)
