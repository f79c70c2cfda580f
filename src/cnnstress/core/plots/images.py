"""Image figures: captioned image grids (failures, CAMs, stress examples) and CAM overlays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam.utils.image import show_cam_on_image

from cnnstress.core.plots.canvas import figure_to_array, new_figure


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
