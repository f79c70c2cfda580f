"""Diagrams of one model: its confusion matrix and reliability diagram (drawn by the training
callbacks, and as parts of the report's figures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cnnstress.core.metrics import reliability_bins
from cnnstress.core.plots.canvas import new_figure, save_figure


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Confusion matrix ``(C, C)`` (rows true, columns predicted), colour = row-normalised.

    Counts are printed in the cells when there are at most 20 classes.
    """
    matrix = np.asarray(matrix)
    c = matrix.shape[0]
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = 6 if c <= 20 else 12
    fig = new_figure(size + 1.2, size)
    ax = fig.add_subplot()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(c) if c <= 20 else np.arange(0, c, 5)
    ax.set_xticks(ticks, [class_names[i] for i in ticks], rotation=90, fontsize=8 if c <= 20 else 5)
    ax.set_yticks(ticks, [class_names[i] for i in ticks], fontsize=8 if c <= 20 else 5)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if c <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                str(int(count)),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"Confusion matrix (accuracy {accuracy:.4f}, n={int(matrix.sum())})")
    fig.tight_layout()
    return fig


def draw_reliability(ax: Any, bins: dict[str, np.ndarray], title: str) -> None:
    """Reliability bars on ``ax``: per-bin accuracy (blue) and its gap to the bin's mean
    confidence (red, hatched), the diagonal, and the confidence-1.0 bin as a marker at 1.0."""
    edges, count = bins["edges"], bins["count"]
    n_bins = len(edges) - 1
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = count[:n_bins] > 0
    acc, conf = bins["accuracy"][:n_bins][filled], bins["confidence"][:n_bins][filled]
    ax.bar(centers[filled], acc, width=width, edgecolor="black", color="tab:blue",
           label="accuracy")  # fmt: skip
    ax.bar(centers[filled], np.abs(conf - acc), bottom=np.minimum(acc, conf), width=width,
           color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//",
           label="gap to mean confidence")  # fmt: skip
    if count[n_bins] > 0:
        ax.plot([1.0], [bins["accuracy"][n_bins]], "D", color="tab:purple", clip_on=False,
                label=f"confidence 1.0 ({int(count[n_bins])} predictions)")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)


def reliability_figure(
    confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15, ece: float | None = None
) -> Figure:
    """Reliability diagram: per-bin accuracy against confidence, with the gap to the diagonal,
    and below it the histogram of confidences.

    Drawn by hand: torchmetrics computes the calibration error but draws no diagram.
    """
    bins = reliability_bins(confidences, correct, n_bins)
    edges, count = bins["edges"], bins["count"]
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig = new_figure(5, 6.2)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    title = "Reliability diagram"
    if ece is not None:
        title += f" (ECE {ece:.4f}, {n_bins} bins)"
    draw_reliability(top, bins, title)
    top.legend(loc="upper left", fontsize=8)
    count = count[:n_bins] + np.eye(n_bins)[-1] * count[n_bins]  # histogram: 1.0 in the last bar
    bottom.bar(centers, count / max(count.sum(), 1), width=width, color="gray", edgecolor="black")
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("fraction")
    fig.tight_layout()
    return fig


def plot_reliability(
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    path: str | Path,
    titles: tuple[str, str] = ("before", "after"),
) -> Path:
    """Two reliability diagrams side by side (:func:`draw_reliability`);
    ``before``/``after`` from :func:`cnnstress.stress.calibration.logit_bins`."""
    fig = new_figure(8, 4, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, bins, title in zip(axes, (before, after), titles, strict=True):
        draw_reliability(ax, bins, title)
        ax.set_xlabel("confidence")
    axes[1].set_ylabel("")
    axes[0].legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)
