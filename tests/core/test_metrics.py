"""Calibration bins and ECE against torchmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnstress.stress.calibration import (
    calibration_error,
    logit_bins,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reliability_bins_reproduce_torchmetrics_ece():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(5000, 10, generator=g)
    labels = torch.randint(0, 10, (5000,), generator=g)
    bins = logit_bins(logits, labels, 15)
    weights = bins["count"] / bins["count"].sum()
    gaps = np.nan_to_num(np.abs(bins["accuracy"] - bins["confidence"]))
    assert bins["count"].sum() == 5000
    assert float((weights * gaps).sum()) == pytest.approx(
        calibration_error(logits, labels, 15), abs=1e-5
    )
