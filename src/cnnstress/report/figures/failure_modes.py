"""The report's failure-mode figure: what each improvement fixes among the reference's stable
modes, next to what a re-run of the reference fixes, and the Grad-CAM agreement across seeds."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from cnnstress.analysis.failure_modes import FailureModeAnalysis
from cnnstress.core.plots.canvas import new_figure
from cnnstress.core.plots.layout import group_legend, wrap
from cnnstress.report.failure_modes import short_name

RESEED = "#999999"


def failure_mode_fixes_figure(
    result: FailureModeAnalysis, grouping: str = "errors", max_modes: int = 8
) -> Figure | None:
    """Left: per stable mode of the reference (the ``max_modes`` largest), the share of its
    images each improvement gets right (mean over seeds with its t-interval, one dot per seed)
    and the share a re-run of the reference gets right (grey). Right: per group, the median
    Spearman correlation of two seeds' CAMs of the same confident failure, per CAM method,
    with its interquartile range. None when the reference has no stable mode and no CAM
    agreement was measured."""
    reference = result.groups[result.reference]
    families = reference.matching[grouping].stable[:max_modes]
    classes = reference.matching[grouping].classes
    cams = [(g.name, a) for g in result.groups.values() for a in g.cam if a.per_pair]
    if not families and not cams:
        return None
    names = list(result.improvements)
    height = max(3.0, 0.55 * len(families) * (len(names) + 1) + 1.5)
    fig = new_figure(12, height, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(2.2, 1))
    rows = len(names) + 1
    colours = [f"C{k}" for k in range(len(names))]
    ticks, labels = [], []
    for f, family in enumerate(families):
        base = f * (rows + 0.6)
        ticks.append(base + rows / 2 - 0.5)
        labels.append(
            wrap(
                f"{short_name(family, classes)} ({len(family.seeds)}/{family.num_seeds} seeds)", 40
            )
        )
        for k, name in enumerate(names):
            fix = next(
                (x for x in result.improvements[name][grouping].fixes if x.family.id == family.id),
                None,
            )
            if fix is None or not fix.fixed:
                continue
            y = base + k
            e = fix.fixed_estimate
            err = None
            if e.ci_low is not None:
                err = [[100 * (e.mean - max(e.ci_low, 0))], [100 * (min(e.ci_high, 1) - e.mean)]]
            left.barh(y, 100 * e.mean, color=colours[k], alpha=0.7, label=name if f == 0 else None)
            if err is not None:
                left.errorbar(100 * e.mean, y, xerr=err, color="black", capsize=3)
            left.scatter(
                100 * np.array(list(fix.fixed.values())),
                [y] * len(fix.fixed),
                color="black",
                s=10,
                zorder=3,
            )
            if k == 0:
                reseed = np.array([v for v in fix.reseed.values() if np.isfinite(v)])
                if reseed.size:
                    left.barh(
                        base + len(names),
                        100 * reseed.mean(),
                        color=RESEED,
                        label="re-run of the reference" if f == 0 else None,
                    )
    if families:
        left.set_yticks(ticks, labels, fontsize=8)
        left.invert_yaxis()
        left.set_xlim(0, 100)
        left.set_xlabel("images of the reference's mode the model gets right (%)")
        left.set_title(
            wrap(f"{result.reference}: stable failure modes ({grouping})", 60), fontsize=10
        )
        group_legend(left, loc="lower right")
        left.grid(axis="x", alpha=0.3)
    else:
        left.set_axis_off()
        left.text(0.5, 0.5, "no stable failure mode", ha="center", va="center")
    if cams:
        y = np.arange(len(cams))
        med = np.array([a.median for _, a in cams])
        err = np.array([[a.median - a.q25 for _, a in cams], [a.q75 - a.median for _, a in cams]])
        right.errorbar(med, y, xerr=err, fmt="o", color="black", capsize=3)
        right.set_yticks(y, [wrap(f"{name}: {a.method}", 28) for name, a in cams], fontsize=8)
        right.invert_yaxis()
        right.set_xlim(-1, 1)
        for value in (0.4, 0.7):
            right.axvline(value, color=RESEED, linestyle=":")
        right.set_xlabel("Spearman, two seeds' CAMs of one image")
        right.set_title("Grad-CAM agreement across seeds", fontsize=10)
        right.grid(axis="x", alpha=0.3)
    else:
        right.set_axis_off()
    return fig
