"""The analysis' figures comparing groups of runs, each drawn from an
:class:`~cnnstress.analysis.compare.Analysis` (or the Grad-CAM side-by-side): moved test images,
confidences, high-confidence errors, per-class changes, CAMs of the reference's failures."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from cnnstress.core.data import class_names
from cnnstress.core.plots.canvas import new_figure, to_hwc
from cnnstress.core.plots.images import overlay
from cnnstress.core.plots.layout import label_panel, panel_grid, wrap

if TYPE_CHECKING:
    from cnnstress.analysis.compare import Analysis, Comparison
    from cnnstress.analysis.gradcam import SideBySide

CORRECTED, WORSENED, BOTH_WRONG = "tab:green", "tab:red", "tab:gray"
# Per-class panels with more classes than this show only the largest gains and losses.
PER_CLASS_ALL_UP_TO = 30
PER_CLASS_TOP_K = 15


def _title(comparison: Comparison) -> str:
    return wrap(f"{comparison.other.key.label}\nvs {comparison.reference.key.name}")


def transitions_figure(analysis: Analysis) -> Figure | None:
    """Per comparison: corrected / worsened / both-wrong counts per seed and pooled."""
    shown = [c for c in analysis.comparisons if c.transitions]
    if not shown:
        return None
    fig, axes = panel_grid(len(shown), 3, (5.0, 3.8))
    for ax, comparison in zip(axes, shown, strict=True):
        tables = [*comparison.transitions.items(), ("pooled", comparison.pooled)]
        x = np.arange(len(tables))
        width = 0.27
        for offset, (name, colour) in enumerate(
            [("corrected", CORRECTED), ("worsened", WORSENED), ("both_wrong", BOTH_WRONG)]
        ):
            values = [getattr(t, name) for _, t in tables]
            bars = ax.bar(x + (offset - 1) * width, values, width, color=colour,
                          label=name.replace("_", " "))  # fmt: skip
            ax.bar_label(bars, fontsize=7)
        # short tick labels (the suptitle says which test): long ones overlap on narrow panels
        labels = [f"seed {s}\np={t.mcnemar.pvalue:.2g}" for s, t in tables[:-1]]
        crossed = comparison.crossed
        tested = crossed is not None and crossed.tested
        labels.append("all seeds" + (f"\np={crossed.pvalue:.2g}" if tested else ""))
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("test images")
        ax.set_title(_title(comparison), fontsize=9)
        ax.margins(y=0.15)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(
        "Test images moved against the reference\n(unadjusted p; per seed: McNemar; all seeds: "
        "the test over seeds x images)",
        fontsize=10,
    )
    return fig


def confidence_figure(analysis: Analysis) -> Figure:
    """Per group: histogram of top-1 confidence of correct and of wrong predictions (all seeds)."""
    fig, axes = panel_grid(len(analysis.groups), 4, (4.0, 3.0))
    bins = np.linspace(0, 1, 21)
    for ax, group in zip(axes, analysis.groups, strict=True):
        conf = np.concatenate([r.confidence for r in group.runs])
        correct = np.concatenate([r.correct for r in group.runs])
        ax.hist(conf[correct], bins=bins, color=CORRECTED, alpha=0.6, label="correct")
        ax.hist(conf[~correct], bins=bins, color=WORSENED, alpha=0.6, label="wrong")
        ax.set_title(wrap(f"{group.key.label} ({len(group.runs)} seed(s))"), fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_ylabel("predictions")
        ax.set_xlim(0, 1)
    axes[0].legend(fontsize=8)
    return fig


def high_conf_errors_figure(analysis: Analysis) -> Figure:
    """Per setting: mean high-confidence error count against threshold, per group (± std)."""
    settings = analysis.settings
    fig, axes = panel_grid(len(settings), 2, (5.5, 4.0))
    thresholds = np.array(analysis.thresholds)
    for ax, setting in zip(axes, settings, strict=True):
        for group in (g for g in analysis.groups if g.key.setting == setting):
            mean = group.high_conf.mean(0)
            std = group.high_conf.std(0, ddof=1) if len(group.runs) > 1 else None
            style = "-" if not analysis.is_reference(group.key) else "--"
            ax.errorbar(thresholds, mean, yerr=std, fmt=style + "o", capsize=3, markersize=4,
                        label=f"{group.key.name} (n={len(group.runs)})")  # fmt: skip
        label_panel(
            ax, setting, "confidence threshold", "wrong predictions with confidence >= threshold"
        )
    return fig


def per_class_selection(
    delta: np.ndarray, all_up_to: int = PER_CLASS_ALL_UP_TO, k: int = PER_CLASS_TOP_K
) -> tuple[list[int], str]:
    """Class indices to draw, from the largest loss to the largest gain, and a subtitle.

    ``delta``: ``(C,)`` accuracy change (NaN for classes without test images, left out).
    Up to ``all_up_to`` classes all are drawn; beyond, only the ``k`` largest losses (< 0) and
    the ``k`` largest gains (> 0), so that 100 classes stay readable.
    """
    order = [int(i) for i in np.argsort(delta, kind="stable") if not np.isnan(delta[i])]
    if len(order) <= all_up_to:
        return order, f"all {len(order)} classes"
    losses = [i for i in order if delta[i] < 0][:k]
    gains = [i for i in order if delta[i] > 0][-k:]
    unchanged = sum(delta[i] == 0 for i in order)
    return losses + gains, (
        f"largest {len(losses)} losses and {len(gains)} gains of {len(order)} classes "
        f"({unchanged} unchanged)"
    )


def per_class_delta_figure(analysis: Analysis) -> Figure | None:
    """Per comparison: per-class accuracy change, sorted; top and bottom k for many classes."""
    if not analysis.comparisons:
        return None
    panels = []
    for comparison in analysis.comparisons:
        order, subtitle = per_class_selection(comparison.per_class_delta)
        panels.append((comparison, order, class_names(comparison.reference.key.dataset), subtitle))
    height = max(len(p[1]) for p in panels) * 0.22 + 1.2
    fig, axes = panel_grid(len(panels), 3, (4.8, height))
    for ax, (comparison, order, names, subtitle) in zip(axes, panels, strict=True):
        delta = comparison.per_class_delta[order] * 100
        colours = [CORRECTED if d >= 0 else WORSENED for d in delta]
        ax.barh(np.arange(len(order)), delta, color=colours)
        ax.set_yticks(np.arange(len(order)), [names[i] for i in order], fontsize=7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("accuracy change (percentage points, mean over seeds)")
        ax.set_title(f"{_title(comparison)}\n{subtitle}", fontsize=9)
    return fig


def gradcam_figure(side: SideBySide, alpha: float = 0.5) -> Figure:
    """Rows: the reference's top failures. Columns: the image (a known label error is marked,
    with the workers' class), then each model's CAM overlay for its own prediction, captioned
    "predicted (confidence)" in green when it equals the label."""
    rows, cols = len(side.index), 1 + len(side.columns)
    fig = new_figure(1.9 * cols, 2.05 * rows + 0.6, layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    images = to_hwc(side.images)
    overlays = [overlay(images, c.heatmaps, alpha) for c in side.columns]
    for r in range(rows):
        truth = side.classes[side.target[r]]
        axes[r, 0].imshow(images[r])
        title, colour = f"#{side.index[r]}\nlabel: {truth}", "black"
        if side.likely_true is not None and side.likely_true[r] > -2:
            likely = side.likely_true[r]
            title += "\nLABEL ERROR" + (f": likely {side.classes[likely]}" if likely >= 0 else "")
            colour = "tab:purple"
        axes[r, 0].set_title(title, fontsize=8, color=colour)
        for c, column in enumerate(side.columns, start=1):
            pred = int(column.pred[r])
            ok = pred == side.target[r]
            axes[r, c].imshow(overlays[c - 1][r])
            title = f"{side.classes[pred]} ({column.confidence[r]:.2f})"
            if r == 0:
                title = f"{wrap(column.title, 28)}\n{column.settings}\n{title}"
            axes[r, c].set_title(title, fontsize=8, color="tab:green" if ok else "tab:red")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(f"{'/'.join(side.setting)}: reference's most confident test failures", fontsize=10)
    return fig
