"""``analyze.py``'s one function: read runs, compare, draw, write the report."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cnnstress.analysis import plots
from cnnstress.analysis.compare import Analysis, analyse
from cnnstress.analysis.gradcam import default_filename, side_by_side
from cnnstress.analysis.report import write_report
from cnnstress.analysis.runs import collect_runs, latest_multirun
from cnnstress.analysis.stress import StressSummary, run_stresses, stress_names, summarise_stress
from cnnstress.cam import check_method
from cnnstress.console import quiet_library_noise
from cnnstress.errors import ConfigError, UserError

log = logging.getLogger(__name__)


def _thresholds(cfg: DictConfig) -> tuple[float, ...]:
    values = cfg.get("thresholds")
    if not values:
        raise ConfigError("thresholds must be a non-empty list of numbers in [0, 1]")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError(f"thresholds must be numbers in [0, 1], got {value!r}")
        out.append(float(value))
    return tuple(sorted(set(out)))


def _device(cfg: DictConfig) -> str:
    device = str(cfg.get("device", "cpu"))
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device={device!r} is not a torch device (e.g. cpu, cuda)") from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but CUDA is not available; use device=cpu")
    return device


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for an analysis setting that cannot work, before any work."""
    _thresholds(cfg)
    _device(cfg)
    top_n = OmegaConf.select(cfg, "gradcam.top_n", default=0)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
        raise ConfigError(f"gradcam.top_n must be an integer >= 0, got {top_n!r}")
    if (method := OmegaConf.select(cfg, "gradcam.method", default=None)) is not None:
        check_method(method, "gradcam.method")
    if not isinstance(cfg.get("reference"), str) or not cfg.reference:
        raise ConfigError("reference must be an improvement name or dataset/model/improvement")
    stress_names(cfg)  # unknown stress sections; their knobs are checked by each stress


def _draw(analysis: Analysis, out: Path) -> dict[str, list[str]]:
    figures: dict[str, list[str]] = {}
    makers = {
        "transitions": plots.transitions_figure,
        "confidence": plots.confidence_figure,
        "high_conf_errors": plots.high_conf_errors_figure,
        "per_class_delta": plots.per_class_delta_figure,
        "reliability": plots.reliability_overlay_figure,
    }
    for name, make in makers.items():
        fig = make(analysis)
        if fig is not None:
            plots.save_figure(fig, out / f"{name}.png")
            figures[name] = [f"{name}.png"]
    return figures


def _gradcam(cfg: DictConfig, analysis: Analysis, out: Path) -> tuple[list[str], list[str]]:
    """Draw the side-by-side CAM figures; return (file names, notes for the report)."""
    top_n = int(OmegaConf.select(cfg, "gradcam.top_n", default=0))
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
                device=_device(cfg),
                method=OmegaConf.select(cfg, "gradcam.method", default=None),
                target_layer=OmegaConf.select(cfg, "gradcam.target_layer", default=None),
            )
        except ConfigError:
            raise
        except UserError as err:  # a moved dataset or a missing checkpoint: say so, go on
            notes.append(f"{reference.label}: no Grad-CAM figure: {err}")
            log.warning("no Grad-CAM figure for %s: %s", reference.label, err)
            continue
        if side is None:
            notes.append(f"{reference.label}: the reference has no test failure to show.")
            continue
        name = default_filename(n if len(references) > 1 else None)
        plots.save_figure(plots.gradcam_figure(side), out / name)
        files.append(name)
        column = side.columns[0]
        notes.append(
            f"{reference.label}: {len(side.index)} most confident failures of "
            f"{column.title}; CAM {column.settings} (as in training "
            "unless gradcam.method / gradcam.target_layer are set)."
        )
    return files, notes


def _stress(cfg: DictConfig, analysis: Analysis, out: Path) -> StressSummary | None:
    """Run ``cfg.stress`` on every run, aggregate, draw; ``None`` when no stress is asked for."""
    names = stress_names(cfg)
    if not names:
        return None
    results, notes = run_stresses(cfg, analysis, _device(cfg))
    summary = summarise_stress(analysis, results, names)
    summary.notes = [*notes, *summary.notes]
    return summary


def _draw_stress(stress: StressSummary, analysis: Analysis, out: Path) -> dict[str, list[str]]:
    figures: dict[str, list[str]] = {}
    fig = plots.background_figure(stress, analysis)
    if fig is not None:
        plots.save_figure(fig, out / "background.png")
        figures["background"] = ["background.png"]
    for name, make in {
        "stress_corruptions": plots.stress_corruptions_figure,
        "stress_adversarial": plots.stress_adversarial_figure,
        "stress_faithfulness": plots.stress_faithfulness_figure,
    }.items():
        fig = make(stress)
        if fig is not None:
            plots.save_figure(fig, out / f"{name}.png")
            figures[name] = [f"{name}.png"]
    return figures


def analyze(cfg: DictConfig) -> Path:
    """Analyse the runs of ``cfg.runs`` and ``cfg.sweep``; return the output directory.

    Writes summary.md, summary.csv, transitions.csv, report.md, report.html and the figures
    into ``cfg.paths.output_dir``. Never trains; loads checkpoints only for Grad-CAM and for
    the stresses of ``stress=[...]`` (each run's ``stress.json``; aggregated in stress.csv,
    ``stress_*.png`` and the reports' "Stress" section).

    Raises:
        ConfigError: a bad setting (thresholds, device, gradcam.*, reference, stress).
        DataError: no finished run found.
    """
    quiet_library_noise()
    check_config(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = list(cfg.get("runs") or [])
    sweep = cfg.get("sweep")
    if not runs and sweep is None:
        latest = cfg.get("latest", 1)
        sweep = str(latest_multirun(cfg.paths.log_dir, latest))
        which = (
            "the most recent multirun" if latest == 1 else f"multirun number {latest} from the end"
        )
        log.info("no runs= or sweep= given: analysing %s, %s", which, sweep)
        print(f"cnnstress: analysing {which}: {sweep}")
    collection = collect_runs(runs, sweep, exclude=[out])
    analysis = analyse(collection, cfg.reference, _thresholds(cfg))
    figures = _draw(analysis, out)
    gradcam_files, gradcam_notes = _gradcam(cfg, analysis, out)
    if gradcam_files:
        figures["gradcam"] = gradcam_files
    stress = _stress(cfg, analysis, out)
    if stress is not None:
        figures.update(_draw_stress(stress, analysis, out))
    sources = [f"runs={runs}"] if runs else []
    if sweep is not None:
        sources.append(f"sweep={sweep}")
    files = write_report(analysis, out, figures, sources, gradcam_notes, stress)
    log.info("analysis of %d runs written to %s", len(collection.runs), files.report_html)
    return out
