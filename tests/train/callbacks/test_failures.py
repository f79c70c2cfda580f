"""High-confidence failures: exact selection, JSON, grid and logged counts."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torchvision.io import read_image

from cnnstress.core.config import build
from cnnstress.core.data.classes import CIFAR10_CLASSES
from cnnstress.core.errors import ConfigError
from cnnstress.core.metrics import find_failures
from cnnstress.train.training import build_datamodule, build_module, build_trainer
from tests.conftest import prepared


class ConstantLogits(nn.Module):
    """Predicts class 0 with probability 0.99 for every image (the rest share 0.01)."""

    def __init__(self, num_classes: int = 10, confidence: float = 0.99) -> None:
        super().__init__()
        rest = (1 - confidence) / (num_classes - 1)
        logits = torch.full((num_classes,), math.log(rest))
        logits[0] = math.log(confidence)
        self.register_buffer("logits", logits)
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so the module has a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.logits * self.scale).expand(x.shape[0], -1)


def constant_model_trainer(make_config, data_zip) -> L.Trainer:
    """A trainer that has tested :class:`ConstantLogits` on ``data_zip`` with the default
    callbacks but Grad-CAM and failure modes (a test double without a linear head)."""
    cfg = prepared(make_config(f"dataset.root={data_zip}", "callbacks.gradcam=null",
                               "callbacks.failure_modes=null"))  # fmt: skip
    module = build_module(cfg, ConstantLogits())
    trainer = build_trainer(cfg)
    trainer.test(module, datamodule=build_datamodule(cfg))
    return trainer


def test_find_failures_threshold_is_inclusive_and_order_is_exact():
    t = np.float32(0.8)
    probs = np.array(
        [
            [t, 1 - t, 0],  # index 10: wrong, confidence exactly the threshold
            [0.9, 0.1, 0],  # index 11: wrong, 0.9
            [0.05, 0.95, 0],  # index 12: right (true 1), confident: never a failure
            [0.9, 0.1, 0],  # index 13: wrong, 0.9 (ties with 11: lower index first)
            [0.79, 0.21, 0],  # index 14: wrong, below the threshold
            [0.1, 0.0, 0.9],  # index 15: wrong, 0.9, predicted class 2
        ],
        dtype=np.float32,
    )
    index = np.array([10, 11, 12, 13, 14, 15])
    target = np.array([1, 2, 1, 1, 1, 0])
    rows = find_failures(index, target, probs, 0.8)
    assert index[rows].tolist() == [11, 13, 15, 10]
    assert index[find_failures(index, target, probs, 0.85)].tolist() == [11, 13, 15]
    assert index[find_failures(index, target, probs, 0.0)].tolist() == [11, 13, 15, 10, 14]
    assert find_failures(index, target, probs, 1.0).size == 0


def run_test_stage(make_config, zip_path, *overrides):
    cfg = prepared(
        make_config(
            f"dataset.root={zip_path}",
            "callbacks.gradcam=null",
            "callbacks.failure_modes=null",
            *overrides,
        )
    )
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, ConstantLogits())
    trainer = build_trainer(cfg)
    trainer.test(module, datamodule=datamodule)
    return trainer, module


def test_constant_model_failures_json_grid_and_logs(make_config, tiny_cifar10_zip, tmp_path):
    trainer, _ = run_test_stage(
        make_config, tiny_cifar10_zip, "callbacks.high_conf_failures.threshold=0.98"
    )
    # 80 test images, 8 per class in class order; every non-airplane image is a failure.
    assert trainer.callback_metrics["test/high_conf_failures"].item() == 72
    assert trainer.callback_metrics["test/high_conf_failure_rate"].item() == pytest.approx(0.9)
    run = tmp_path / "run"
    data = json.loads((run / "failures" / "failures.json").read_text())
    assert data["split"] == "test" and data["threshold"] == 0.98
    assert data["num_images"] == 80 and data["count"] == 72
    failures = data["failures"]
    # Equal confidences: ordered by dataset index.
    assert [f["index"] for f in failures] == list(range(8, 80))
    for f in failures:
        true = f["index"] // 8
        assert f["true"] == {"id": true, "name": CIFAR10_CLASSES[true]}
        assert f["predicted"] == {"id": 0, "name": "airplane"}
        assert f["confidence"] == pytest.approx(0.99, abs=1e-6)
        assert [c["id"] for c in f["top3"]] == [0, 1, 2]
        assert [c["name"] for c in f["top3"]] == ["airplane", "automobile", "bird"]
        assert [c["prob"] for c in f["top3"]] == pytest.approx([0.99, 0.01 / 9, 0.01 / 9])

    grid = read_image(str(run / "failures" / "failures_grid.png"))
    assert grid.shape[0] == 3 and grid.shape[1] > 200 and grid.shape[2] > 500

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert "test/high_conf_failures" in events.Tags()["scalars"]
    assert events.Scalars("test/high_conf_failures")[-1].value == 72
    assert "test/high_conf_failures_grid" in events.Tags()["images"]


def test_threshold_above_every_confidence_finds_nothing(make_config, tiny_cifar10_zip, tmp_path):
    trainer, _ = run_test_stage(
        make_config, tiny_cifar10_zip, "callbacks.high_conf_failures.threshold=0.995"
    )
    assert trainer.callback_metrics["test/high_conf_failures"].item() == 0
    data = json.loads((tmp_path / "run" / "failures" / "failures.json").read_text())
    assert data["count"] == 0 and data["failures"] == []
    assert (tmp_path / "run" / "failures" / "failures_grid.png").is_file()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("confidence_threshold=1.5", "confidence_threshold"),
        ("confidence_threshold=nan", "confidence_threshold"),
        ("callbacks.high_conf_failures.threshold=-0.1", "callbacks.high_conf_failures.threshold"),
    ],
)
def test_threshold_outside_unit_interval_is_a_config_error(make_config, override, key):
    with pytest.raises(ConfigError, match=rf"^{key} must be a probability in \[0, 1\]"):
        make_config(override)


def test_one_threshold_for_the_failures_and_their_cams(make_config):
    cfg = make_config("confidence_threshold=0.9")
    assert build(cfg.callbacks.high_conf_failures).threshold == 0.9
    assert build(cfg.callbacks.gradcam).threshold == 0.9
