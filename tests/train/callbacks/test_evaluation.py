"""Test-time confusion matrix, per-class accuracy, ECE and reliability diagram."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.functional.classification import multiclass_calibration_error
from torchvision.io import read_image

from cnnstress.core.data.classes import CIFAR10_CLASSES
from cnnstress.core.errors import ConfigError
from cnnstress.core.metrics import binned_calibration_error, reliability_bins
from tests.train.callbacks.test_failures import constant_model_trainer


def test_constant_model_confusion_accuracy_and_ece(make_config, tiny_cifar10_zip, tmp_path):
    # a test double without a linear head: no failure modes either
    trainer = constant_model_trainer(make_config, tiny_cifar10_zip)
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    # Every image is called "airplane" with probability 0.99; 8 test images per class.
    assert metrics["test/acc_class/airplane"] == 1.0
    for name in CIFAR10_CLASSES[1:]:
        assert metrics[f"test/acc_class/{name}"] == 0.0
    assert metrics["test/ece"] == pytest.approx(0.99 - 0.1, abs=1e-5)

    run = tmp_path / "run"
    confusion = json.loads((run / "confusion_matrix.json").read_text())
    assert confusion["classes"] == list(CIFAR10_CLASSES)
    expected = np.zeros((10, 10), dtype=int)
    expected[:, 0] = 8
    assert confusion["matrix"] == expected.tolist()
    reliability = json.loads((run / "reliability.json").read_text())
    # 15 bins and the confidence-1.0 bin torchmetrics keeps apart.
    assert reliability["n_bins"] == 15 and len(reliability["count"]) == 16
    assert reliability["count"][14] == 80 and reliability["accuracy"][14] == pytest.approx(0.1)
    for name in ("confusion_matrix.png", "reliability.png"):
        image = read_image(str(run / name))
        assert image.shape[0] in (3, 4) and min(image.shape[1:]) > 300

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert {"test/ece", "test/acc_class/cat"} <= set(events.Tags()["scalars"])
    assert {"test/confusion_matrix", "test/reliability"} <= set(events.Tags()["images"])


def test_reliability_bins_give_torchmetrics_ece():
    gen = torch.Generator().manual_seed(0)
    probs = torch.randn(500, 10, generator=gen).mul(2).softmax(1)
    target = torch.randint(0, 10, (500,), generator=gen)
    confidence, predicted = probs.max(1)
    bins = reliability_bins(confidence.numpy(), (predicted == target).numpy(), 15)
    ece = np.sum(np.abs(bins["accuracy"] - bins["confidence"]) * bins["count"]) / 500
    expected = multiclass_calibration_error(probs, target, 10, n_bins=15, norm="l1")
    assert ece == pytest.approx(float(expected), abs=1e-6)
    assert bins["count"].sum() == 500


def test_saturated_confidences_are_binned_as_torchmetrics_bins_them():
    # Confidence exactly 1.0 sits in a bin of its own in torchmetrics, and a confidence on an
    # edge in the upper bin. Merging 1.0 into the last bin would change the ECE here, as the
    # two bins' gaps have opposite signs.
    probs = torch.zeros(11, 10)
    probs[:5, 0] = 1.0  # saturated: 3 right, 2 wrong
    probs[5:8, 0], probs[5:8, 1] = 0.95, 0.05  # last bin, all right: under-confident
    probs[8:, 0], probs[8:, 1] = 0.6, 0.4  # 0.6 = 9/15 is an edge: bin [0.6, 0.667)
    target = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0])
    confidence, predicted = probs.max(1)
    bins = reliability_bins(confidence.numpy(), (predicted == target).numpy(), 15)
    assert bins["count"][15] == 5 and bins["accuracy"][15] == pytest.approx(0.6)
    assert bins["count"][14] == 3 and bins["count"][9] == 3
    expected = multiclass_calibration_error(probs, target, 10, n_bins=15, norm="l1")
    ece = binned_calibration_error(bins)
    assert ece == pytest.approx(float(expected), abs=1e-6)
    apart = (5 * abs(0.6 - 1.0) + 3 * abs(1.0 - 0.95) + 3 * abs(1 / 3 - 0.6)) / 11
    merged = (8 * abs(6 / 8 - (5 + 2.85) / 8) + 3 * abs(1 / 3 - 0.6)) / 11
    assert ece == pytest.approx(apart) and abs(apart - merged) > 0.02


def test_bad_bin_count_is_a_config_error(make_config):
    with pytest.raises(ConfigError, match=r"callbacks.evaluation.n_bins must be an integer >= 1"):
        make_config("callbacks.evaluation.n_bins=0")
