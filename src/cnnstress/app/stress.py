"""Stress a run and leave its per-run figures next to its ``stress.json``.

The stresses compute (:func:`cnnstress.stress.evaluate_run`), the report draws
(:data:`cnnstress.report.figures.stress_run.RUN_FIGURES`); this module joins them for the entry
points: ``train.py stress=[...]`` at the end of training and ``analyze.py stress=[...]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cnnstress.core.plots.canvas import save_figure, save_png
from cnnstress.report.figures.stress_run import RUN_FIGURES
from cnnstress.stress import StoredStress, StressResult, evaluate_run


def save_run_figures(run_dir: str | Path, name: str, result: StressResult) -> list[Path]:
    """Draw the per-run figures of stress ``name`` from ``result`` and save them as PNG in
    ``run_dir`` (:data:`RUN_FIGURES`; none for a stress without one). Returns their paths."""
    run_dir = Path(run_dir)
    paths = []
    for figure in RUN_FIGURES.get(name, ()):
        drawing = figure.draw(result, run_dir.name)
        path = run_dir / figure.file
        if isinstance(drawing, np.ndarray):
            paths.append(save_png(drawing, path))
        else:
            paths.append(save_figure(drawing, path))
    return paths


def stress_run(
    run_dir: str | Path, settings: Mapping[str, Any], device: str = "cpu", **options: Any
) -> dict[str, StoredStress]:
    """Evaluate the stresses of ``settings`` on a run (:func:`cnnstress.stress.evaluate_run`,
    ``options`` as its keywords: ``computed_by``, ``net``, ``cfg``, ``data_root``; the entries
    land in its ``stress.json``), save their per-run figures (``stress_corruptions.png``,
    ``stress_calibration.png``, ``stress_faithfulness.png``, ``stress_background_examples.png``,
    ``stress_background_classes.png``) in the run directory, and return the stored entries."""
    evaluated = evaluate_run(run_dir, settings, device, **options)
    for name, (_, result) in evaluated.items():
        save_run_figures(run_dir, name, result)
    return {name: stored for name, (stored, _) in evaluated.items()}
