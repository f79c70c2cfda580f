"""Wide ResNet for CIFAR (Zagoruyko & Komodakis 2016), WRN-depth-k.

Written here because torchvision's wide ResNets are the ImageNet variants.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from cnnstress.core.rules import Integer, Probability


class WideBlock(nn.Module):
    """Pre-activation basic block with dropout between the convolutions."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(out)))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen`` (``depth`` = 6n + 4); ``layer1`` .. ``layer3`` give 32x32, 16x16
    and 8x8 maps."""

    def __init__(
        self, depth: int = 28, widen: int = 10, dropout: float = 0.0, num_classes: int = 10
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)

        def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            blocks = [WideBlock(c_in, c_out, stride, dropout)]
            blocks += [WideBlock(c_out, c_out, 1, dropout) for _ in range(n - 1)]
            return nn.Sequential(*blocks)

        self.layer1 = stage(widths[0], widths[1], 1)
        self.layer2 = stage(widths[1], widths[2], 2)
        self.layer3 = stage(widths[2], widths[3], 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1)
        return self.fc(torch.flatten(x, 1))


class WRNDepth(Integer):
    """A WRN depth: 6n + 4 with n >= 1."""

    def convert(self, value: object) -> int:
        depth = super().convert(value)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError
        return depth

    def describe(self) -> str:
        return "6n+4 with n >= 1 (e.g. 16, 28)"


def wide_resnet(
    depth: Annotated[int, WRNDepth()] = 28,
    widen: Annotated[int, Integer(1)] = 10,
    dropout: Annotated[float, Probability()] = 0.0,
    num_classes: Annotated[int, Integer(1)] = 10,
) -> WideResNet:
    """Build WRN-``depth``-``widen`` (WRN-28-10: about 36.5M parameters)."""
    return WideResNet(depth, widen, dropout, num_classes)
