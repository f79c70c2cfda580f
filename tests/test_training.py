"""End-to-end training runs composed from the real configs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnstress.run_files import read_metrics, read_predictions
from cnnstress.training import train
from tests.conftest import ROOT


def test_tiny_run_writes_every_run_file(make_config, tiny_cifar10_zip, tmp_path):
    cfg = make_config(f"dataset.root={tiny_cifar10_zip}", "dataset.val_size=32")
    metrics = train(cfg)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    on_disk = read_metrics(run)
    assert on_disk == pytest.approx(json.loads(json.dumps(metrics)))
    for key in ("test/acc", "test/loss", "test/acc_top5", "train/images_per_sec",
                "time/wall_seconds", "val/acc", "train/loss"):  # fmt: skip
        assert key in on_disk
    preds = read_predictions(run)
    assert preds["probs"].shape == (80, 10) and preds["probs"].dtype == np.float32
    np.testing.assert_array_equal(preds["index"], np.arange(80))
    np.testing.assert_array_equal(preds["target"], np.repeat(np.arange(10), 8))
    np.testing.assert_allclose(preds["probs"].sum(1), 1.0, rtol=1e-5)
    accuracy = (preds["probs"].argmax(1) == preds["target"]).mean()
    assert on_disk["test/acc"] == pytest.approx(accuracy)
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    ...
