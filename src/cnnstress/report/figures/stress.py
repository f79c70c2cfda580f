"""The analysis' figures of groups under each stress, drawn from the seed table's stress
metrics (:class:`~cnnstress.analysis.stress.StressSummary`): accuracy against corruption
severity, robust accuracy against eps, the cascading-randomisation curve, background
reliance."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cnnstress.analysis.compare import Analysis
from cnnstress.analysis.runs import GroupKey
from cnnstress.analysis.seed_table import ACCURACY, Metric
from cnnstress.analysis.stress import StressSummary
from cnnstress.core.plots.layout import group_legend, label_panel, panel_grid


def _panels(
    analysis: Analysis, stress: StressSummary, shown: Callable[[Metric], bool], panel: tuple
) -> tuple[Figure, list[tuple[Axes, tuple[str, str], list[GroupKey]]]] | None:
    """One panel per dataset and model (2 per row) for the groups with a metric that is
    ``shown``: the figure and ``(axes, (dataset, model), groups)`` per panel; None when no
    group has one."""
    metrics = [m for m in stress.metrics if shown(m)]
    keys = [g.key for g in analysis.groups
            if any(analysis.table.has(g.key, m) for m in metrics)]  # fmt: skip
    if not keys:
        return None
    pairs = sorted({k.dataset_model for k in keys})
    fig, axes = panel_grid(len(pairs), 2, panel)
    members = [[k for k in keys if k.dataset_model == pair] for pair in pairs]
    return fig, list(zip(axes, pairs, members, strict=True))


def _n(analysis: Analysis, key: GroupKey, metrics: Sequence[Metric]) -> int:
    return len({s for m in metrics for s in analysis.table.by_seed(key, m)})


def stress_corruptions_figure(analysis: Analysis, stress: StressSummary) -> Figure | None:
    """Per dataset and model: accuracy against corruption severity per group (mean over types,
    then mean ± std over seeds), with the clean accuracy of the same images at severity 0."""

    def by_severity(m: Metric) -> bool:
        return m.source == "corruptions" and m.name == "acc" and m.at("severity") is not None

    clean = Metric("corruptions", "clean_acc")
    if (panels := _panels(analysis, stress, by_severity, (5.5, 4.0))) is None:
        return None
    fig, axes = panels
    table = analysis.table
    for ax, pair, keys in axes:
        for key in keys:
            rows = [m for m in table.metrics(key, "corruptions") if by_severity(m)]
            seeds = sorted({s for m in rows for s in table.by_seed(key, m)})
            severities = sorted({int(m.at("severity")) for m in rows})
            grid = np.array([[np.mean([table.by_seed(key, m)[seed] for m in rows
                                       if m.at("severity") == s and seed in table.by_seed(key, m)])
                              for s in severities] for seed in seeds])  # fmt: skip
            if table.has(key, clean):
                severities = [0, *severities]
                grid = np.column_stack([[table.by_seed(key, clean).get(s, np.nan) for s in seeds],
                                        grid])  # fmt: skip
            std = np.nanstd(grid, 0, ddof=1) if len(grid) > 1 else None
            style = "--" if key in stress.reference_keys else "-"
            ax.errorbar(severities, np.nanmean(grid, 0), yerr=std, fmt=style + "o", capsize=3,
                        markersize=4, label=f"{key.name} (n={len(grid)})")  # fmt: skip
            ax.set_xticks(severities, ["clean" if s == 0 else str(s) for s in severities])
        label_panel(ax, pair, "corruption severity", "top-1 accuracy (mean over corruption types)",
                    ylim=(0, 1))  # fmt: skip
    return fig


def stress_adversarial_figure(analysis: Analysis, stress: StressSummary) -> Figure | None:
    """Per dataset and model: robust accuracy against eps per group and attack (mean ± std over
    seeds)."""

    def attacked(m: Metric) -> bool:
        return m.source == "adversarial" and m.name == "acc" and m.at("eps") is not None

    if (panels := _panels(analysis, stress, attacked, (5.5, 4.0))) is None:
        return None
    fig, axes = panels
    for ax, pair, keys in axes:
        for key in keys:
            rows = [m for m in analysis.table.metrics(key, "adversarial") if attacked(m)]
            for attack in sorted({m.at("attack") for m in rows}):
                points = sorted((m.at("eps") * 255, m) for m in rows if m.at("attack") == attack)
                est = [analysis.table.estimate(key, m) for _, m in points]
                std = [e.std for e in est] if all(e.std is not None for e in est) else None
                ax.errorbar([eps for eps, _ in points], [e.mean for e in est], yerr=std,
                            fmt="o-", capsize=3, markersize=4,
                            label=f"{key.name} {attack}")  # fmt: skip
        label_panel(ax, pair, "eps (x 1/255, L-inf, pixel space)", "robust accuracy", ylim=(0, 1))
    return fig


def stress_faithfulness_figure(analysis: Analysis, stress: StressSummary) -> Figure | None:
    """Per dataset and model: the cascading-randomisation curve per group (mean ± std over seeds
    of the rank correlation with the trained CAMs after each cascade step)."""

    def cascade(m: Metric) -> bool:
        return m.source == "faithfulness" and m.name == "spearman" and m.at("step") is not None

    if (panels := _panels(analysis, stress, cascade, (6.0, 4.2))) is None:
        return None
    fig, axes = panels
    for ax, pair, keys in axes:
        blocks: list[str] = []
        for key in keys:
            steps = sorted(((m.at("step"), m) for m in analysis.table.metrics(key, "faithfulness")
                            if cascade(m)), key=lambda step: step[0])  # fmt: skip
            est = [analysis.table.estimate(key, m) for _, m in steps]
            n = _n(analysis, key, [m for _, m in steps])
            std = [0.0, *(e.std or 0.0 for e in est)] if n > 1 else None
            style = "--" if key in stress.reference_keys else "-"
            ax.errorbar(range(len(steps) + 1), [1.0, *(e.mean for e in est)], yerr=std,
                        fmt=style + "o", capsize=3, markersize=4,
                        label=f"{key.name} (n={n})")  # fmt: skip
            if len(steps) > len(blocks):
                blocks = [str(m.at("block")) for _, m in steps]
        ax.set_xticks(range(len(blocks) + 1), ["trained", *blocks], rotation=45, ha="right",
                      fontsize=8)  # fmt: skip
        ax.axhline(0, color="gray", linewidth=0.8)
        label_panel(ax, pair, "blocks re-initialised, cumulatively from the output",
                    "Spearman correlation with trained CAMs", ylim=(-1.05, 1.05))  # fmt: skip
    return fig


#: The bars of the background figure: (label, metric); accuracy is the test accuracy.
BACKGROUND_BARS = (
    ("accuracy", ACCURACY),
    ("only-centre acc", Metric("background", "acc", (("image", "only_centre"),))),
    ("only-surround acc", Metric("background", "acc", (("image", "only_surround"),))),
    ("surround share", Metric("background", "surround_share")),
    ("BG-gap", Metric("background", "bg_gap")),
    ("CAM outside centre", Metric("background", "cam_outside", (("images", "correct"),))),
)


def background_figure(analysis: Analysis, stress: StressSummary) -> Figure | None:
    """Per dataset and model: test accuracy next to the background-reliance numbers, one bar per
    group (mean ± std over seeds)."""
    share = Metric("background", "surround_share")
    shown = [g.key for g in analysis.groups if analysis.table.has(g.key, share)]
    if not shown:
        return None
    pairs = sorted({k.dataset_model for k in shown})
    fig, axes = panel_grid(len(pairs), 1, (max(6.0, 1.4 * len(BACKGROUND_BARS) * 1.2), 4.0))
    for ax, pair in zip(axes, pairs, strict=True):
        members = [k for k in shown if k.dataset_model == pair]
        width = 0.8 / len(members)
        for i, key in enumerate(members):
            est = [analysis.table.estimate(key, m) for _, m in BACKGROUND_BARS]
            x = np.arange(len(BACKGROUND_BARS)) + (i - (len(members) - 1) / 2) * width
            ax.bar(x, [e.mean for e in est], width, yerr=[e.std or 0.0 for e in est], capsize=2,
                   label=key.name)  # fmt: skip
        ax.set_xticks(np.arange(len(BACKGROUND_BARS)), [name for name, _ in BACKGROUND_BARS],
                      fontsize=8)  # fmt: skip
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction")
        ax.set_title(f"{'/'.join(pair)}: accuracy and background reliance (centre square "
                     "as the object's proxy)", fontsize=9)  # fmt: skip
        group_legend(ax)
        ax.grid(axis="y", alpha=0.3)
    return fig
