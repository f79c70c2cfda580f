"""The analysis figures. Each function draws one figure from an :class:`Analysis`.

Figures use the shared helpers of :mod:`cnnstress.plots` (Agg canvas, no pyplot state; CAM
overlays; reliability bins), so training and analysis draw the same way.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cnnstress.analysis.compare import Analysis, Comparison
from cnnstress.analysis.gradcam import SideBySide
from cnnstress.analysis.stress import StressSummary
from cnnstress.data import class_names
from cnnstress.metrics import ECE_BINS, reliability_bins
from cnnstress.plots import new_figure, overlay, to_hwc
from cnnstress.stress import corruption_accuracies

CORRECTED, WORSENED, BOTH_WRONG = "tab:green", "tab:red", "tab:gray"
# Per-class panels with more classes than this show only the largest gains and losses.
PER_CLASS_ALL_UP_TO = 30
PER_CLASS_TOP_K = 15


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG and return the path."""
    path = Path(path)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _grid(n: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = new_figure(panel[0] * ncols, panel[1] * nrows, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _title(comparison: Comparison) -> str:
    return f"{comparison.other.key.label}\nvs {comparison.reference.key.name}"


def transitions_figure(analysis: Analysis) -> Figure | None:
    """Per comparison: corrected / worsened / both-wrong counts per seed and pooled."""
    shown = [c for c in analysis.comparisons if c.transitions]
    if not shown:
        return None
    fig, axes = _grid(len(shown), 3, (5.0, 3.8))
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
        labels = [f"seed {s}\nMcNemar p={t.mcnemar.pvalue:.2g}" for s, t in tables[:-1]]
        boot = comparison.bootstrap
        labels.append("all seeds" + ("" if boot is None else f"\nbootstrap p={boot.pvalue:.2g}"))
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("test images")
        ax.set_title(_title(comparison), fontsize=9)
        ax.margins(y=0.15)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(
        "Test images moved against the reference\n(per seed: McNemar p; all seeds: bootstrap "
        "over images and seeds)",
        fontsize=10,
    )
    return fig


def confidence_figure(analysis: Analysis) -> Figure:
    """Per group: histogram of top-1 confidence of correct and of wrong predictions (all seeds)."""
    fig, axes = _grid(len(analysis.groups), 4, (4.0, 3.0))
    bins = np.linspace(0, 1, 21)
    for ax, group in zip(axes, analysis.groups, strict=True):
        conf = np.concatenate([r.confidence for r in group.runs])
        correct = np.concatenate([r.correct for r in group.runs])
        ax.hist(conf[correct], bins=bins, color=CORRECTED, alpha=0.6, label="correct")
        ax.hist(conf[~correct], bins=bins, color=WORSENED, alpha=0.6, label="wrong")
        ax.set_title(f"{group.key.label} ({len(group.runs)} seed(s))", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_ylabel("predictions")
        ax.set_xlim(0, 1)
    axes[0].legend(fontsize=8)
    return fig


def high_conf_errors_figure(analysis: Analysis) -> Figure:
    """Per setting: mean high-confidence error count against threshold, per group (± std)."""
    settings = analysis.settings
    fig, axes = _grid(len(settings), 2, (5.5, 4.0))
    thresholds = np.array(analysis.thresholds)
    for ax, setting in zip(axes, settings, strict=True):
        for group in (g for g in analysis.groups if g.key.setting == setting):
            mean = group.high_conf.mean(0)
            std = group.high_conf.std(0, ddof=1) if len(group.runs) > 1 else None
            style = "-" if not analysis.is_reference(group.key) else "--"
            ax.errorbar(thresholds, mean, yerr=std, fmt=style + "o", capsize=3, markersize=4,
                        label=f"{group.key.name} (n={len(group.runs)})")  # fmt: skip
        ax.set_xlabel("confidence threshold")
        ax.set_ylabel("wrong predictions with confidence >= threshold")
        ax.set_title("/".join(setting), fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
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
    fig, axes = _grid(len(panels), 3, (4.8, height))
    for ax, (comparison, order, names, subtitle) in zip(axes, panels, strict=True):
        delta = comparison.per_class_delta[order] * 100
        colours = [CORRECTED if d >= 0 else WORSENED for d in delta]
        ax.barh(np.arange(len(order)), delta, color=colours)
        ax.set_yticks(np.arange(len(order)), [names[i] for i in order], fontsize=7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("accuracy change (percentage points, mean over seeds)")
        ax.set_title(f"{_title(comparison)}\n{subtitle}", fontsize=9)
    return fig


def reliability_overlay_figure(analysis: Analysis, n_bins: int = ECE_BINS) -> Figure:
    """Per setting: every group's reliability curve (all seeds pooled) over the diagonal."""
    settings = analysis.settings
    fig, axes = _grid(len(settings), 2, (5.0, 5.0))
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
        ax.legend(fontsize=8, loc="lower right")
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
                title = f"{column.title}\n{column.settings}\n{title}"
            axes[r, c].set_title(title, fontsize=8, color="tab:green" if ok else "tab:red")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(f"{'/'.join(side.setting)}: reference's most confident test failures", fontsize=10)
    return fig


def stress_corruptions_figure(stress: StressSummary) -> Figure | None:
    """Per setting: accuracy against corruption severity per group (mean over types, then
    mean ± std over seeds), with the clean accuracy of the same images at severity 0."""
    shown = [g for g in stress.groups if any(m.startswith("corruptions/") for m in g.values)]
    if not shown:
        return None
    settings = sorted({g.key.setting for g in shown})
    fig, axes = _grid(len(settings), 2, (5.5, 4.0))
    for ax, setting in zip(axes, settings, strict=True):
        for group in (g for g in shown if g.key.setting == setting):
            per_seed = {}  # seed -> {severity: mean accuracy over types}
            seeds = sorted({s for m, v in group.values.items() for s in v})
            for seed in seeds:
                numbers = {m: v[seed] for m, v in group.values.items() if seed in v}
                table = corruption_accuracies(numbers)
                by_severity: dict[int, list[float]] = {}
                for accs in table.values():
                    for severity, acc in accs.items():
                        by_severity.setdefault(severity, []).append(acc)
                row = {s: float(np.mean(a)) for s, a in by_severity.items()}
                if "corruptions/clean_acc" in numbers:
                    row[0] = numbers["corruptions/clean_acc"]
                per_seed[seed] = row
            severities = sorted({s for row in per_seed.values() for s in row})
            grid = np.array([[row.get(s, np.nan) for s in severities] for row in per_seed.values()])
            std = np.nanstd(grid, 0, ddof=1) if len(grid) > 1 else None
            style = "--" if group.key in stress.reference_keys else "-"
            ax.errorbar(severities, np.nanmean(grid, 0), yerr=std, fmt=style + "o", capsize=3,
                        markersize=4, label=f"{group.key.name} (n={len(grid)})")  # fmt: skip
            ax.set_xticks(severities, ["clean" if s == 0 else str(s) for s in severities])
        _label_accuracy_axes(
            ax, setting, "corruption severity", "top-1 accuracy (mean over corruption types)"
        )
    return fig


def _label_accuracy_axes(ax: Axes, setting: tuple[str, ...], xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title("/".join(setting), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def stress_adversarial_figure(stress: StressSummary) -> Figure | None:
    """Per setting: robust accuracy against eps per group and attack (mean ± std over seeds)."""
    pattern = re.compile(r"adversarial/([^/]+)/eps([^/]+)/acc")
    shown = [g for g in stress.groups if any(pattern.fullmatch(m) for m in g.values)]
    if not shown:
        return None
    settings = sorted({g.key.setting for g in shown})
    fig, axes = _grid(len(settings), 2, (5.5, 4.0))
    for ax, setting in zip(axes, settings, strict=True):
        for group in (g for g in shown if g.key.setting == setting):
            curves: dict[str, list[tuple[float, str]]] = {}
            for metric in group.values:
                if match := pattern.fullmatch(metric):
                    try:
                        eps = float(match.group(2))
                    except ValueError:
                        continue
                    curves.setdefault(match.group(1), []).append((eps, metric))
            for attack, points in sorted(curves.items()):
                points.sort()
                est = [group.estimate(m) for _, m in points]
                std = [e.std for e in est] if all(e.std is not None for e in est) else None
                ax.errorbar([p for p, _ in points], [e.mean for e in est], yerr=std,
                            fmt="o-", capsize=3, markersize=4,
                            label=f"{group.key.name} {attack}")  # fmt: skip
        _label_accuracy_axes(ax, setting, "eps (x 1/255, L-inf, pixel space)", "robust accuracy")
    return fig


def stress_faithfulness_figure(stress: StressSummary) -> Figure | None:
    """Per setting: the cascading-randomisation curve per group (mean ± std over seeds of the
    rank correlation with the trained CAMs after each cascade step)."""
    pattern = re.compile(r"faithfulness/cascade/(\d+)/([^/]+)/spearman")
    shown = [g for g in stress.groups if any(pattern.fullmatch(m) for m in g.values)]
    if not shown:
        return None
    settings = sorted({g.key.setting for g in shown})
    fig, axes = _grid(len(settings), 2, (6.0, 4.2))
    for ax, setting in zip(axes, settings, strict=True):
        blocks: list[str] = []
        for group in (g for g in shown if g.key.setting == setting):
            steps = sorted(
                (int(match.group(1)), match.group(2), metric)
                for metric in group.values
                if (match := pattern.fullmatch(metric))
            )
            est = [group.estimate(m) for _, _, m in steps]
            std = [0.0, *(e.std or 0.0 for e in est)] if len(group.seeds) > 1 else None
            style = "--" if group.key in stress.reference_keys else "-"
            ax.errorbar(range(len(steps) + 1), [1.0, *(e.mean for e in est)], yerr=std,
                        fmt=style + "o", capsize=3, markersize=4,
                        label=f"{group.key.name} (n={len(group.seeds)})")  # fmt: skip
            if len(steps) > len(blocks):
                blocks = [b for _, b, _ in steps]
        ax.set_xticks(range(len(blocks) + 1), ["trained", *blocks], rotation=45, ha="right",
                      fontsize=8)  # fmt: skip
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("blocks re-initialised, cumulatively from the output")
        ax.set_ylabel("Spearman correlation with trained CAMs")
        ax.set_title("/".join(setting), fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def background_figure(stress: StressSummary, analysis: Analysis) -> Figure | None:
    """Per setting: test accuracy next to the background-reliance numbers, one bar per group
    (mean ± std over seeds)."""
    metrics = [
        ("accuracy", None),
        ("only-centre acc", "background/only_centre/acc"),
        ("only-surround acc", "background/only_surround/acc"),
        ("surround share", "background/surround_share"),
        ("BG-gap", "background/bg_gap"),
        ("CAM outside centre", "background/cam/outside_correct"),
    ]
    shown = [g for g in stress.groups if "background/surround_share" in g.values]
    if not shown:
        return None
    accuracy = {g.key: g for g in analysis.groups}
    settings = sorted({g.key.setting for g in shown})
    fig, axes = _grid(len(settings), 1, (max(6.0, 1.4 * len(metrics) * 1.2), 4.0))
    for ax, setting in zip(axes, settings, strict=True):
        members = [g for g in shown if g.key.setting == setting]
        width = 0.8 / len(members)
        for i, group in enumerate(members):
            means, stds = [], []
            for _, metric in metrics:
                e = accuracy[group.key].accuracy if metric is None else group.estimate(metric)
                means.append(e.mean)
                stds.append(e.std or 0.0)
            x = np.arange(len(metrics)) + (i - (len(members) - 1) / 2) * width
            ax.bar(x, means, width, yerr=stds, capsize=2, label=group.key.name)
        ax.set_xticks(np.arange(len(metrics)), [name for name, _ in metrics], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction")
        ax.set_title(f"{'/'.join(setting)}: accuracy and background reliance (centre square "
                     "as the object's proxy)", fontsize=9)  # fmt: skip
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return fig
