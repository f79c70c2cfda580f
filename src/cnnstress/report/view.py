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
from cnnstress.analysis.seed_table import (
    ACCURACY,
    CLEAN_ACCURACY,
    CORRECTED_ACCURACY,
    ECE,
    confident_failures,
    confident_label_errors,
)
from cnnstress.analysis.statistics import MCNEMAR_EXACT_BELOW, SEED_VARIANCE_BOUND, CrossedTest
from cnnstress.analysis.stress import Provenance, StressSummary
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
    metric_label,
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
    origins: list[str]
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
            *(f"{g.estimate(confident_failures(t)).mean:.1f}" for t in analysis.thresholds),
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
    t, recorded = analysis.failure_threshold
    source = "the runs' recorded threshold" if recorded else "no threshold recorded"
    rows = []
    for g in groups:
        total = g.estimate(confident_failures(t)).mean
        errors = g.estimate(confident_label_errors(t)).mean
        rows.append([
            g.key.label, str(int(g.runs[0].is_label_error.sum())), mean_std(g.accuracy, 100),
            mean_std(g.estimate(CLEAN_ACCURACY), 100),
            mean_std(g.estimate(CORRECTED_ACCURACY), 100),
            f"{total:.1f}", f"{total - errors:.1f}", f"{errors:.1f}",
        ])  # fmt: skip
    groups_table = Table(
        ["group", "label errors in the test images", "test acc %", "clean acc %",
         "corrected acc %", f"confident failures ≥{t:g} ({source})", "of which model errors",
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


#: The stress section's method notes: (the stress a note is about, None for every stress).
STRESS_NOTES = [
    (None, "Numbers are fractions (accuracy 0.91 = 91%), mean ± std (ddof=1) over seeds, n/a "
     "for one seed; each run's numbers are in its stress.json, all of them in stress.csv."),
    (None, "Δ vs ref: difference of the group means (other - reference); p: paired t-test over "
     "the seeds both groups have (n/a with fewer than two or no spread), unadjusted, then "
     "Holm-adjusted within its family: the headline numbers of one stress of every group "
     "against one reference. stress.csv has both; its detail rows are unadjusted only."),
    ("corruptions", "mCE / relative mCE (Hendrycks & Dietterich 2019): corruption error summed "
     "over severities, divided by the reference group's (its errors averaged over its seeds), "
     "averaged over the benchmark corruption types; 1.0 = as the reference, below 1 = more "
     "robust. The paper's AlexNet normalisation is not used, so values compare only within "
     "this analysis."),
    ("corruptions", "corruptions mean_acc (types=benchmark) and mCE cover the benchmark types "
     "only (15 when read from the published files, 12 when generated: motion_blur, snow and "
     "frost need the files); the 4 extra types are apart (types=extra). mCE is not computed "
     "between groups that cover different types or severities."),
    ("faithfulness", "faithfulness randomization_undefined: the share of images whose rank "
     "correlation is undefined at the last cascade step (a constant map); "
     "randomization_spearman averages the others only."),
]  # fmt: skip


def _settings_text(settings: dict, limit: int = 6) -> str:
    items = [f"{k}={v}" for k, v in settings.items()]
    more = f", +{len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _origin(p: Provenance) -> str:
    """``corruptions, cifar10/simple_cnn: 6 runs, computed by analyze.py (4), train.py (2) on
    cpu, 2026-12-06T05:01:02 to 2026-12-06T05:09:40; settings num_images=1000, ...``."""
    who = ", ".join(f"{name} ({n})" for name, n in sorted(p.computed_by.items()))
    when = p.first if p.first == p.last else f"{p.first} to {p.last}"
    return (
        f"{p.stress}, {'/'.join(p.dataset_model)}: {p.runs} run{'' if p.runs == 1 else 's'}, "
        f"computed by {who} on "
        f"{'/'.join(p.devices)}, {when}; settings {_settings_text(p.settings)} (all of them in "
        "each run's stress.json)"
    )


def _stress(analysis: Analysis, stress: StressSummary) -> StressView:
    table = analysis.table
    tables = []
    for pair in analysis.dataset_models:
        keys = [g.key for g in analysis.groups if g.key.dataset_model == pair
                and any(table.has(g.key, m) for m in stress.metrics)]  # fmt: skip
        if not keys:
            continue
        others = [k for k in keys if k in stress.reference_of]
        headers = ["metric"]
        for key in keys:
            reference = " (reference)" if key in stress.reference_keys else ""
            seeds = {s for m in stress.metrics for s in table.by_seed(key, m)}
            headers.append(f"{key.name}{reference} (n={len(seeds)})")
        headers += [f"Δ {k.name} vs ref (p unadjusted, Holm)" for k in others]
        rows = []
        for metric in stress.headline:
            if not any(table.has(k, metric) for k in keys):
                continue
            row = [metric_label(metric)]
            row += [mean_std(table.estimate(k, metric), 1, 4) if table.has(k, metric) else NA
                    for k in keys]  # fmt: skip
            for key in others:
                ref = stress.reference_of[key]
                delta, test = table.delta_of_means(ref, key, metric), table.paired(ref, key, metric)
                p = NA if test is None or test.pvalue is None else pvalue(test.pvalue)
                holm = stress.p_holm.get((key, metric))
                p += "" if holm is None else f", Holm {pvalue(holm)}"
                row.append(NA if delta is None else f"{delta:+.4f} (p={p})")
            rows.append(row)
        tables.append(StressTable("/".join(pair), Table(headers, rows)))
    intro = f"Stresses: {', '.join(stress.names)}. Where the numbers come from:"
    origins = [_origin(p) for p in stress.provenance]
    method_notes = [note for about, note in STRESS_NOTES if about in (None, *stress.names)]
    return StressView(intro, origins, list(stress.notes), tables, method_notes)


def _background(analysis: Analysis, stress: StressSummary | None) -> BackgroundView | None:
    table = analysis.table
    share = sentences.SURROUND_SHARE
    keys = [] if stress is None else [g.key for g in analysis.groups if table.has(g.key, share)]
    if not keys:
        return None
    said = [sentences.background(analysis, stress, key, metric, what) for key in keys
            for metric, what in sentences.BACKGROUND_NUMBERS]  # fmt: skip
    metrics = [m for m in stress.headline if m.source == "background"]
    rows = [[key.label, *(mean_std(table.estimate(key, m), 1, 3) if table.has(key, m) else NA
                          for m in metrics)] for key in keys]  # fmt: skip
    summary = Table(["group", *(metric_label(m, source=False) for m in metrics)], rows)
    classes = []
    for ref in (k for k in keys if k in stress.reference_keys):
        # the reference's classes most predicted from their background
        per_class = [m for m in table.metrics(ref, "background")
                     if m.name == "surround_share" and m.at("class") is not None]  # fmt: skip
        per_class.sort(key=lambda m: -table.estimate(ref, m).mean)
        members = [k for k in keys if k.dataset_model == ref.dataset_model]
        rows = [[str(m.at("class")), *(mean_std(table.estimate(k, m), 1, 2) for k in members)]
                for m in per_class[:10]]  # fmt: skip
        intro = (f"{'/'.join(ref.dataset_model)}: the classes most often predicted from their "
                 "background in the reference (surround share per class; all classes in "
                 "stress.csv).")  # fmt: skip
        classes.append(ClassesView(intro, Table(["class", *(k.name for k in members)], rows)))
    return BackgroundView([s for s in said if s], summary, classes)


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
        verdicts=[sentences.verdict(c) for c in analysis.comparisons]
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
                        mean_std(g.estimate(confident_failures(t)), 1, 1)
                        for t in analysis.thresholds
                    ),
                ]
                for g in analysis.groups
            ],
        ),
        stress=None if stress is None else _stress(analysis, stress),
        background=_background(analysis, stress),
        failure_modes=_failure_modes(failure_modes, failure_mode_notes),
        gradcam_notes=list(gradcam_notes),
        runs=Table(
            ["group", "seed", "test acc %", "ECE", "path"],
            [
                [
                    g.key.label,
                    str(r.seed),
                    num(g.by_seed(ACCURACY)[r.seed], 100),
                    num(g.by_seed(ECE)[r.seed], 1, 4),
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
