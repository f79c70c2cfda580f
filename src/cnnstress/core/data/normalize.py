"""The dataset normalisation: images as the network sees them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for uint8 images (0-255) or float images in [0, 1].

    ``(N, C, H, W)`` -> float32 ``(N, C, H, W)``. The one normalisation of cnnstress: training
    batches (the data module), the stresses (which perturb pixels in [0, 1] and keep this in the
    differentiable forward pass), Grad-CAM and the analysis all call it.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        # mean and std on other devices, copied once: the data module keeps this module on the
        # host while batches arrive on the GPU, and a copy per batch makes the host wait.
        self._copies: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def of(cls, dataset: Mapping[str, Any]) -> Normalize:
        """The normalisation of a ``dataset`` config node (its ``mean`` and ``std``)."""
        return cls(list(dataset["mean"]), list(dataset["std"]))

    def stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)``, each ``(1, C, 1, 1)``, on ``device`` (copied there once)."""
        if self.mean.device == device:
            return self.mean, self.std
        copies = self._copies.get(device)
        if copies is None or copies[0].device != device:
            copies = self._copies[device] = (self.mean.to(device), self.std.to(device))
        return copies

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Normalize:
        self._copies = {}  # moved or cast (.to, .half): the copies may no longer match
        return super()._apply(fn, recurse)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A uint8 batch is converted into a new tensor, which can be scaled in place.
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        mean, std = self.stats(x.device)
        return (x - mean) / std
