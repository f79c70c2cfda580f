"""Embeddings: the head input of every backbone, or a named layer; the model left as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnstress.core.cam import hook_snapshot
from cnnstress.core.errors import ConfigError
from cnnstress.core.failure_modes import FailureModeSettings
from cnnstress.core.failure_modes.embeddings import embed, head_layer
from cnnstress.core.failure_modes.run import check_model
from cnnstress.core.models import SimpleCNN, fast_net, preact_resnet18, resnet18, wide_resnet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "make",
    [
        lambda: SimpleCNN(10, 8),
        lambda: fast_net(10, widths=(8, 16, 16)),
        lambda: resnet18(10),
        lambda: preact_resnet18(10),
        lambda: wide_resnet(depth=10, widen=1),
    ],
    ids=["simple_cnn", "fast_net", "resnet18", "preact_resnet18", "wide_resnet"],
)
def test_embeddings_are_the_head_input_of_every_backbone(make):
    torch.manual_seed(0)
    model = make().train()
    images = torch.randn(3, 3, 32, 32)
    _, head = head_layer(model)
    seen = []
    handle = head.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    before = hook_snapshot(model)
    grads = [p.grad for p in model.parameters()]
    features = embed(model, images)
    assert hook_snapshot(model) == before  # its own hook gone, the user's kept
    handle.remove()
    assert features.shape == (3, head.in_features)
    np.testing.assert_allclose(features, seen[0].numpy(), rtol=1e-5, atol=1e-5)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert all(g is None for g in grads) and all(p.grad is None for p in model.parameters())


def test_a_named_layer_is_spatially_averaged_and_a_bad_one_is_one_line():
    model = SimpleCNN(10, 8)
    images = torch.randn(2, 3, 32, 32)
    assert embed(model, images, "block2").shape == (2, 16)
    with pytest.raises(ConfigError, match=r"embedding_layer='block9'.*children are: block1"):
        check_model(model, FailureModeSettings(threshold=0.8, embedding_layer="block9"))
    with pytest.raises(ConfigError, match=r"embedding_layer=head: .*no nn\.Linear head"):
        check_model(nn.Sequential(nn.Conv2d(3, 4, 3)), FailureModeSettings(threshold=0.8))
