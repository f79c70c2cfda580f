"""The simple 3-block CNN used as the fast reference model."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from cnnstress.core.rules import Integer


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """Three conv-BN-ReLU-maxpool blocks and a linear head.

    Input ``(N, 3, 32, 32)``; the blocks give ``(N, w, 16, 16)``, ``(N, 2w, 8, 8)`` and
    ``(N, 4w, 4, 4)``, flattened into the linear head. ``width=32`` gives the 32/64/128-channel
    model.
    """

    def __init__(
        self, num_classes: Annotated[int, Integer(1)] = 10, width: Annotated[int, Integer(1)] = 32
    ) -> None:
        super().__init__()
        self.block1 = _block(3, width)
        self.block2 = _block(width, 2 * width)
        self.block3 = _block(2 * width, 4 * width)
        self.fc = nn.Linear(4 * width * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(x, 1))
