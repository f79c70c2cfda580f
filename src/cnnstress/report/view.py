"""What the report shows, as formatted tables, sentences and figures: the input of its
templates (``report/templates/``). Nothing here computes a statistic or decides; it formats
what the analysis found."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources

import numpy as np
from jinja2 import Template

from cnnstress.analysis.compare import Analysis, Comparison, Transitions
from cnnstress.analysis.failure_modes import FailureModeAnalysis, ModeFix
from cnnstress.analysis.statistics import MCNEMAR_EXACT_BELOW, SEED_VARIANCE_BOUND, CrossedTest
from cnnstress.analysis.stress import StressSummary
from cnnstress.analysis.verdict import SeedsOutcome
from cnnstress.core.data import class_names
from cnnstress.core.identity import describe
from cnnstress.report import failure_modes as mode_sentences
from cnnstress.report import sentences
from cnnstress.report.numbers import (
    IDENTICAL,
    NA,
    crossed,
    interval,
    mean_std,
    num,
    pvalue,
    threshold,
    with_holm,
)


@dataclass(frozen=True)
class Table:
    """A table of formatted cells."""

    headers: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    """A PNG of the output directory, with its caption."""

    filename: str
    caption: str


@dataclass(frozen=True)
class TransitionsView:
    title: str
    differs: str
    table: Table
    per_class: list[str]


@dataclass(frozen=True)
class StressTable:
    title: str
    table: Table


@dataclass(frozen=True)
class StressView:
    intro: str
    notes: list[str]
    tables: list[StressTable]
    method_notes: list[str]


@dataclass(frozen=True)
class ClassesView:
    intro: str
    table: Table


@dataclass(frozen=True)
class BackgroundView:
    sentences: list[str]
    table: Table
    classes: list[ClassesView]


@dataclass(frozen=True)
class FailureModeGroupingView:
    """One grouping (all errors, or the confident ones) of one setting."""

    title: str
    sentences: list[str]
    stable: Table
    fixes: Table
    introduced: Table


@dataclass(frozen=True)
class FailureModeSettingView:
    """The failure modes of one (dataset, model) setting."""

    title: str
    groups: Table
    cam: list[str]
    groupings: list[FailureModeGroupingView]
    notes: list[str]


@dataclass(frozen=True)
class FailureModesView:
    notes: list[str]
    settings: list[FailureModeSettingView]


@dataclass
class ReportView:
    """Everything the report shows; ``sections``: the present ones, in order, as
    ``(macro of sections.md.j2, title)``."""

    intro: str
    summary_intro: str
    verdicts: list[str]
    notes: list[str]
    summary: Table
    comparisons: Table
    label_errors: Table | None
    clean_comparisons: Table | None
    transitions: list[TransitionsView]
    high_conf: Table
    stress: StressView | None
    background: BackgroundView | None
    failure_modes: FailureModesView | None
    gradcam_notes: list[str]
    runs: Table
    skipped: Table
    methods: str
    figures: dict[str, list[Figure]] = field(default_factory=dict)
    sections: list[tuple[str, str]] = field(default_factory=list)


#: Captions of the analysis figures, by section.
CAPTIONS = {
    "transitions": "Transitions per seed and pooled",
    "high_conf_errors": "High-confidence error count against threshold (mean ± std)",
    "confidence": "Confidence of correct and wrong predictions, all seeds",
    "reliability": "Reliability diagrams, all seeds pooled per group",
    "per_class_delta": "Per-class accuracy change against the reference",
    "stress_corruptions": "Accuracy against corruption severity (mean over types; mean ± std "
    "over seeds; clean = same images uncorrupted)",
    "stress_adversarial": "Robust accuracy against eps (FGSM / PGD, mean ± std over seeds)",
    "stress_faithfulness": "Cascading randomisation (Adebayo et al. 2018): rank correlation of "
    "the CAMs with the trained model's after each block is re-initialised, from the output down "
    "to the target layer (mean ± std over seeds); it should fall",
    "background": "Accuracy next to the background-reliance numbers (mean ± std over seeds)",
    "gradcam": "Each model's CAM for its own prediction (green: right, red: wrong)",
    "failure_modes": "Left: share of each stable failure mode of the reference (its images in "
    "a seed) that each improvement gets right with the same seed (bar: mean, whiskers: 95% "
    "t-interval over seeds, dots: seeds), and that a re-run of the reference (its other seeds) "
    "gets right (grey). Right: median Spearman correlation of two seeds' CAMs of the same "
    "confident failure, with its interquartile range (dotted: 0.4 and 0.7)",
}
STRESS_FIGURES = ("stress_corruptions", "stress_adversarial", "stress_faithfulness")


def differs_in(c: Comparison) -> str:
    """What a compared group changes against its reference: ``augmentation.cutout.size: 16 ->
    8``; keys outside augmentation and loss are flagged as an unconstrained comparison."""
    changed = describe(c.differences, keys=c.changed_keys)
    if c.constrained:
        return changed or "nothing"
    other = describe(c.differences, keys=c.unconstrained_keys)
    return f"UNCONSTRAINED: {other}" + (f"; and {changed}" if changed else "")


def _summary(analysis: Analysis) -> Table:
    headers = ["group", "seeds", "test acc % (mean ± std)", "95% CI", "ECE",
               *(f"HCE≥{threshold(t)}" for t in analysis.thresholds)]  # fmt: skip
    rows = []
    for g in analysis.groups:
        reference = " (reference)" if analysis.is_reference(g.key) else ""
        rows.append([
            g.key.label + reference, f"n={g.accuracy.n} ({', '.join(map(str, g.seeds))})",
            mean_std(g.accuracy, 100), interval(g.accuracy, 100), mean_std(g.ece, 1, 4),
            *(f"{g.high_conf[:, i].mean():.1f}" for i in range(len(analysis.thresholds))),
        ])  # fmt: skip
    return Table(headers, rows)


def _seeds_cell(c: Comparison) -> str:
    plan, verdict = c.plan, c.verdict
    if plan is None or plan.power is None or verdict is None:
        return NA if verdict is None else verdict.seeds.value
    detectable = NA if plan.detectable is None else f"±{plan.detectable * 100:.2f}"
    outcome = {
        SeedsOutcome.SUFFICE: "suffice",
        SeedsOutcome.NEED_MORE: f"need ~{plan.needed}",
        SeedsOutcome.NO_NUMBER: f"no number suffices (limit {plan.limit_power:.2f})",
    }.get(verdict.seeds, verdict.seeds.value)
    return f"{plan.seeds} seeds: power {plan.power:.2f}, detect {detectable}; {outcome}"


def _paired_p(c: Comparison, clean: bool = False) -> str:
    paired, holm = (c.paired_clean, c.paired_clean_p_holm) if clean else (c.paired, c.paired_p_holm)
    if paired is None:
        return NA
    if paired.identical:
        return IDENTICAL
    if paired.pvalue is None:
        return f"{NA} ({paired.delta.n} shared seed(s))"
    return with_holm(paired.pvalue, holm)


def _comparisons(analysis: Analysis) -> Table:
    headers = [
        "group vs reference", "Δ acc (pp): mean ± std over seeds [95% t-CI]",
        "95% CI (pp), seeds x test images", "p seeds x images, unadjusted (Holm)",
        "paired t-test p, unadjusted (Holm)", "P(better on a seed)",
        "seeds: power / detectable Δ (pp) / needed", "verdict", "differs from ref in",
    ]  # fmt: skip
    rows = []
    for c in analysis.comparisons:
        d = c.paired.delta
        delta = (f"{mean_std(d, 100)} {interval(d, 100)}" if d.n >= 2
                 else f"{num(c.delta_mean, 100)} (difference of means)")  # fmt: skip
        p = NA if c.crossed is None else with_holm(c.crossed.pvalue, c.crossed_p_holm)
        better = NA if c.share_better is None else f"{c.share_better:.2f} (of {d.n})"
        outcome = NA if c.verdict is None else c.verdict.overall.outcome.value
        rows.append([f"{c.other.key.label} vs {c.reference.key.name}", delta,
                     crossed(c.crossed), p, _paired_p(c), better, _seeds_cell(c), outcome,
                     differs_in(c)])  # fmt: skip
    return Table(headers, rows)


def _label_errors(analysis: Analysis) -> tuple[Table | None, Table | None]:
    groups = [g for g in analysis.groups if g.has_label_errors]
    if not groups:
        return None, None
    t = analysis.failure_threshold[0]
    column = analysis.thresholds.index(t)
    rows = []
    for g in groups:
        total = g.high_conf[:, column].astype(float)
        errors = g.high_conf_label_errors[:, column].astype(float)
        rows.append([
            g.key.label, str(int(g.runs[0].is_label_error.sum())), mean_std(g.accuracy, 100),
            mean_std(g.clean_accuracy, 100), mean_std(g.corrected_accuracy, 100),
            f"{total.mean():.1f}", f"{(total - errors).mean():.1f}", f"{errors.mean():.1f}",
        ])  # fmt: skip
    groups_table = Table(
        ["group", "label errors in the test images", "test acc %", "clean acc %",
         "corrected acc %", f"confident failures ≥{t:g}", "of which model errors",
         "of which label errors"], rows,
    )  # fmt: skip
    compared = [c for c in analysis.comparisons if c.crossed_clean is not None]
    clean = Table(
        ["group vs reference", "Δ acc (pp), all test images [95% CI, seeds x images]",
         "Δ acc (pp), clean test set [95% CI, seeds x images]",
         "p clean, unadjusted (Holm over the clean-set comparisons)",
         "paired t-test p clean, unadjusted (Holm)", "verdict on the clean set"],
        [[f"{c.other.key.label} vs {c.reference.key.name}", crossed(c.crossed),
          crossed(c.crossed_clean), with_holm(c.crossed_clean.pvalue, c.clean_p_holm),
          _paired_p(c, clean=True),
          NA if c.verdict is None or c.verdict.clean_outcome is None
          else c.verdict.clean_outcome.value] for c in compared],
    )  # fmt: skip
    return groups_table, clean


def _with_errors(count: int, errors: int | None) -> str:
    return str(count) if errors is None else f"{count} ({errors} label errors)"


def _transition_row(name: str, t: Transitions, test: CrossedTest | None = None) -> list[str]:
    counts = [name, _with_errors(t.corrected, t.corrected_label_errors),
              _with_errors(t.worsened, t.worsened_label_errors), str(t.both_wrong),
              str(t.both_right), str(t.total)]  # fmt: skip
    m = t.mcnemar
    if m is not None:
        statistic = f"{m.statistic:.0f}" if m.method == "exact" else f"{m.statistic:.3f}"
        return [*counts, f"McNemar {m.method}", statistic, pvalue(m.pvalue)]
    if test is None:
        return [*counts, NA, NA, NA]
    return [*counts, "seeds x images (crossed)", f"Δ {test.delta * 100:+.2f} pp",
            pvalue(test.pvalue)]  # fmt: skip


def _per_class_lines(c: Comparison, k: int = 5) -> list[str]:
    names = class_names(c.reference.key.dataset)
    delta = np.nan_to_num(c.per_class_delta, nan=0.0)
    order = np.argsort(delta, kind="stable")
    gains = [i for i in order[::-1][:k] if delta[i] > 0]
    losses = [i for i in order[:k] if delta[i] < 0]

    def fmt(indices: list[int]) -> str:
        return ", ".join(f"{names[i]} {delta[i] * 100:+.1f} pp" for i in indices) or "none"

    return [f"per-class gains: {fmt(gains)}", f"per-class losses: {fmt(losses)}"]


def _transitions(analysis: Analysis) -> list[TransitionsView]:
    headers = ["seed", "corrected", "worsened", "both wrong", "both right", "images", "test",
               "statistic", "p (unadjusted)"]  # fmt: skip
    views = []
    for c in analysis.comparisons:
        kind = "" if c.constrained else " (unconstrained comparison)"
        rows = [_transition_row(str(s), t) for s, t in c.transitions.items()]
        if c.pooled is not None:
            rows.append(_transition_row("all seeds", c.pooled, c.crossed))
        title = f"{c.other.key.label} vs {c.reference.key.label}{kind}"
        views.append(TransitionsView(title, differs_in(c), Table(headers, rows),
                                     _per_class_lines(c)))  # fmt: skip
    return views


STRESS_NOTES = [
    "Numbers are fractions (accuracy 0.91 = 91%), mean ± std (ddof=1) over seeds, n/a for one "
    "seed; each run's numbers are in its stress.json, all of them in stress.csv.",
    "Δ vs ref: difference of the group means (other - reference); p: paired t-test over the "
    "seeds both groups have (n/a with fewer than two or no spread), unadjusted, then "
    "Holm-adjusted within its family: the headline numbers of one stress of every group "
    "against one reference. stress.csv has both; its detail rows are unadjusted only.",
    "mCE / relative mCE (Hendrycks & Dietterich 2019): corruption error summed over severities, "
    "divided by the reference group's (its errors averaged over its seeds), averaged over the "
    "benchmark corruption types; 1.0 = as the reference, below 1 = more robust. The paper's "
    "AlexNet normalisation is not used, so values compare only within this analysis.",
    "corruptions/mean_acc and mCE cover the benchmark types only; corruptions/benchmark_types "
    "says how many of the paper's 15 (12 when generated: motion_blur, snow and frost need the "
    "published files); the 4 extra types are apart (corruptions/extra_mean_acc). mCE is not "
    "computed between groups that cover different types or severities.",
]


def _stress(stress: StressSummary) -> StressView:
    tables = []
    for setting in sorted({g.key.setting for g in stress.groups}):
        groups = [g for g in stress.groups if g.key.setting == setting]
        others = [g for g in groups if g.reference is not None]
        headers = ["metric"]
        for g in groups:
            reference = " (reference)" if g.key in stress.reference_keys else ""
            headers.append(f"{g.key.name}{reference} (n={len(g.seeds)})")
        headers += [f"Δ {g.key.name} vs ref (p unadjusted, Holm)" for g in others]
        rows = []
        for metric in stress.headline:
            if not any(metric in g.values for g in groups):
                continue
            row = [metric]
            row += [mean_std(g.estimate(metric), 1, 4) if metric in g.values else NA
                    for g in groups]  # fmt: skip
            for g in others:
                delta, test = g.delta_of_means(metric), g.paired(metric)
                p = NA if test is None or test.pvalue is None else pvalue(test.pvalue)
                holm = stress.p_holm.get((g.key, metric))
                p += "" if holm is None else f", Holm {pvalue(holm)}"
                row.append(NA if delta is None else f"{delta:+.4f} (p={p})")
            rows.append(row)
        tables.append(StressTable("/".join(setting), Table(headers, rows)))
    intro = f"Stresses: {', '.join(stress.names)}."
    return StressView(intro, list(stress.notes), tables, STRESS_NOTES)


def _background(stress: StressSummary | None) -> BackgroundView | None:
    groups = [] if stress is None else [g for g in stress.groups
                                        if "background/surround_share" in g.values]  # fmt: skip
    if not groups:
        return None
    said = [sentences.background(g, metric, what, stress) for g in groups
            for metric, what in sentences.BACKGROUND_NUMBERS.items()]  # fmt: skip
    metrics = [m for m in stress.headline if m.startswith("background/")]
    table = Table(
        ["group", *(m.removeprefix("background/") for m in metrics)],
        [[g.key.label, *(mean_std(g.estimate(m), 1, 3) if m in g.values else NA
                         for m in metrics)] for g in groups],
    )  # fmt: skip
    classes = []
    for group in groups:  # the reference's classes most predicted from their background
        if group.reference is not None or group.key not in stress.reference_keys:
            continue
        names = sorted(
            {m.split("/")[2] for m in group.values if m.startswith("background/class/")},
            key=lambda c: -group.estimate(f"background/class/{c}/surround_share").mean,
        )[:10]
        members = [g for g in groups if g.key.setting == group.key.setting]
        rows = [[c, *(mean_std(g.estimate(f"background/class/{c}/surround_share"), 1, 2)
                      for g in members)] for c in names]  # fmt: skip
        intro = (f"{'/'.join(group.key.setting)}: the classes most often predicted from their "
                 "background in the reference (surround share per class; all classes in "
                 "stress.csv).")  # fmt: skip
        classes.append(ClassesView(intro, Table(["class", *(g.key.name for g in members)], rows)))
    return BackgroundView([s for s in said if s], table, classes)


GROUPING_TITLES = {"confident": "Confident errors", "errors": "All errors"}
MODES_SHOWN = 8  # stable modes listed per group and grouping


def _share(value: float) -> str:
    return NA if not np.isfinite(value) else f"{100 * value:.0f}%"


def _fix_row(fix: ModeFix, classes: Sequence[str]) -> list[str]:
    e, test = fix.fixed_estimate, fix.test
    fixed = f"{100 * e.mean:.0f}%" if np.isfinite(e.mean) else NA
    if e.ci_low is not None and e.ci_high is not None:  # a share: shown within [0, 100]
        fixed += f" [{100 * max(e.ci_low, 0):.0f}, {100 * min(e.ci_high, 1):.0f}]"
    reseed = [v for v in fix.reseed.values() if np.isfinite(v)]
    d = test.delta
    delta = (
        NA
        if not test.seeds
        else f"{100 * d.mean:+.0f} pp"
        + (f" [{100 * d.ci_low:+.0f}, {100 * d.ci_high:+.0f}]" if d.ci_low is not None else "")
    )
    p = IDENTICAL if test.identical else NA if test.pvalue is None else pvalue(test.pvalue)
    return [
        mode_sentences.short_name(fix.family, classes), fix.improvement,
        ", ".join(f"{s}: {_share(v)}" for s, v in sorted(fix.fixed.items())), fixed,
        _share(float(np.mean(reseed))) if reseed else NA, delta, p,
        f"{fix.seeds_better} of {len(test.seeds)}",
        ", ".join(map(str, fix.persists)) or "none",
    ]  # fmt: skip


def _failure_mode_setting(label: str, result: FailureModeAnalysis) -> FailureModeSettingView:
    classes = result.classes
    groups = Table(
        ["group", "seeds with modes", "stable modes (confident / all errors)",
         "seed-specific (confident / all errors)", "median overlap of stable modes",
         "computed from the checkpoint"],
        [[name + (" (reference)" if name == result.reference else ""),
          ", ".join(map(str, g.seeds)) or "none",
          " / ".join(str(len(g.matching[k].stable)) for k in ("confident", "errors")),
          " / ".join(str(len(g.matching[k].seed_specific)) for k in ("confident", "errors")),
          " / ".join(num(float(np.median(m)), 1, 2) if (m := [f.median_overlap for f in
                     g.matching[k].stable if f.median_overlap is not None]) else NA
                     for k in ("confident", "errors")),
          ", ".join(map(str, g.computed)) or "none"]
         for name, g in result.groups.items()],
    )  # fmt: skip
    notes = [f"{name}, seed {seed}: left out: {reason}" for name, g in result.groups.items()
             for seed, reason in g.skipped.items()]  # fmt: skip
    cam = []
    for name, g in result.groups.items():
        if g.cam_skipped is not None:
            cam.append(f"{name}: CAM agreement across seeds not measured: {g.cam_skipped}")
        elif g.seeds:
            cam.append(mode_sentences.agreement_sentence(name, g.cam))
    groupings = []
    for grouping in ("confident", "errors"):
        reference = result.groups[result.reference].matching[grouping]
        stable = Table(
            ["mode (reference)", "found in seeds", "images per seed (mean)",
             "median overlap (Jaccard)", "description (its largest mode)"],
            [[mode_sentences.short_name(f, classes), f"{len(f.seeds)} of {f.num_seeds}",
              f"{f.mean_size:.0f}", num(f.median_overlap, 1, 2) if f.median_overlap else NA,
              f.description] for f in reference.stable[:MODES_SHOWN]],
        )  # fmt: skip
        fixes = [x for imp in result.improvements.values() for x in imp[grouping].fixes]
        fixes.sort(key=lambda x: (x.family.id, x.improvement))
        fix_table = Table(
            ["mode (reference)", "improvement", "its images right, per seed",
             "mean [95% t-CI]", "a re-run of the reference", "Δ vs re-run [95% t-CI]",
             "paired t-test p", "seeds better than a re-run", "still a mode in seeds"],
            [_fix_row(x, classes) for x in fixes if x.family.id < MODES_SHOWN],
        )  # fmt: skip
        introduced = Table(
            ["improvement", "introduced mode", "found in seeds", "reference got right"],
            [[m.improvement, mode_sentences.short_name(m.family, classes),
              f"{len(m.family.seeds)} of {m.family.num_seeds}",
              _share(m.reference_right_estimate.mean)]
             for imp in result.improvements.values() for m in imp[grouping].introduced],
        )  # fmt: skip
        said = [_fix_line(result, name, grouping) for name in result.improvements]
        title = (
            f"{GROUPING_TITLES[grouping]}: {len(reference.stable)} stable and "
            f"{len(reference.seed_specific)} seed-specific modes of {result.reference}"
        )
        groupings.append(FailureModeGroupingView(title, said, stable, fix_table, introduced))
    return FailureModeSettingView(
        f"{label} (reference: {result.reference})", groups, cam, groupings, notes
    )


def _failure_modes(
    results: Sequence[tuple[str, FailureModeAnalysis]], notes: Sequence[str]
) -> FailureModesView | None:
    if not results and not notes:
        return None
    return FailureModesView(list(notes), [_failure_mode_setting(*r) for r in results])


def _fix_line(result: FailureModeAnalysis, name: str, grouping: str) -> str:
    """What improvement ``name`` does to the reference's modes, or why that is unknown: a
    stable mode needs two seeds with modes, a fix one shared seed."""
    reference, other = result.groups[result.reference], result.groups[name]
    if len(reference.seeds) < 2:
        return (f"{name}: unknown; stable modes need two seeds with failure modes, "
                f"{result.reference} has {len(reference.seeds)}")  # fmt: skip
    if not other.seeds:
        return f"{name}: unknown; none of its runs has failure modes"
    return mode_sentences.fix_sentence(result.improvements[name][grouping], result.classes)


def _failure_mode_verdicts(results: Sequence[tuple[str, FailureModeAnalysis]]) -> list[str]:
    """The first screen's lines: what each improvement does to the reference's confident
    failure modes."""
    return [
        f"Failure modes ({label}, confident errors): {_fix_line(result, name, 'confident')}"
        for label, result in results
        for name in result.improvements
    ]


def _methods() -> str:
    text = resources.files("cnnstress.report").joinpath("templates/methods.md").read_text()
    return Template(text).render(
        mcnemar_exact_below=MCNEMAR_EXACT_BELOW, seed_variance_bound=SEED_VARIANCE_BOUND
    )


#: The report's sections in order: (macro of sections.md.j2, title).
SECTIONS = [
    ("verdict", "Verdict"), ("warnings", "Warnings"), ("groups", "Summary"),
    ("comparisons", "Comparisons against the reference"), ("label_errors", "Known label errors"),
    ("transitions", "Transitions against the reference"),
    ("confident_errors", "High-confidence errors"), ("confidence", "Confidence"),
    ("calibration", "Calibration"), ("per_class", "Per-class accuracy change"),
    ("stress", "Stress"), ("background", "Background reliance"),
    ("failure_modes", "Failure modes"),
    ("gradcam", "Grad-CAM: the reference's most confident failures"), ("runs", "Runs"),
    ("skipped", "Skipped run directories"), ("methods", "How the numbers are computed"),
]  # fmt: skip


def build_view(
    analysis: Analysis,
    figures: dict[str, list[str]],
    sources: Sequence[str],
    gradcam_notes: Sequence[str] = (),
    stress: StressSummary | None = None,
    failure_modes: Sequence[tuple[str, FailureModeAnalysis]] = (),
    failure_mode_notes: Sequence[str] = (),
) -> ReportView:
    """The report's content; ``figures`` maps a section (:data:`CAPTIONS`) to PNG names;
    ``failure_modes``: ``(setting label, analysis)`` per setting."""
    runs = sum(len(g.runs) for g in analysis.groups)
    label_errors, clean = _label_errors(analysis)
    notes = [*analysis.notes, *(f"{c.other.key.label}: {x}" for c in analysis.comparisons
                                for x in c.notes)]  # fmt: skip
    unknown = set(figures) - set(CAPTIONS)
    assert not unknown, f"figures of no report section: {sorted(unknown)}"
    shown = {name: [Figure(f, caption) for f in figures.get(name, ())]
             for name, caption in CAPTIONS.items()}  # fmt: skip
    shown["stress"] = [f for name in STRESS_FIGURES for f in shown.get(name, [])]
    view = ReportView(
        intro=f"Generated {datetime.now().isoformat(timespec='seconds')} from "
        f"{'; '.join(sources)}. Reference: {analysis.reference}. {runs} runs in "
        f"{len(analysis.groups)} groups, {len(analysis.skipped)} skipped.",
        summary_intro=f"Reference: {analysis.reference}. Sources: {'; '.join(sources)}.",
        verdicts=[sentences.verdict(c, analysis) for c in analysis.comparisons]
        + _failure_mode_verdicts(failure_modes),
        notes=notes,
        summary=_summary(analysis),
        comparisons=_comparisons(analysis),
        label_errors=label_errors,
        clean_comparisons=clean,
        transitions=_transitions(analysis),
        high_conf=Table(
            ["group", *(f"≥{threshold(t)}" for t in analysis.thresholds)],
            [
                [
                    g.key.label,
                    *(
                        mean_std(g.high_conf_estimate(i), 1, 1)
                        for i in range(len(analysis.thresholds))
                    ),
                ]
                for g in analysis.groups
            ],
        ),
        stress=None if stress is None else _stress(stress),
        background=_background(stress),
        failure_modes=_failure_modes(failure_modes, failure_mode_notes),
        gradcam_notes=list(gradcam_notes),
        runs=Table(
            ["group", "seed", "test acc %", "ECE", "path"],
            [
                [
                    g.key.label,
                    str(r.seed),
                    num(g.accuracy_by_seed[r.seed], 100),
                    num(g.ece_by_seed[r.seed], 1, 4),
                    str(r.path),
                ]
                for g in analysis.groups
                for r in g.runs
            ],
        ),
        skipped=Table(["path", "reason"], [[str(s.path), s.reason] for s in analysis.skipped]),
        methods=_methods(),
        figures=shown,
    )
    present = {
        "warnings": bool(notes), "comparisons": bool(analysis.comparisons),
        "label_errors": label_errors is not None, "confidence": bool(shown.get("confidence")),
        "calibration": bool(shown.get("reliability")),
        "per_class": bool(shown.get("per_class_delta")), "stress": stress is not None,
        "background": view.background is not None, "skipped": bool(analysis.skipped),
        "gradcam": bool(shown["gradcam"] or gradcam_notes),
        "failure_modes": view.failure_modes is not None,
    }  # fmt: skip
    view.sections = [(name, title) for name, title in SECTIONS if present.get(name, True)]
    return view
