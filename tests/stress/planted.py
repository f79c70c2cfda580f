"""Planted models whose right answer is known, and a stress context around them."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from cnnstress.core.data.sources import LabeledImages
from cnnstress.stress.context import StressContext


class LeftHalfNet(nn.Module):
    """Sees only the left half of the image: the right half is multiplied by 0 before a
    bias-free convolution, so its activations, gradients and CAMs there are 0."""

    def __init__(self, num_classes: int = 10, scale: float = 20.0) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)
        with torch.no_grad():
            self.fc.weight.mul_(scale)  # confident: the softmax reacts to what is removed
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., :16] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x * self.mask).mean((2, 3)))


def context(net: nn.Module, n: int = 64, tmp: Path | None = None, seed: int = 1) -> StressContext:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    cfg = OmegaConf.create({
        "dataset": {"name": "cifar10", "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3,
                    "eval_batch_size": 64, "val_size": 0},
        "model": {"target_layer": "features"},
    })  # fmt: skip
    return StressContext(tmp or Path("."), net.eval(), cfg, torch.device("cpu"),
                         LabeledImages(images, labels), "")  # fmt: skip


class ScaledLinear(nn.Module):
    """Logits ``scale * W x`` of a fixed random linear classifier."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.fc = nn.Linear(3 * 32 * 32, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.fc(x.flatten(1))
