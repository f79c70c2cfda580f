"""``analyze.py``'s one function: read runs, compare, draw, write the report."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig

from cnnstress.analysis.compare import Analysis, compare_groups
from cnnstress.analysis.failure_modes import (
    MATCH_THRESHOLD,
    FailureModeAnalysis,
    analyse_failure_modes,
)
from cnnstress.analysis.gradcam import default_filename, side_by_side
from cnnstress.analysis.runs import Run, collect_runs, latest_multirun
from cnnstress.analysis.stress import Stored, StressSummary, read_stress, summarise_stress
from cnnstress.app.stress import stress_run
from cnnstress.core.cam import METHODS
from cnnstress.core.config import build, check_group_sections
from cnnstress.core.console import Progress, quiet_library_noise
from cnnstress.core.errors import UserError
from cnnstress.core.overrides import check_report_free
from cnnstress.core.plots.canvas import save_figure
from cnnstress.core.rules import Integer, ListOf, Number, OneOf, Probability, Rule, Text
from cnnstress.report.figures import calibration as calibration_plots
from cnnstress.report.figures import comparison as comparison_plots
from cnnstress.report.figures import failure_modes as failure_mode_plots
from cnnstress.report.figures import stress as stress_plots
from cnnstress.report.view import build_view
from cnnstress.report.write import write_report
from cnnstress.stress.results import settings_record

log = logging.getLogger(__name__)


class Device(Rule):
    """A torch device that exists here (``cpu``, ``cuda``, ``cuda:1``)."""

    def convert(self, value: Any) -> str:
        try:
            device = torch.device(str(value))
        except RuntimeError:  # "Expected one of cpu, cuda, ... device type"
            raise ValueError from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError
        return str(value)

    def describe(self) -> str:
        return "a torch device available here (cpu" + (
            ", cuda)" if torch.cuda.is_available() else ")"
        )


@dataclass
class GradCAMFigure:
    """``gradcam.*`` of conf/analyze.yaml: the side-by-side CAMs of the reference's failures."""

    top_n: Annotated[int, Integer(0)] = 8
    method: Annotated[str | None, OneOf(METHODS, optional=True, casefold=True)] = None
    target_layer: Annotated[str | None, Text(optional=True)] = None


@dataclass
class FailureModesAnalysis:
    """``failure_modes.*`` of conf/analyze.yaml: the runs' failure modes matched across seeds
    and improvements (:mod:`cnnstress.analysis.failure_modes`)."""

    # Off: no failure-modes section.
    enabled: bool = True
    # Two modes of two seeds match when the Jaccard index of their images is at least this.
    match_threshold: Annotated[float, Number(0.0, 1.0, low_open=True)] = MATCH_THRESHOLD
    # Grad-CAM agreement across seeds on the reference's cam_top_n most confident failures
    # (loads every checkpoint; 0 = not measured).
    cam_top_n: Annotated[int, Integer(0)] = 16
    # Runs without failure_modes.json (trained before the callback, or with it off): compute
    # their modes from the checkpoint (about one analysis' time per run) instead of leaving
    # them out.
    compute_missing: bool = False


@dataclass
class AnalyzeConfig:
    """The root of conf/analyze.yaml: what to analyse and how (``stress.*`` are the stresses'
    own settings)."""

    # Run directories (each with run.json once finished) and/or a folder searched for them.
    runs: Annotated[list[str], ListOf(Text())] = field(default_factory=list)
    sweep: Annotated[str | None, Text(optional=True)] = None
    # With neither: the latest-th most recent sweep under outputs/multiruns that holds runs.
    latest: Annotated[int, Integer(1)] = 1
    # The group every other group of its dataset/model is compared with: a group name (an
    # improvement such as baseline, or e.g. '"augmentation=[]"'), a group label
    # dataset/model/name, or, among same-named groups, the name with some of its [key=value]
    # items, e.g. "reference='baseline [trainer.precision=32-true]'".
    reference: Annotated[str, Text()] = "baseline"
    # Confidence thresholds of the high-confidence error curves (each run's own
    # confidence_threshold is always added).
    thresholds: Annotated[list[float], ListOf(Probability(), 1)] = field(
        default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    )
    gradcam: GradCAMFigure = field(default_factory=GradCAMFigure)
    failure_modes: FailureModesAnalysis = field(default_factory=FailureModesAnalysis)
    # Device that runs the checkpoints (Grad-CAM, stresses).
    device: Annotated[str, Device()] = "cpu"
    # Stresses on every run's checkpoint (stress=[corruptions,...]): numbers a run already has
    # for the same settings are reused unless this is true.
    recompute_stress: bool = False
    paths: Any = None
    stress: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def validate_root(cfg: DictConfig) -> None:
        """Known stresses only."""
        check_group_sections(cfg, "stress")


def _save(figures: Mapping[str, Figure | None], out: Path) -> dict[str, list[str]]:
    """Save each drawn figure as ``<section>.png``; section -> file names."""
    saved = {}
    for name, fig in figures.items():
        if fig is not None:
            save_figure(fig, out / f"{name}.png")
            saved[name] = [f"{name}.png"]
    return saved


def _draw(analysis: Analysis, stress: StressSummary | None, out: Path) -> dict[str, list[str]]:
    figures = {
        "transitions": comparison_plots.transitions_figure(analysis),
        "confidence": comparison_plots.confidence_figure(analysis),
        "high_conf_errors": comparison_plots.high_conf_errors_figure(analysis),
        "per_class_delta": comparison_plots.per_class_delta_figure(analysis),
        "reliability": calibration_plots.reliability_overlay_figure(analysis),
    }
    if stress is not None:
        figures |= {
            "background": stress_plots.background_figure(analysis, stress),
            "stress_corruptions": stress_plots.stress_corruptions_figure(analysis, stress),
            "stress_adversarial": stress_plots.stress_adversarial_figure(analysis, stress),
            "stress_faithfulness": stress_plots.stress_faithfulness_figure(analysis, stress),
        }
    return _save(figures, out)


def _gradcam(settings: AnalyzeConfig, analysis: Analysis, out: Path) -> tuple[list[str], list[str]]:
    """Draw the side-by-side CAM figures; return (file names, notes for the report)."""
    top_n = settings.gradcam.top_n
    if top_n == 0:
        return [], ["Grad-CAM figure switched off (gradcam.top_n=0)."]
    references = sorted({c.reference.key for c in analysis.comparisons})
    if not references:
        return [], ["No comparison, so no Grad-CAM figure."]
    files, notes = [], []
    for n, reference in enumerate(references):
        comparisons = [c for c in analysis.comparisons if c.reference.key == reference]
        try:
            side = side_by_side(
                comparisons,
                top_n,
                device=settings.device,
                method=settings.gradcam.method,
                target_layer=settings.gradcam.target_layer,
            )
        except UserError as err:  # a moved dataset or an unreadable checkpoint: say so, go on
            notes.append(f"{reference.label}: no Grad-CAM figure: {err}")
            log.warning("no Grad-CAM figure for %s: %s", reference.label, err)
            continue
        if side is None:
            notes.append(f"{reference.label}: the reference has no test failure to show.")
            continue
        notes += side.notes
        name = default_filename(n if len(references) > 1 else None)
        save_figure(comparison_plots.gradcam_figure(side), out / name)
        files.append(name)
        column = side.columns[0]
        notes.append(
            f"{reference.label}: {len(side.index)} most confident failures of "
            f"{column.title}; CAM {column.settings} (as in training "
            "unless gradcam.method / gradcam.target_layer are set)."
        )
    return files, notes


def _failure_modes(
    settings: AnalyzeConfig, analysis: Analysis, out: Path
) -> tuple[list[tuple[str, FailureModeAnalysis]], list[str], list[str]]:
    """Match every setting's failure modes across seeds and improvements and draw what each
    improvement fixes; return ``([(setting label, analysis)], figure names, notes)``."""
    knobs = settings.failure_modes
    if not knobs.enabled:
        return [], [], ["Failure modes switched off (failure_modes.enabled=false)."]
    results, files, notes = [], [], []
    for dataset, model in analysis.dataset_models:
        label = f"{dataset}/{model}"
        groups = [g for g in analysis.groups if g.key.dataset_model == (dataset, model)]
        reference = next((g for g in groups if analysis.is_reference(g.key)), None)
        if reference is None:
            notes.append(f"{label}: no reference group, so no failure modes.")
            continue
        by_name = {g.key.name: {r.seed: r for r in g.runs} for g in groups}
        if len(by_name) < len(groups):
            notes.append(f"{label}: groups share a name; failure modes of the reference only.")
            by_name = {reference.key.name: by_name[reference.key.name]}
        try:
            result = analyse_failure_modes(
                by_name,
                reference.key.name,
                threshold=knobs.match_threshold,
                cam_top_n=knobs.cam_top_n,
                compute_missing=knobs.compute_missing,
                device=settings.device,
            )
        except UserError as err:  # e.g. predictions whose images a mode names are missing
            notes.append(f"{label}: no failure modes: {err}")
            log.warning("no failure modes for %s: %s", label, err)
            continue
        results.append((label, result))
        suffix = f"_{len(results) - 1}" if len(analysis.dataset_models) > 1 else ""
        for grouping in ("confident", "errors"):
            fig = failure_mode_plots.failure_mode_fixes_figure(result, grouping)
            if fig is not None:
                save_figure(fig, out / f"failure_modes_{grouping}{suffix}.png")
                files.append(f"failure_modes_{grouping}{suffix}.png")
    return results, files, notes


def stress_numbers(settings: AnalyzeConfig, runs: Sequence[Run]) -> tuple[Stored, list[str]]:
    """Every run's stored stress numbers, after computing those ``stress=[...]`` asks for that a
    run lacks, or has with other settings (every one with ``recompute_stress=true``); returns
    (run -> stress -> entry, notes). A run that cannot be stressed (no readable checkpoint,
    moved dataset, a stress that does not apply to it) is noted; the other runs go on."""
    stored, notes = read_stress(runs)
    if not settings.stress:
        return stored, notes
    asked = {name: settings_record(s) for name, s in settings.stress.items()}
    todo = {
        run.path: [n for n, record in asked.items() if settings.recompute_stress
                   or n not in stored[run.path] or stored[run.path][n].settings != record]
        for run in runs
    }  # fmt: skip
    todo = {path: names for path, names in todo.items() if names}
    by_path = {run.path: run for run in runs}
    computed = sum(len(names) for names in todo.values())
    log.info(
        "stress: %d results reused, %d to compute", len(runs) * len(asked) - computed, computed
    )
    progress = Progress(f"stress {'+'.join(asked)}: run", len(todo), log)
    for path, names in todo.items():
        try:
            chosen = {n: settings.stress[n] for n in names}
            stored[path] |= stress_run(path, chosen, settings.device, computed_by="analyze.py")
        except UserError as err:
            notes.append(f"{path}: no stress results: {err}")
            log.warning("no stress results for %s: %s", path, err)
        run = by_path[path]
        progress.step(f"{run.dataset}/{run.model} {run.improvement} seed {run.seed}")
    return stored, notes


def _stress(settings: AnalyzeConfig, analysis: Analysis) -> StressSummary | None:
    """The stress numbers of the analysed runs (those asked for by ``stress=[...]``, else every
    one the runs have); ``None`` when there are none."""
    stored, notes = stress_numbers(settings, analysis.runs)
    summary = summarise_stress(analysis, stored, list(settings.stress) or None)
    if summary is None:  # an unreadable stress.json is still worth a warning
        analysis.notes.extend(notes)
        return None
    summary.notes = [*notes, *summary.notes]
    return summary


def analyze(cfg: DictConfig) -> Path:
    """Analyse the runs of ``cfg.runs`` and ``cfg.sweep``; return the output directory.

    Writes summary.md, summary.csv, transitions.csv, report.md, report.html and the figures
    into ``cfg.paths.output_dir``. Never trains; loads checkpoints only for Grad-CAM and for
    the stresses of ``stress=[...]`` (each run's ``stress.json``; aggregated in stress.csv,
    ``stress_*.png`` and the reports' "Stress" section), and for the failure modes' Grad-CAM
    agreement (``failure_modes.*``; the modes themselves come from each run's
    ``failure_modes.json``).

    Raises:
        ConfigError: a bad setting (thresholds, device, gradcam.*, reference, stress).
        DataError: no finished run found.
    """
    quiet_library_noise()
    settings: AnalyzeConfig = build(cfg)
    out = Path(cfg.paths.output_dir)
    check_report_free(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, sweep = settings.runs, settings.sweep
    if not runs and sweep is None:
        sweep = str(latest_multirun(cfg.paths.log_dir, settings.latest))
        which = (
            "the most recent multirun"
            if settings.latest == 1
            else (f"multirun {settings.latest} from the end")
        )
        log.info("no runs= or sweep= given: analysing %s, %s", which, sweep)
    collection = collect_runs(runs, sweep, exclude=[out])
    analysis = compare_groups(collection, settings.reference, settings.thresholds)
    stress = _stress(settings, analysis)
    figures = _draw(analysis, stress, out)
    gradcam_files, gradcam_notes = _gradcam(settings, analysis, out)
    if gradcam_files:
        figures["gradcam"] = gradcam_files
    failure_modes, failure_mode_files, failure_mode_notes = _failure_modes(settings, analysis, out)
    if failure_mode_files:
        figures["failure_modes"] = failure_mode_files
    sources = [f"runs={runs}"] if runs else []
    if sweep is not None:
        sources.append(f"sweep={sweep}")
    view = build_view(
        analysis, figures, sources, gradcam_notes, stress, failure_modes, failure_mode_notes
    )
    files = write_report(view, analysis, out, stress)
    log.info("analysis of %d runs written to %s", len(collection.runs), files.report_html)
    return out
