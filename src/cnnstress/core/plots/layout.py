"""Panel layout shared by the multi-panel figures (one panel per setting or comparison)."""

from __future__ import annotations

import math
import textwrap

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cnnstress.core.plots.canvas import new_figure

# Characters per line of a legend entry or title naming a group: a name with its [key=value]
# items (or a data path) would otherwise widen the legend until the axes collapse.
LABEL_WIDTH = 48


def wrap(text: str, width: int = LABEL_WIDTH) -> str:
    """``text`` in lines of at most ``width`` characters (existing line breaks kept)."""
    return "\n".join(
        "\n".join(textwrap.wrap(line, width, break_on_hyphens=False)) or line
        for line in text.split("\n")
    )


def group_legend(ax: Axes, **kwargs: object) -> None:
    """``ax``'s legend (font size 8 unless given) with every entry wrapped by :func:`wrap`."""
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [wrap(label) for label in labels], **{"fontsize": 8, **kwargs})


def panel_grid(n: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """``n`` visible axes of ``panel`` inches each, ``ncols`` per row, on a constrained layout."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = new_figure(panel[0] * ncols, panel[1] * nrows, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def label_panel(
    ax: Axes,
    setting: tuple[str, ...],
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> None:
    """Axis labels, the setting (``dataset/model``) as title, a legend and a light grid: the
    finish of one panel of a per-setting figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title("/".join(setting), fontsize=10)
    group_legend(ax)
    ax.grid(alpha=0.3)
