"""The dataset normalisation: images as the network sees them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

    @classmethod
    def of(cls, dataset: Mapping[str, Any]) -> Normalize:
        """The normalisation of a ``dataset`` config node (its ``mean`` and ``std``)."""
        return cls(list(dataset["mean"]), list(dataset["std"]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A uint8 batch is converted into a new tensor, which can be scaled in place.
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
