"""The canvas every figure of cnnstress is drawn on, and how figures reach disk.

Everything draws on a fresh :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot
global state, safe in any process); a figure is saved as PNG, or rendered once to an RGB array
that is both saved and logged to TensorBoard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


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


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG and return the path."""
    path = Path(path)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def to_hwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 ``(N, 3, H, W)`` (tensor or array) to uint8 ``(N, H, W, 3)``."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)).astype(np.uint8)
