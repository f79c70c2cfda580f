"""Backbones: shapes, parameter counts, and the class count following the dataset."""

from __future__ import annotations

import pytest
import torch

from cnnstress.core.config import build
from cnnstress.core.models import SimpleCNN, preact_resnet18, resnet18, wide_resnet
from tests.conftest import compose_train_config


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_resnet18_is_adapted_to_32x32():
    net = resnet18(num_classes=10)
    assert n_params(net) == 11_173_962  # the CIFAR ResNet-18 of the literature
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    maps = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(net, name).register_forward_hook(lambda m, i, o, n=name: maps.update({n: o.shape}))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert [maps[n][-1] for n in sorted(maps)] == [32, 16, 8, 4]


def test_simple_cnn_has_three_blocks_of_32_64_128_channels():
    net = SimpleCNN(num_classes=10)
    widths = [b[0].out_channels for b in (net.block1, net.block2, net.block3)]
    assert widths == [32, 64, 128]
    assert net(torch.randn(3, 3, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize(
    ("build", "expected"),
    [(lambda: preact_resnet18(10), 11_172_170), (lambda: wide_resnet(16, 4, 0.0, 10), 2_748_890)],
)
def test_other_cifar_backbones(build, expected):
    net = build()
    assert n_params(net) == expected
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "model", ["resnet18", "preact_resnet18", "wide_resnet", "simple_cnn", "fast_net"]
)
def test_class_count_follows_the_dataset(tmp_path, model):
    cfg = compose_train_config(tmp_path, [f"model={model}", "dataset=cifar100"])
    if model == "wide_resnet":  # WRN-28-10 is slow to build; the head is what matters here
        cfg.model.net.depth, cfg.model.net.widen = 10, 1
    net = build(cfg.model.net)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 100)
