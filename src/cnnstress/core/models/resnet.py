"""ResNet-18 adapted to 32x32 inputs (as in most CIFAR work, e.g. kuangliu/pytorch-cifar)."""

from __future__ import annotations

from typing import Annotated

from torch import nn
from torchvision.models import resnet18 as torchvision_resnet18

from cnnstress.core.rules import Integer


def resnet18(num_classes: Annotated[int, Integer(1)] = 10) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool.

    Input ``(N, 3, 32, 32)``; ``layer1`` .. ``layer4`` give 32x32, 16x16, 8x8 and 4x4 maps.
    About 11.17M parameters for 10 classes.
    """
    net = torchvision_resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net
