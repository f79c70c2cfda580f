"""Temperature scaling (Guo et al. 2017): ECE and NLL before and after, reliability diagrams.

The temperature is fitted by minimising the NLL over ``log T`` with L-BFGS on held-out logits:

* the run's validation split when it has one (``dataset.val_size > 0``); every test image is
  then reported (``calibration/fit_split = "val"``);
* otherwise a fixed random half of the test split (``split_seed``), and only the other half is
  reported, before and after (``calibration/fit_split = "test_half"``).

Keys written: ``calibration/temperature``, ``calibration/ece_before``,
``calibration/ece_after``, ``calibration/nll_before``, ``calibration/nll_after``,
``calibration/acc`` (reported images), ``calibration/fit_images``,
``calibration/eval_images``, and the string ``calibration/fit_split``. ECE is torchmetrics'
``MulticlassCalibrationError`` (``n_bins`` equal-width bins, L1 norm); torchmetrics has no
reliability diagram, so :func:`cnnstress.core.metrics.reliability_bins` computes its bars, with
torchmetrics' bin edges.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import torch
import torch.nn.functional as F

from cnnstress.core.metrics import expected_calibration_error, reliability_bins
from cnnstress.core.plots.diagrams import plot_reliability
from cnnstress.core.rules import Integer
from cnnstress.stress.context import StressContext

PLOT_FILE = "stress_calibration.png"


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


def evaluate(ctx: StressContext, settings: CalibrationSettings | None = None) -> dict[str, Any]:
    """Fit a temperature, report ECE/NLL before and after, draw ``stress_calibration.png``."""
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
    out = {
        "calibration/fit_split": split,
        "calibration/fit_images": len(fit_labels),
        "calibration/eval_images": len(labels),
        "calibration/temperature": temperature,
        "calibration/acc": float((logits.argmax(1) == labels).float().mean()),
        "calibration/ece_before": calibration_error(logits, labels, s.n_bins),
        "calibration/ece_after": calibration_error(scaled, labels, s.n_bins),
        "calibration/nll_before": nll(logits, labels),
        "calibration/nll_after": nll(scaled, labels),
    }
    plot_reliability(
        logit_bins(logits, labels, s.n_bins),
        logit_bins(scaled, labels, s.n_bins),
        ctx.run_dir / PLOT_FILE,
        titles=(
            f"before: ECE {out['calibration/ece_before']:.3f}",
            f"after T={temperature:.2f} (fit on {split}): ECE {out['calibration/ece_after']:.3f}",
        ),
    )
    return out
