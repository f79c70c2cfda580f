"""Backbones for 32x32 inputs, one file per family. Each returns logits ``(N, num_classes)``."""

from cnnstress.core.models.airbench import FastNet, fast_net
from cnnstress.core.models.preact_resnet import preact_resnet18
from cnnstress.core.models.resnet import resnet18
from cnnstress.core.models.simple_cnn import SimpleCNN
from cnnstress.core.models.wide_resnet import wide_resnet

__all__ = ["FastNet", "SimpleCNN", "fast_net", "preact_resnet18", "resnet18", "wide_resnet"]
