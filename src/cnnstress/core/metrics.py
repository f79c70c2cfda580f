"""Numbers computed from per-image predictions, the same way wherever they are shown.

The training callbacks, the analysis and the stresses all call these, so a confident failure,
a reliability bin or an ECE means one thing across the run directory and the report.

Arrays: ``probs`` ``(N, C)`` softmax probabilities, ``target`` ``(N,)`` classes, ``index``
``(N,)`` dataset indices (official test indices where known).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15


def confident_wrong(probs: np.ndarray, target: np.ndarray, threshold: float) -> np.ndarray:
    """``(N,)`` bool: the top-1 prediction is wrong and its probability is ``>= threshold``.

    Inclusive, compared in the probabilities' dtype: a float32 probability equal to
    ``float32(threshold)`` counts.
    """
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    conf = probs[np.arange(len(pred)), pred]
    return (pred != np.asarray(target)) & (conf >= np.asarray(threshold, dtype=probs.dtype))


def find_failures(
    index: np.ndarray, target: np.ndarray, probs: np.ndarray, threshold: float = 0.0
) -> np.ndarray:
    """Rows of the failures (:func:`confident_wrong`), most confident first, ties by index.

    ``threshold=0`` ranks every wrong prediction.
    """
    probs = np.asarray(probs)
    rows = np.flatnonzero(confident_wrong(probs, target, threshold))
    conf = probs[rows].max(1) if rows.size else np.zeros(0)
    return rows[np.lexsort((np.asarray(index)[rows], -conf))]


def high_conf_errors(
    probs: np.ndarray, target: np.ndarray, thresholds: Sequence[float]
) -> np.ndarray:
    """``(T,)`` int64: how many predictions are :func:`confident_wrong` at each threshold."""
    return np.array(
        [int(confident_wrong(probs, target, t).sum()) for t in thresholds], dtype=np.int64
    )


def per_class_accuracy(probs: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C,)`` accuracy per true class (NaN for a class with no image)."""
    correct = (probs.argmax(1) == target).astype(np.float64)
    hits = np.bincount(target, weights=correct, minlength=num_classes)
    counts = np.bincount(target, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def expected_calibration_error(
    probs: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, n_bins: int = ECE_BINS
) -> float:
    """Top-1 ECE, L1, ``n_bins`` equal-width bins (torchmetrics)."""
    probs = torch.as_tensor(probs).float()
    return float(
        multiclass_calibration_error(
            probs, torch.as_tensor(target).long(), probs.shape[1], n_bins=n_bins, norm="l1"
        )
    )


def reliability_bins(
    confidences: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Confidence bins exactly as torchmetrics' calibration error bins them: ``n_bins``
    equal-width bins over [0, 1), each including its lower edge (a confidence equal to an edge
    lands in the upper bin), plus one more for a confidence of exactly 1.0, which torchmetrics
    keeps apart (it is common for saturated models).

    The edges are torchmetrics' own, ``torch.linspace`` in float32, and the confidences are
    compared in float32 as :func:`expected_calibration_error` passes them: float64 edges would
    put a confidence lying exactly on an edge into the neighbouring bin.

    Returns ``edges`` ``(n_bins + 1,)`` and per bin ``count``, ``accuracy`` and ``confidence``
    ``(n_bins + 1,)``: the last entry is the confidence-1.0 bin; empty bins hold 0. The
    count-weighted mean of ``|accuracy - confidence|`` is :func:`expected_calibration_error`.
    """
    confidences = np.asarray(confidences, dtype=np.float32)
    correct = np.asarray(correct, dtype=np.float64)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32).numpy()
    which = np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, n_bins)
    confidences = confidences.astype(np.float64)
    count = np.bincount(which, minlength=n_bins + 1).astype(np.float64)
    safe = np.maximum(count, 1)
    accuracy = np.bincount(which, weights=correct, minlength=n_bins + 1) / safe
    confidence = np.bincount(which, weights=confidences, minlength=n_bins + 1) / safe
    return {"edges": edges, "count": count, "accuracy": accuracy, "confidence": confidence}


def binned_calibration_error(bins: dict[str, np.ndarray]) -> float:
    """ECE (L1) of :func:`reliability_bins`' output: the count-weighted mean gap."""
    total = max(bins["count"].sum(), 1)
    return float(np.sum(np.abs(bins["accuracy"] - bins["confidence"]) * bins["count"]) / total)
