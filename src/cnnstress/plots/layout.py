"""Panel layout shared by the multi-panel figures (one panel per setting or comparison)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cnnstress.plots.canvas import new_figure


def panel_grid(n: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """``n`` visible axes of ``panel`` inches each, ``ncols`` per row, on a constrained layout."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = new_figure(panel[0] * ncols, panel[1] * nrows, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]
