"""Temperature scaling (Guo et al. 2017): ECE and NLL before and after, reliability bins.

The temperature is fitted by minimising the NLL over ``log T`` with L-BFGS on held-out logits:

* the run's validation split when it has one (``dataset.val_size > 0``); every test image is
  then reported (``calibration/fit_split = "val"``);
* otherwise a fixed random half of the test split (``split_seed``), and only the other half is
  reported, before and after (info ``fit_split = "test_half"``).

Measurements: ``temperature``, ``ece_before``, ``ece_after``, ``nll_before``, ``nll_after``
(headline) and ``acc`` (the reported images). Info: ``fit_split``, ``fit_images``,
``eval_images``. ECE is torchmetrics' ``MulticlassCalibrationError`` (``n_bins`` equal-width
bins, L1 norm); torchmetrics has no reliability diagram, so
:func:`cnnstress.core.metrics.reliability_bins` computes its bars (arrays ``bins_before``,
``bins_after``), with torchmetrics' bin edges.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import torch
import torch.nn.functional as F

from cnnstress.core.metrics import expected_calibration_error, reliability_bins
from cnnstress.core.rules import Integer
from cnnstress.stress.context import StressContext
from cnnstress.stress.results import StressResult, measure


@dataclasses.dataclass
class CalibrationSettings:
    """Knobs of ``stress.calibration`` (conf/stress/calibration.yaml)."""

    n_bins: Annotated[int, Integer(1)] = 15
    # the test half used for fitting when the run has no validation split (fixed across runs)
    split_seed: Annotated[int, Integer(0)] = 0
    # L-BFGS iterations
    max_iter: Annotated[int, Integer(1)] = 100


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature ``T > 0`` minimising ``NLL(softmax(logits / T), labels)``.

    Args:
        logits: ``(N, C)``; labels: int64 ``(N,)``. Fitted in float64 on the CPU.
    """
    logits = logits.detach().double().cpu().clone()
    labels = labels.detach().cpu().clone()
    with torch.inference_mode(False), torch.enable_grad():
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [log_t],
            lr=1.0,
            max_iter=max_iter,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-10,
            tolerance_change=1e-12,
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (:func:`cnnstress.core.metrics.expected_calibration_error`) of
    ``softmax(logits)``."""
    return expected_calibration_error(logits.float().softmax(1), labels, n_bins)


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits)``."""
    return float(F.cross_entropy(logits.double(), labels))


def logit_bins(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """The reliability bins (:func:`~cnnstress.core.metrics.reliability_bins`) of
    ``softmax(logits)``'s top-1 predictions."""
    confidence, predicted = logits.float().softmax(1).max(1)
    return reliability_bins(confidence.numpy(), (predicted == labels).numpy(), n_bins)


def evaluate(ctx: StressContext, settings: CalibrationSettings | None = None) -> StressResult:
    """Fit a temperature, report ECE/NLL before and after, and the reliability bins."""
    s = settings or CalibrationSettings()
    logits, labels = ctx.clean_logits(), ctx.test.labels
    val = ctx.val_split()
    if val is not None:
        fit_logits, fit_labels, split = ctx.logits(val.images), val.labels, "val"
    else:
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(s.split_seed))
        fit, kept = order[: len(labels) // 2], order[len(labels) // 2 :].sort().values
        fit_logits, fit_labels, split = logits[fit], labels[fit], "test_half"
        logits, labels = logits[kept], labels[kept]
    temperature = fit_temperature(fit_logits, fit_labels, s.max_iter)
    scaled = logits / temperature
    rows = [
        measure("temperature", temperature, headline=True),
        measure("ece_before", calibration_error(logits, labels, s.n_bins), headline=True),
        measure("ece_after", calibration_error(scaled, labels, s.n_bins), headline=True),
        measure("nll_before", nll(logits, labels), headline=True),
        measure("nll_after", nll(scaled, labels), headline=True),
        measure("acc", (logits.argmax(1) == labels).float().mean()),
    ]
    info = {"fit_split": split, "fit_images": len(fit_labels), "eval_images": len(labels)}
    arrays = {
        "bins_before": logit_bins(logits, labels, s.n_bins),
        "bins_after": logit_bins(scaled, labels, s.n_bins),
    }
    return StressResult(rows, info, arrays)
