"""The figures a stress leaves in its run directory, drawn from its
:class:`~cnnstress.stress.results.StressResult` (measurements, info and arrays): corruption
heat-map, reliability before/after temperature scaling, cascading randomisation, background
reliance per class and the background examples grid.

:data:`RUN_FIGURES` maps each stress to its figures (file name, draw function); a draw function
takes the result and the run's name (for the title) and returns a matplotlib
:class:`~matplotlib.figure.Figure`, or an RGB array ``(H, W, 3)`` uint8 for an image grid.
Saving them is the app's (:func:`cnnstress.app.stress.stress_run`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure

from cnnstress.core.plots.canvas import new_figure
from cnnstress.core.plots.diagrams import draw_reliability
from cnnstress.core.plots.images import image_grid
from cnnstress.stress.corruption_suite import accuracy_table
from cnnstress.stress.results import StressResult

CORRUPTIONS_FILE = "stress_corruptions.png"
CALIBRATION_FILE = "stress_calibration.png"
FAITHFULNESS_FILE = "stress_faithfulness.png"
BACKGROUND_EXAMPLES_FILE = "stress_background_examples.png"
BACKGROUND_CLASSES_FILE = "stress_background_classes.png"

Drawing = Figure | np.ndarray


def value(result: StressResult, metric: str, **where: Any) -> float | None:
    """The value of the measurement ``metric`` at exactly ``where`` (``None`` when it has none
    or it is undefined)."""
    wanted = tuple(sorted(where.items()))
    for m in result.measurements:
        if m.metric == metric and m.where == wanted:
            return m.value
    return None


def _nan(x: float | None) -> float:
    return float("nan") if x is None else x


def corruption_heatmap(result: StressResult, run_name: str) -> Figure:
    """Heat-map of accuracy, corruption type (rows) x severity (columns), after a ``clean``
    column (``clean_acc``); from the ``acc`` rows at ``corruption``/``severity``."""
    table = accuracy_table(result.measurements)
    clean_acc = value(result, "clean_acc")
    title = f"{run_name}: corruption accuracy ({result.info.get('source')})"
    types = list(table)
    severities: Sequence[int] = sorted({s for t in table.values() for s in t})
    columns = ["clean"] + [str(s) for s in severities]
    grid = np.full((len(types), len(columns)), np.nan)
    for i, name in enumerate(types):
        grid[i, 0] = _nan(clean_acc)
        for j, s in enumerate(severities):
            grid[i, j + 1] = table[name].get(s, np.nan)
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
    return fig


def reliability_before_after(result: StressResult, run_name: str = "") -> Figure:
    """Two reliability diagrams side by side: before and after temperature scaling (arrays
    ``bins_before``, ``bins_after`` of :func:`cnnstress.stress.calibration.logit_bins`)."""
    temperature = _nan(value(result, "temperature"))
    split = result.info.get("fit_split")
    titles = (
        f"before: ECE {_nan(value(result, 'ece_before')):.3f}",
        f"after T={temperature:.2f} (fit on {split}): ECE {_nan(value(result, 'ece_after')):.3f}",
    )
    fig = new_figure(8, 4, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    bins = (result.arrays["bins_before"], result.arrays["bins_after"])
    for ax, b, title in zip(axes, bins, titles, strict=True):
        draw_reliability(ax, b, title)
        ax.set_xlabel("confidence")
    axes[1].set_ylabel("")
    axes[0].legend(loc="upper left", fontsize=8)
    return fig


def cascade_curve(result: StressResult, run_name: str) -> Figure:
    """The cascade curve: mean rank correlation with the trained model's CAMs after each step
    (``spearman`` at ``step``/``block``; an undefined mean is a gap)."""
    steps = sorted(
        (int(m.at("step")), str(m.at("block")), _nan(m.value))
        for m in result.measurements
        if m.metric == "spearman" and m.at("step") is not None
    )
    title = f"{run_name}: {result.info.get('method')} at {result.info.get('target_layer')}"
    fig = new_figure(max(4.0, 0.8 * len(steps) + 2), 3.6, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(len(steps) + 1), [1.0, *(v for _, _, v in steps)], "o-")
    ax.set_xticks(range(len(steps) + 1), ["trained", *(b for _, b, _ in steps)], rotation=45,
                  ha="right", fontsize=8)  # fmt: skip
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman correlation with trained CAMs")
    ax.set_xlabel("blocks re-initialised, cumulatively from the output")
    ax.set_title(f"Cascading randomisation ({title})", fontsize=9)
    return fig


def background_classes(result: StressResult, run_name: str = "") -> Figure:
    """Three bar panels over the classes (rows): only-surround accuracy (chance marked),
    surround share and CAM outside-share (a flat map's share marked); the value over all
    images of each is a dashed line."""
    names: Sequence[str] = result.arrays["class_names"]
    c = len(names)
    small = c > 20
    fig = new_figure(11, 1.4 + (0.14 if small else 0.3) * c, layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    panels = (
        ("only_surround_acc", "only-surround accuracy",
         value(result, "acc", image="only_surround"), ("chance", value(result, "chance"))),
        ("surround_share", "surround share (cue conflict,\nby the surround's class)",
         value(result, "surround_share"), ("even", 0.5)),
        ("cam_outside", "CAM mass outside the centre", value(result, "cam_outside", images="all"),
         ("flat map", value(result, "cam_outside", images="uniform"))),
    )  # fmt: skip
    y = np.arange(c)
    for ax, (metric, label, overall, (ref_label, ref)) in zip(axes, panels, strict=True):
        values = np.array([_nan(value(result, metric, **{"class": n})) for n in names])
        ax.barh(y, np.nan_to_num(values), color="tab:blue", height=0.7)
        if ref is not None:
            ax.axvline(ref, color="tab:red", linewidth=1, label=ref_label)
        if overall is not None:
            ax.axvline(overall, color="black", linestyle="--", linewidth=1, label="all images")
        ax.set_xlim(0, 1)
        ax.set_xlabel(label)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=7, frameon=False)
    axes[0].set_yticks(y, list(names), fontsize=5 if small else 8)
    axes[0].set_ylim(c - 0.5, -0.5)  # official class order from the top
    info = result.info
    fig.suptitle(
        f"background reliance per class (centre {info.get('centre_size')}px; "
        f"{info.get('num_images')} images, CAM {info.get('cam_num_images')})",
        fontsize=9,
    )
    return fig


# The columns of the examples grid: the original, then the stress's variants in its order.
EXAMPLE_COLUMNS = ("original", "only_centre", "only_surround", "conflict", "mixed_same",
                   "mixed_rand")  # fmt: skip


def background_examples(result: StressResult, run_name: str) -> np.ndarray:
    """One row per example image, one column per test (original, only centre, only surround,
    cue conflict, mixed-same, mixed-rand), each captioned with the classes involved and the
    model's prediction (arrays of :func:`cnnstress.stress.background.example_arrays`)."""
    arrays: Mapping[str, Any] = result.arrays
    names = arrays["class_names"]
    examples = np.asarray(arrays["examples"])  # (E, columns, H, W, 3)
    labels, partners, preds = (
        arrays["example_labels"], arrays["example_partner_labels"], arrays["example_predictions"]
    )  # fmt: skip
    captions = []
    for i in range(examples.shape[0]):
        a = names[labels[i]]
        arrow = {name: f"-> {names[preds[name][i]]}" for name in preds}
        captions += [
            f"original: {a}\n-> {names[arrays['example_predicted'][i]]}",
            f"only centre\n{arrow['only_centre']}",
            f"only surround\n{arrow['only_surround']}",
            f"{a} on {names[partners['conflict'][i]]}\n{arrow['conflict']}",
            f"same: on {names[partners['mixed_same'][i]]}\n{arrow['mixed_same']}",
            f"rand: on {names[partners['mixed_rand'][i]]}\n{arrow['mixed_rand']}",
        ]
    title = (
        f"{run_name}: centre {result.info.get('centre_size')}px (object proxy), fill "
        f"{result.info.get('fill')}; 'X on Y' = centre of X on the surround of Y; -> prediction"
    )
    tiles = examples.reshape(-1, *examples.shape[2:])
    return image_grid(tiles, captions, ncols=examples.shape[1], title=title, scale=4,
                      caption_lines=2)  # fmt: skip


class RunFigure(NamedTuple):
    """One per-run figure: its file name in the run directory and how it is drawn."""

    file: str
    draw: Callable[[StressResult, str], Drawing]


#: ``{stress name: its per-run figures}`` (stresses without one are absent).
RUN_FIGURES: dict[str, tuple[RunFigure, ...]] = {
    "corruptions": (RunFigure(CORRUPTIONS_FILE, corruption_heatmap),),
    "calibration": (RunFigure(CALIBRATION_FILE, reliability_before_after),),
    "faithfulness": (RunFigure(FAITHFULNESS_FILE, cascade_curve),),
    "background": (
        RunFigure(BACKGROUND_EXAMPLES_FILE, background_examples),
        RunFigure(BACKGROUND_CLASSES_FILE, background_classes),
    ),
}
