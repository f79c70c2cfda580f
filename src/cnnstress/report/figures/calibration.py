"""The analysis' calibration figure: every group's reliability curve."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from cnnstress.analysis.compare import Analysis
from cnnstress.core.metrics import ECE_BINS, reliability_bins
from cnnstress.core.plots.layout import group_legend, panel_grid


def reliability_overlay_figure(analysis: Analysis, n_bins: int = ECE_BINS) -> Figure:
    """Per setting: every group's reliability curve (all seeds pooled) over the diagonal."""
    settings = analysis.settings
    fig, axes = panel_grid(len(settings), 2, (5.0, 5.0))
    for ax, setting in zip(axes, settings, strict=True):
        ax.plot([0, 1], [0, 1], "k:", linewidth=1, label="perfect calibration")
        for group in (g for g in analysis.groups if g.key.setting == setting):
            conf = np.concatenate([r.confidence for r in group.runs])
            correct = np.concatenate([r.correct for r in group.runs])
            bins = reliability_bins(conf, correct, n_bins)  # the last bin: confidence 1.0
            filled = bins["count"] > 0
            ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "o-", markersize=4,
                    label=f"{group.key.name} (ECE {group.ece.mean:.3f})")  # fmt: skip
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"mean confidence per bin ({n_bins} bins)")
        ax.set_ylabel("accuracy per bin")
        ax.set_title("/".join(setting), fontsize=10)
        group_legend(ax, loc="lower right")
    return fig
