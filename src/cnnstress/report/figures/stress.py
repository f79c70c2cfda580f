"""Stress-test figures: those a stress writes into its run directory (corruption heat-map,
cascading randomisation, background reliance per class) and the analysis' comparisons of groups
under each stress (:class:`~cnnstress.analysis.stress.StressSummary`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cnnstress.core.plots.canvas import new_figure, save_figure
from cnnstress.core.plots.layout import group_legend, label_panel, panel_grid

if TYPE_CHECKING:
    from cnnstress.analysis.compare import Analysis
    from cnnstress.analysis.stress import StressSummary


def plot_corruption_heatmap(
    table: Mapping[str, Mapping[int, float]],
    path: str | Path,
    clean_acc: float | None = None,
    title: str = "corruption accuracy",
) -> Path:
    """Heat-map of accuracy, corruption type (rows) x severity (columns), saved as PNG.

    ``table``: ``{type: {severity: acc}}``
    (:func:`cnnstress.stress.corruption_suite.corruption_accuracies`); a ``clean`` column comes
    first when ``clean_acc`` is given.
    """
    types = list(table)
    severities: Sequence[int] = sorted({s for t in table.values() for s in t})
    columns = (["clean"] if clean_acc is not None else []) + [str(s) for s in severities]
    grid = np.full((len(types), len(columns)), np.nan)
    for i, name in enumerate(types):
        if clean_acc is not None:
            grid[i, 0] = clean_acc
        for j, s in enumerate(severities):
            grid[i, j + len(columns) - len(severities)] = table[name].get(s, np.nan)
    fig = new_figure(1.0 + 0.75 * len(columns), 1.2 + 0.32 * len(types), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(types)), types)
    ax.set_xlabel("severity")
    ax.set_title(title, fontsize=9)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                colour = "black" if grid[i, j] > 0.6 else "white"
                ax.text(
                    j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour
                )
    fig.colorbar(image, ax=ax, label="top-1 accuracy")
    return save_figure(fig, path)


def plot_cascade(curve: Sequence[tuple[str, float]], path: Path, title: str) -> Path:
    """The cascade curve: mean rank correlation with the trained model's CAMs after each step."""
    fig = new_figure(max(4.0, 0.8 * len(curve) + 2), 3.6, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(len(curve) + 1), [1.0, *(v for _, v in curve)], "o-")
    ax.set_xticks(range(len(curve) + 1), ["trained", *(b for b, _ in curve)], rotation=45,
                  ha="right", fontsize=8)  # fmt: skip
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman correlation with trained CAMs")
    ax.set_xlabel("blocks re-initialised, cumulatively from the output")
    ax.set_title(f"Cascading randomisation ({title})", fontsize=9)
    return save_figure(fig, path)


def plot_classes(
    names: Sequence[str],
    per_class: Mapping[str, np.ndarray],
    overall: Mapping[str, Any],
    path: str | Path,
) -> Path:
    """Three bar panels over the classes (rows): ``only_surround`` accuracy (chance marked),
    surround share and CAM outside-share (the area share of the surround marked); the overall
    value of each is a dashed line."""
    c = len(names)
    small = c > 20
    fig = new_figure(11, 1.4 + (0.14 if small else 0.3) * c, layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    panels = (
        ("only_surround", "only-surround accuracy", "background/only_surround/acc",
         ("chance", overall["background/chance"])),
        ("surround_share", "surround share (cue conflict,\nby the surround's class)",
         "background/surround_share", ("even", 0.5)),
        ("cam_outside", "CAM mass outside the centre", "background/cam/outside_all",
         ("flat map", overall["background/cam/outside_uniform"])),
    )  # fmt: skip
    y = np.arange(c)
    for ax, (metric, label, key, (ref_label, ref)) in zip(axes, panels, strict=True):
        values = np.asarray(per_class[metric], dtype=float)
        ax.barh(y, np.nan_to_num(values), color="tab:blue", height=0.7)
        ax.axvline(ref, color="tab:red", linewidth=1, label=ref_label)
        mean = overall.get(key)
        if mean is not None and np.isfinite(mean):
            ax.axvline(mean, color="black", linestyle="--", linewidth=1, label="all images")
        ax.set_xlim(0, 1)
        ax.set_xlabel(label)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=7, frameon=False)
    axes[0].set_yticks(y, list(names), fontsize=5 if small else 8)
    axes[0].set_ylim(c - 0.5, -0.5)  # official class order from the top
    fig.suptitle(
        f"background reliance per class (centre {overall['background/centre_size']}px; "
        f"{overall['background/num_images']} images, CAM {overall['background/cam/num_images']})",
        fontsize=9,
    )
    return save_figure(fig, path)


def stress_corruptions_figure(stress: StressSummary) -> Figure | None:
    """Per setting: accuracy against corruption severity per group (mean over types, then
    mean ± std over seeds), with the clean accuracy of the same images at severity 0."""
    # here, not at the top: cnnstress.stress imports this module for its own figures
    from cnnstress.stress.corruption_suite import corruption_accuracies

    if (panels := _setting_panels(stress, re.compile("corruptions/.*"), (5.5, 4.0))) is None:
        return None
    fig, axes = panels
    for ax, setting, groups in axes:
        for group in groups:
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
        label_panel(
            ax,
            setting,
            "corruption severity",
            "top-1 accuracy (mean over corruption types)",
            ylim=(0, 1),
        )
    return fig


def _setting_panels(
    stress: StressSummary, pattern: re.Pattern[str], panel: tuple[float, float]
) -> tuple[Figure, list[tuple[Axes, tuple[str, ...], list[Any]]]] | None:
    """One panel per setting (2 per row) for the groups with a metric matching ``pattern``:
    the figure and ``(axes, setting, groups)`` per panel; None when no group has one."""
    shown = [g for g in stress.groups if any(pattern.fullmatch(m) for m in g.values)]
    if not shown:
        return None
    settings = sorted({g.key.setting for g in shown})
    fig, axes = panel_grid(len(settings), 2, panel)
    members = [[g for g in shown if g.key.setting == setting] for setting in settings]
    return fig, list(zip(axes, settings, members, strict=True))


def stress_adversarial_figure(stress: StressSummary) -> Figure | None:
    """Per setting: robust accuracy against eps per group and attack (mean ± std over seeds)."""
    pattern = re.compile(r"adversarial/([^/]+)/eps([^/]+)/acc")
    if (panels := _setting_panels(stress, pattern, (5.5, 4.0))) is None:
        return None
    fig, axes = panels
    for ax, setting, groups in axes:
        for group in groups:
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
        label_panel(
            ax, setting, "eps (x 1/255, L-inf, pixel space)", "robust accuracy", ylim=(0, 1)
        )
    return fig


def stress_faithfulness_figure(stress: StressSummary) -> Figure | None:
    """Per setting: the cascading-randomisation curve per group (mean ± std over seeds of the
    rank correlation with the trained CAMs after each cascade step)."""
    pattern = re.compile(r"faithfulness/cascade/(\d+)/([^/]+)/spearman")
    if (panels := _setting_panels(stress, pattern, (6.0, 4.2))) is None:
        return None
    fig, axes = panels
    for ax, setting, groups in axes:
        blocks: list[str] = []
        for group in groups:
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
        label_panel(ax, setting, "blocks re-initialised, cumulatively from the output",
                    "Spearman correlation with trained CAMs", ylim=(-1.05, 1.05))  # fmt: skip
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
    fig, axes = panel_grid(len(settings), 1, (max(6.0, 1.4 * len(metrics) * 1.2), 4.0))
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
        group_legend(ax)
        ax.grid(axis="y", alpha=0.3)
    return fig
