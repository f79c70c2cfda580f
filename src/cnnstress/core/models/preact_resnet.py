"""Pre-activation ResNet-18 for 32x32 inputs (He et al. 2016, "Identity Mappings...").

Written here because torchvision has no pre-activation ResNet.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from cnnstress.core.rules import Integer


class PreActBlock(nn.Module):
    """BN-ReLU-conv x2 with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet; ``layer1`` .. ``layer4`` give 32x32, 16x16, 8x8 and 4x4 maps."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        layers, c_in = [], 64
        for i, (n, c_out) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            layers.append(
                nn.Sequential(
                    *[
                        PreActBlock(c, c_out, s)
                        for c, s in zip([c_in] + [c_out] * (n - 1), strides, strict=True)
                    ]
                )
            )
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1)
        return self.fc(torch.flatten(x, 1))


def preact_resnet18(num_classes: Annotated[int, Integer(1)] = 10) -> PreActResNet:
    """Pre-activation ResNet-18 (about 11.17M parameters for 10 classes)."""
    return PreActResNet((2, 2, 2, 2), num_classes)
