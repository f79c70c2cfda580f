"""Figures written by the callbacks and the analysis: captioned image grids, CAM overlays,
confusion matrices and reliability diagrams.

Everything draws on a fresh :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot
global state, safe in any process) and is rendered once to an RGB array, which is both saved
as PNG and logged to TensorBoard.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_grad_cam.utils.image import show_cam_on_image

from cnnstress.metrics import reliability_bins


def new_figure(width: float, height: float, dpi: int = 100, layout: str | None = None) -> Figure:
    """A figure of ``width`` x ``height`` inches on an Agg canvas (``layout="constrained"``
    keeps a suptitle clear of the axes' titles, which ``tight_layout`` does not)."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an ``(H, W, 3)`` uint8 RGB array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as PNG, creating the parent directory."""
    from torchvision.io import write_png

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write_png(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1), str(tmp))
    tmp.replace(path)
    return path


def to_hwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 ``(N, 3, H, W)`` (tensor or array) to uint8 ``(N, H, W, 3)``."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)).astype(np.uint8)


def overlay(
    images: np.ndarray, heatmaps: torch.Tensor | np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Heatmaps over images: uint8 ``(N, H, W, 3)`` and ``(N, H, W)`` in [0, 1] -> uint8 RGB.

    Uses pytorch-grad-cam's ``show_cam_on_image`` (jet colour map) with ``use_rgb=True``
    (its default is BGR); ``alpha`` is the heatmap's weight.
    """
    maps = heatmaps.numpy() if isinstance(heatmaps, torch.Tensor) else np.asarray(heatmaps)
    return np.stack(
        [
            show_cam_on_image(
                img.astype(np.float32) / 255,
                m.astype(np.float32),
                use_rgb=True,
                image_weight=1 - alpha,
            )
            for img, m in zip(images, maps, strict=True)
        ]
    )


FRAME_COLOR = (255, 0, 255)  # magenta: marks tiles (e.g. known label errors) in image grids


def image_grid(
    tiles: np.ndarray,
    captions: Sequence[str],
    ncols: int,
    title: str | None = None,
    scale: int = 3,
    caption_lines: int = 1,
    framed: Sequence[bool] | None = None,
) -> np.ndarray:
    """Captioned grid of tiles rendered to an RGB array ``(H, W, 3)`` uint8.

    Args:
        tiles: uint8 ``(N, h, w, 3)``, shown ``scale`` times larger (nearest neighbour).
        captions: one per tile, drawn above it (``\\n`` for extra lines).
        ncols: tiles per row.
        framed: per tile, whether to draw a :data:`FRAME_COLOR` frame (3 px) around it.

    The tiles are pasted into one montage drawn on a single axes: much faster to render than
    one axes per tile.
    """
    n, h, w = tiles.shape[:3]
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    dpi, font_pt, pad = 100, 8, 6
    th, tw, ring = h * scale, w * scale, pad // 2
    cap_px = int(caption_lines * font_pt * 1.45 * dpi / 72) + pad
    cell_h, cell_w = th + cap_px + pad, tw + pad
    montage = np.full((nrows * cell_h, ncols * cell_w, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        y, x = r * cell_h + cap_px, c * cell_w + ring
        if framed is not None and framed[i]:
            montage[y - ring : y + th + ring, x - ring : x + tw + ring] = FRAME_COLOR
        montage[y : y + th, x : x + tw] = tiles[i].repeat(scale, 0).repeat(scale, 1)
    title_px = 24 if title else 0
    total_px = montage.shape[0] + title_px
    fig = new_figure(montage.shape[1] / dpi, total_px / dpi, dpi)
    ax = fig.add_axes((0, 0, 1, montage.shape[0] / total_px))
    ax.imshow(montage, interpolation="nearest")
    ax.set_axis_off()
    for i, caption in enumerate(captions[:n]):
        r, c = divmod(i, ncols)
        ax.text(
            c * cell_w + cell_w / 2,
            r * cell_h + cap_px - ring - 1,
            caption,
            ha="center",
            va="bottom",
            fontsize=font_pt,
            linespacing=1.1,
        )
    if title:
        fig.text(0.5, 1 - 4 / total_px, title, ha="center", va="top", fontsize=10)
    return figure_to_array(fig)


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
