"""Write the analysis: ``summary.md``, ``summary.csv``, ``transitions.csv``, ``report.md`` and a
self-contained ``report.html`` (figures embedded as base64 PNG, no server, no external file).

The report is built once as a list of blocks and rendered to Markdown and to HTML; a
Markdown-to-HTML library would add a dependency for the handful of constructs used here.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from cnnstress.analysis.compare import Analysis, Comparison, GroupResult, Transitions
from cnnstress.analysis.statistics import (
    MCNEMAR_EXACT_BELOW,
    SEED_VARIANCE_BOUND,
    CrossedTest,
    Estimate,
    PairedTest,
)
from cnnstress.analysis.stress import StressGroup, StressSummary
from cnnstress.analysis.stress import family as stress_family
from cnnstress.analysis.verdict import CleanOutcome, Judgement, Outcome, SeedsOutcome, Verdict
from cnnstress.data import class_names
from cnnstress.identity import describe

NA = "n/a"
# Said wherever a test is impossible because the per-seed differences are all the same.
IDENTICAL = "no test possible (identical differences)"


# -- blocks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Heading:
    """A section title (level 1-3)."""

    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    """Plain text."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """An unordered list."""

    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    """A table of strings."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Image:
    """A PNG in the output directory, shown with a caption."""

    filename: str
    caption: str


Block = Heading | Paragraph | Bullets | Table | Image


def to_markdown(blocks: Sequence[Block]) -> str:
    """Render blocks as GitHub-flavoured Markdown (images linked by relative path)."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            lines = [
                "| " + " | ".join(map(cell, block.headers)) + " |",
                "|" + "|".join("---" for _ in block.headers) + "|",
                *("| " + " | ".join(map(cell, row)) + " |" for row in block.rows),
            ]
            out.append("\n".join(lines))
        elif isinstance(block, Image):
            out.append(f"![{block.caption}]({block.filename})\n\n*{block.caption}*")
    return "\n\n".join(out) + "\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
.table-wrap{max-width:100%;overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:0.88em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top;
max-width:22em;overflow-wrap:anywhere}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}
figcaption{font-style:italic;color:#555}code{background:#f4f4f4;padding:0 3px}
ul.toc-list{background:#f7f7f7;border:1px solid #ddd;padding:0.5em 1em 0.5em 2em;margin:1em 0}

ul.verdict li{margin:0.4em 0}
"""


def anchor(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return kept.strip().replace(" ", "-")


def table_of_contents(blocks: Sequence[Block]) -> Bullets:
    """Links to every level-2 heading of ``blocks``."""
    return Bullets([f"[{b.text}](#{anchor(b.text)})" for b in blocks
                    if isinstance(b, Heading) and b.level == 2])  # fmt: skip


_LINK = re.compile(r"\[([^\]]+)\]\(#([\w-]+)\)")


def _link(text: str) -> str:
    """Markdown in-page links ``[text](#anchor)`` as HTML links."""
    return _LINK.sub(r'<a href="#\2">\1</a>', text)


def to_html(blocks: Sequence[Block], directory: Path, title: str) -> str:
    """Render blocks as one HTML page; every image is read from ``directory`` and embedded."""
    esc = html.escape
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(
                f'<h{block.level} id="{anchor(block.text)}">{esc(block.text)}</h{block.level}>'
            )
        elif isinstance(block, Paragraph):
            body.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(f"<li>{_link(esc(i))}</li>" for i in block.items)
            kind = ' class="toc-list"' if block.items and block.items[0].startswith("[") else ""
            body.append(f"<ul{kind}>{items}</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.headers)
            rows = "".join(
                "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            body.append(
                f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>"
            )
        elif isinstance(block, Image):
            data = base64.b64encode((directory / block.filename).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"
            )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# -- number formatting ------------------------------------------------------------------------
def _num(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value * scale:.{digits}f}"


def _mean_std(e: Estimate, scale: float = 1.0, digits: int = 2) -> str:
    if e.std is None:
        return _num(e.mean, scale, digits)
    return f"{_num(e.mean, scale, digits)} ± {_num(e.std, scale, digits)}"


def _ci(e: Estimate, scale: float = 1.0, digits: int = 2) -> str:
    if e.ci_low is None:
        return NA
    return f"[{_num(e.ci_low, scale, digits)}, {_num(e.ci_high, scale, digits)}]"


def _p(value: float | None) -> str:
    return NA if value is None else f"{value:.3g}"


def _threshold(t: float) -> str:
    return f"{t:g}"


# -- content ----------------------------------------------------------------------------------
def differs_in(comparison: Comparison) -> str:
    """What a compared group changes against its reference: ``augmentation.cutout.size: 16 -> 8``;
    keys outside augmentation and loss are flagged as an unconstrained comparison."""
    changed = describe(comparison.differences, keys=comparison.changed_keys)
    if comparison.constrained:
        return changed or "nothing"
    other = describe(comparison.differences, keys=comparison.unconstrained_keys)
    return f"UNCONSTRAINED: {other}" + (f"; and {changed}" if changed else "")


def summary_table(analysis: Analysis) -> Table:
    """One row per group: accuracy over seeds, ECE, high-confidence errors."""
    headers = [
        "group", "seeds", "test acc % (mean ± std)", "95% CI", "ECE",
        *(f"HCE≥{_threshold(t)}" for t in analysis.thresholds),
    ]  # fmt: skip
    rows = []
    for group in analysis.groups:
        acc = group.accuracy
        rows.append(
            [
                group.key.label + (" (reference)" if analysis.is_reference(group.key) else ""),
                f"n={acc.n} ({', '.join(map(str, group.seeds))})",
                _mean_std(acc, 100),
                _ci(acc, 100),
                _mean_std(group.ece, 1, 4),
                *(f"{group.high_conf[:, i].mean():.1f}" for i in range(len(analysis.thresholds))),
            ]
        )
    return Table(headers, rows)


COMPARISON_HEADERS = [
    "group vs reference", "Δ acc (pp): mean ± std over seeds [95% t-CI]",
    "95% CI (pp), seeds x test images", "p seeds x images, unadjusted (Holm)",
    "paired t-test p, unadjusted (Holm)",
    "P(better on a seed)", "seeds: power / detectable Δ (pp) / needed", "verdict",
    "differs from ref in",
]  # fmt: skip


def _interval(test: CrossedTest | None) -> str:
    """``+1.20 [+0.40, +2.00]`` in pp, or why there is none."""
    if test is None:
        return NA
    if not test.tested:
        return f"{test.delta * 100:+.2f} (no interval: {test.reason})"
    return f"{test.delta * 100:+.2f} [{test.ci_low * 100:+.2f}, {test.ci_high * 100:+.2f}]"


def _p_holm(p: float | None, holm: float | None) -> str:
    """``0.012 (0.036)``: unadjusted, Holm-adjusted in brackets."""
    return NA if p is None else f"{_p(p)} ({_p(holm)})"


def _paired_p(paired: PairedTest, holm: float | None) -> str:
    if paired.identical:
        return IDENTICAL
    if paired.pvalue is None:
        return f"{NA} ({paired.delta.n} shared seed(s))"
    return _p_holm(paired.pvalue, holm)


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


def comparison_row(c: Comparison) -> list[str]:
    """The comparison table's row of ``c`` (see :data:`COMPARISON_HEADERS`)."""
    paired = c.paired
    if paired.delta.n >= 2:
        delta = f"{_mean_std(paired.delta, 100)} {_ci(paired.delta, 100)}"
    else:
        delta = f"{_num(c.delta_mean, 100)} (difference of means)"
    crossed = c.crossed
    crossed_p = NA if crossed is None else _p_holm(crossed.pvalue, c.crossed_p_holm)
    better = NA if c.share_better is None else f"{c.share_better:.2f} (of {paired.delta.n})"
    outcome = NA if c.verdict is None else c.verdict.overall.outcome.value
    return [
        f"{c.other.key.label} vs {c.reference.key.name}", delta, _interval(crossed), crossed_p,
        _paired_p(paired, c.paired_p_holm), better, _seeds_cell(c), outcome, differs_in(c),
    ]  # fmt: skip


def comparison_table(analysis: Analysis) -> Table:
    """One row per comparison: the accuracy difference and how sure it is."""
    return Table(COMPARISON_HEADERS, [comparison_row(c) for c in analysis.comparisons])


def _opt(value: float | None) -> str | float:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_summary_csv(analysis: Analysis, path: Path) -> Path:
    """``summary.csv``: one row per group, raw fractions, empty cells where not defined."""
    header = [
        "dataset", "model", "name", "label", "is_reference", "n_seeds", "seeds",
        "acc_mean", "acc_std", "acc_ci_low", "acc_ci_high",
        "ece_mean", "ece_std", "ece_ci_low", "ece_ci_high",
        "acc_clean_mean", "acc_clean_std", "acc_corrected_mean", "acc_corrected_std",
    ]  # fmt: skip
    for t in analysis.thresholds:
        header += [f"hce_mean@{_threshold(t)}", f"hce_std@{_threshold(t)}",
                   f"hce_label_errors_mean@{_threshold(t)}"]  # fmt: skip
    header += COMPARISON_CSV_COLUMNS
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for g in analysis.groups:
            acc, ece = g.accuracy, g.ece
            row: list[object] = [
                g.key.dataset, g.key.model, g.key.name, g.key.label,
                int(analysis.is_reference(g.key)), acc.n, ";".join(map(str, g.seeds)),
                acc.mean, _opt(acc.std), _opt(acc.ci_low), _opt(acc.ci_high),
                ece.mean, _opt(ece.std), _opt(ece.ci_low), _opt(ece.ci_high),
            ]  # fmt: skip
            if g.has_label_errors:
                clean, corrected = g.clean_accuracy, g.corrected_accuracy
                row += [clean.mean, _opt(clean.std), corrected.mean, _opt(corrected.std)]
            else:
                row += ["", "", "", ""]
            for i in range(len(analysis.thresholds)):
                h = g.high_conf_estimate(i)
                errors = g.high_conf_label_errors
                row += [h.mean, _opt(h.std), "" if errors is None else errors[:, i].mean()]
            columns = _comparison_columns(analysis.comparison_for(g.key))
            row += [columns.get(name, "") for name in COMPARISON_CSV_COLUMNS]
            writer.writerow(row)
    return path


# summary.csv's comparison columns, in order (see _comparison_columns).
COMPARISON_CSV_COLUMNS = [
    "reference", "delta_acc_of_means", "paired_n", "paired_delta_mean", "paired_delta_std",
    "paired_delta_ci_low", "paired_delta_ci_high", "paired_t", "paired_p_unadjusted",
    "paired_p_holm", "crossed_delta", "crossed_se", "crossed_df", "crossed_ci_low",
    "crossed_ci_high", "crossed_p_unadjusted", "crossed_p_holm", "holm_family_size",
    "crossed_note", "var_seed", "var_image", "var_interaction", "p_better", "power_at_delta",
    "detectable_delta", "seeds_needed", "seeds_limit_power", "seeds_verdict", "verdict",
    "failure_threshold", "failure_threshold_recorded", "pooled_corrected", "pooled_worsened",
    "pooled_both_wrong", "pooled_both_right", "constrained", "differs_in", "clean_delta",
    "clean_ci_low", "clean_ci_high", "clean_p_unadjusted", "clean_p_holm",
    "clean_paired_p_unadjusted", "clean_paired_p_holm", "clean_holm_family_size", "verdict_clean",
]  # fmt: skip


def _crossed_columns(prefix: str, test: CrossedTest | None, holm: float | None) -> dict:
    t = test if test is not None and test.tested else None
    return {
        f"{prefix}_delta": "" if test is None else test.delta,
        f"{prefix}_ci_low": "" if t is None else t.ci_low,
        f"{prefix}_ci_high": "" if t is None else t.ci_high,
        f"{prefix}_p_unadjusted": "" if t is None else t.pvalue,
        f"{prefix}_p_holm": _opt(holm),
    }


def _comparison_columns(c: Comparison | None) -> dict[str, object]:
    """``summary.csv``'s comparison columns of ``c`` by name (:data:`COMPARISON_CSV_COLUMNS`;
    nothing for ``None``). Holm families: the comparisons with one reference (whole test set),
    the same on the clean test set."""
    if c is None:
        return {}
    d, crossed, plan, pooled, v = c.paired.delta, c.crossed, c.plan, c.pooled, c.verdict
    tested = crossed is not None and crossed.tested
    parts = None if crossed is None else crossed.components
    return {
        "reference": c.reference.key.label, "delta_acc_of_means": c.delta_mean,
        "paired_n": d.n, "paired_delta_mean": _opt(d.mean), "paired_delta_std": _opt(d.std),
        "paired_delta_ci_low": _opt(d.ci_low), "paired_delta_ci_high": _opt(d.ci_high),
        "paired_t": _opt(c.paired.t), "paired_p_unadjusted": _opt(c.paired.pvalue),
        "paired_p_holm": _opt(c.paired_p_holm),
        **_crossed_columns("crossed", crossed, c.crossed_p_holm),
        "crossed_se": crossed.se if tested else "",
        "crossed_df": crossed.df if tested else "",
        "crossed_note": "" if crossed is None else crossed.reason,
        "holm_family_size": c.family,
        "var_seed": "" if parts is None else _opt(parts.seed),
        "var_image": "" if parts is None else _opt(parts.image),
        "var_interaction": "" if parts is None else _opt(parts.interaction),
        "p_better": _opt(c.share_better),
        "power_at_delta": "" if plan is None else _opt(plan.power),
        "detectable_delta": "" if plan is None else _opt(plan.detectable),
        "seeds_needed": "" if plan is None else _opt(plan.needed),
        "seeds_limit_power": "" if plan is None else _opt(plan.limit_power),
        "seeds_verdict": "" if v is None else v.seeds.value,
        "verdict": "" if v is None else v.overall.outcome.value,
        "failure_threshold": c.failure_threshold,
        "failure_threshold_recorded": int(c.failure_threshold_recorded),
        "pooled_corrected": "" if pooled is None else pooled.corrected,
        "pooled_worsened": "" if pooled is None else pooled.worsened,
        "pooled_both_wrong": "" if pooled is None else pooled.both_wrong,
        "pooled_both_right": "" if pooled is None else pooled.both_right,
        "constrained": int(c.constrained), "differs_in": describe(c.differences, limit=50),
        **_crossed_columns("clean", c.crossed_clean, c.clean_p_holm),
        "clean_paired_p_unadjusted": "" if c.paired_clean is None else _opt(c.paired_clean.pvalue),
        "clean_paired_p_holm": _opt(c.paired_clean_p_holm),
        "clean_holm_family_size": "" if c.crossed_clean is None else c.clean_family,
        "verdict_clean": "" if v is None or v.clean_outcome is None else v.clean_outcome.value,
    }  # fmt: skip


STRESS_NOTES = [
    "Each run's checkpoint is evaluated by cnnstress.stress.run_stress (results in the run's "
    "stress.json, recomputed on every analysis); numbers are fractions (accuracy 0.91 = 91%), "
    "mean ± std (ddof=1) over seeds, n/a for one seed.",
    "Δ vs ref: difference of the group means (other - reference); p: paired t-test over the "
    "seeds both groups have (n/a with fewer than two or no spread), unadjusted, then "
    "Holm-adjusted within its family: the headline numbers of one stress (corruptions, shift, "
    "adversarial, calibration, faithfulness, background) of every group against one reference. "
    "stress.csv has both (paired_p_unadjusted, paired_p_holm, holm_family); its detail rows "
    "are unadjusted only.",
    "mCE / relative mCE (Hendrycks & Dietterich 2019): corruption error summed over severities, "
    "divided by the reference group's (its errors averaged over its seeds), averaged over the "
    "benchmark corruption types; 1.0 = as the reference, below 1 = more robust. The paper's "
    "AlexNet normalisation is not used, so values compare only within this analysis.",
    "corruptions/mean_acc and mCE cover the benchmark types only; corruptions/benchmark_types "
    "says how many of the paper's 15 (12 when generated: motion_blur, snow and frost need the "
    "published files); the 4 extra types are apart (corruptions/extra_mean_acc). mCE is not "
    "computed between groups that cover different types or severities.",
]


def stress_tables(stress: StressSummary) -> list[Block]:
    """Per (dataset, model) setting: one row per headline stress number, one column per group
    (mean ± std over seeds), then for each non-reference group its difference to the reference."""
    blocks: list[Block] = []
    for setting in sorted({g.key.setting for g in stress.groups}):
        groups = [g for g in stress.groups if g.key.setting == setting]
        others = [g for g in groups if g.reference is not None]
        headers = ["metric"]
        for g in groups:
            ref = " (reference)" if g.key in stress.reference_keys else ""
            headers.append(f"{g.key.name}{ref} (n={len(g.seeds)})")
        headers += [f"Δ {g.key.name} vs ref (p unadjusted, Holm)" for g in others]
        rows = []
        for metric in stress.headline:
            if not any(metric in g.values for g in groups):
                continue
            row = [metric]
            row += [_mean_std(g.estimate(metric), 1, 4) if metric in g.values else NA
                    for g in groups]  # fmt: skip
            for g in others:
                delta = g.delta_of_means(metric)
                test = g.paired(metric)
                p = NA if test is None or test.pvalue is None else _p(test.pvalue)
                holm = stress.p_holm.get((g.key, metric))
                p += "" if holm is None else f", Holm {_p(holm)}"
                row.append(NA if delta is None else f"{delta:+.4f} (p={p})")
            rows.append(row)
        blocks += [Heading(3, "/".join(setting)), Table(headers, rows)]
    return blocks


def write_stress_csv(stress: StressSummary, path: Path) -> Path:
    """``stress.csv``: one row per group and stress metric (headline and per-type details)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([
            "dataset", "model", "name", "label", "is_reference", "metric", "headline",
            "n_seeds", "seeds", "mean", "std", "ci_low", "ci_high", "reference",
            "delta_of_means", "paired_n", "paired_delta_mean", "paired_delta_std", "paired_t",
            "paired_p_unadjusted", "paired_p_holm", "holm_family",
        ])  # fmt: skip
        for g in stress.groups:
            for metric in stress.metrics:
                if metric not in g.values:
                    continue
                e = g.estimate(metric)
                row: list[object] = [
                    g.key.dataset, g.key.model, g.key.name, g.key.label,
                    int(g.key in stress.reference_keys), metric,
                    int(metric in stress.headline), e.n,
                    ";".join(map(str, sorted(g.values[metric]))), e.mean, _opt(e.std),
                    _opt(e.ci_low), _opt(e.ci_high),
                ]  # fmt: skip
                test = g.paired(metric)
                if test is None:
                    row += [""] * 9
                else:
                    d, key = test.delta, (g.key, metric)
                    family = (
                        f"{stress_family(metric)} headline vs {g.reference.key.label} "
                        f"({stress.family_size[key]} tests)"
                        if key in stress.family_size
                        else "unadjusted (detail metric)"
                    )
                    row += [g.reference.key.label, g.delta_of_means(metric), d.n, _opt(d.mean),
                            _opt(d.std), _opt(test.t), _opt(test.pvalue),
                            _opt(stress.p_holm.get(key)), family]  # fmt: skip
                writer.writerow(row)
    return path


def stress_blocks(stress: StressSummary | None, figures: dict[str, list[str]]) -> list[Block]:
    """The report's "Stress" section (nothing when no stress was asked for)."""
    if stress is None:
        return []
    blocks: list[Block] = [
        Heading(2, "Stress"),
        Paragraph(
            f"Stresses: {', '.join(stress.names)}. Per-run numbers in each run's "
            "stress.json, all of them aggregated in stress.csv."
        ),
    ]
    if stress.notes:
        blocks.append(Bullets(stress.notes))
    if not stress.groups:
        blocks.append(Paragraph("No run has stress results."))
    blocks += stress_tables(stress)
    captions = {
        "stress_corruptions": "Accuracy against corruption severity (mean over types; "
        "mean ± std over seeds; clean = same images uncorrupted)",
        "stress_adversarial": "Robust accuracy against eps (FGSM / PGD, mean ± std over seeds)",
        "stress_faithfulness": "Cascading randomisation (Adebayo et al. 2018): rank correlation "
        "of the CAMs with the trained model's after each block is re-initialised, from the output "
        "down to the target layer (mean ± std over seeds); it should fall",
    }
    for section, caption in captions.items():
        blocks += [Image(f, caption) for f in figures.get(section, [])]
    blocks.append(Bullets(STRESS_NOTES))
    return blocks


# The background numbers the section has a sentence for (lower = less background reliance).
BACKGROUND_NUMBERS = {
    "background/surround_share": "the surround share (cue conflict)",
    "background/only_surround/acc": "the only-surround accuracy",
    "background/bg_gap": "the BG-gap (mixed-same minus mixed-rand accuracy)",
    "background/cam/outside_correct": "the CAM mass outside the centre (correct predictions)",
}


def background_sentence(
    group: StressGroup, metric: str, what: str, stress: StressSummary | None = None
) -> str | None:
    """``cutout lowers the surround share from 0.41 to 0.33 (paired t-test p = 0.02 unadjusted,
    Holm 0.08 over 8 background tests; 3 shared seeds)``."""
    test = group.paired(metric)
    if test is None or group.reference is None or metric not in group.values:
        return None
    before, after = group.reference.estimate(metric).mean, group.estimate(metric).mean
    verb = "lowers" if after < before else "raises" if after > before else "leaves"
    if test.pvalue is None:
        p = "no test possible (identical differences)" if test.identical else "n/a"
    else:
        p = f"{_p(test.pvalue)} unadjusted"
        key = (group.key, metric)
        if stress is not None and stress.p_holm.get(key) is not None:
            size = stress.family_size[key]
            p += f", Holm {_p(stress.p_holm[key])} over {size} background tests"
    return (
        f"{group.key.name} {verb} {what} from {before:.3f} to {after:.3f} "
        f"(paired t-test p = {p}; {test.delta.n} shared seed(s))"
    )


def background_blocks(stress: StressSummary | None, figures: dict[str, list[str]]) -> list[Block]:
    """The "Background reliance" section: what the background stress says, per group and
    against the reference (nothing when no run has background numbers)."""
    if stress is None:
        return []
    groups = [g for g in stress.groups if "background/surround_share" in g.values]
    if not groups:
        return []
    blocks: list[Block] = [
        Heading(2, "Background reliance"),
        Paragraph(
            "Does the model classify the object or its background? A centred square (the "
            "background stress's centre_size) is a proxy for the object and the rest for the "
            "background; CIFAR has no object masks, so read these numbers as that proxy. Chance "
            "is 1/classes. Numbers are mean ± std over seeds; the tests pair seeds."
        ),
    ]
    sentences = [
        sentence
        for g in groups
        for metric, what in BACKGROUND_NUMBERS.items()
        if (sentence := background_sentence(g, metric, what, stress))
    ]
    if sentences:
        blocks.append(Bullets(sentences))
    metrics = [m for m in stress.headline if m.startswith("background/")]
    headers = ["group", *(m.removeprefix("background/") for m in metrics)]
    rows = [
        [g.key.label, *(_mean_std(g.estimate(m), 1, 3) if m in g.values else NA for m in metrics)]
        for g in groups
    ]
    blocks.append(Table(headers, rows))
    # Per class: the reference's classes most predicted from their background.
    for group in groups:
        if group.reference is not None or group.key not in stress.reference_keys:
            continue
        classes = sorted(
            {m.split("/")[2] for m in group.values if m.startswith("background/class/")},
            key=lambda c: -group.estimate(f"background/class/{c}/surround_share").mean,
        )[:10]
        members = [g for g in groups if g.key.setting == group.key.setting]
        rows = [
            [c, *(_mean_std(g.estimate(f"background/class/{c}/surround_share"), 1, 2)
                  for g in members)]
            for c in classes
        ]  # fmt: skip
        blocks += [
            Paragraph(
                f"{'/'.join(group.key.setting)}: the classes most often predicted from their "
                f"background in the reference (surround share per class; all classes in "
                "stress.csv)."
            ),
            Table(["class", *(g.key.name for g in members)], rows),
        ]
    blocks += [
        Image(f, "Accuracy next to the background-reliance numbers (mean ± std over seeds)")
        for f in figures.get("background", [])
    ]
    return blocks


def _with_errors(count: int, errors: int | None) -> str:
    return str(count) if errors is None else f"{count} ({errors} label errors)"


def _transition_row(name: str, t: Transitions, crossed: CrossedTest | None = None) -> list[str]:
    counts = [name, _with_errors(t.corrected, t.corrected_label_errors),
              _with_errors(t.worsened, t.worsened_label_errors), str(t.both_wrong),
              str(t.both_right), str(t.total)]  # fmt: skip
    m = t.mcnemar
    if m is not None:
        statistic = f"{m.statistic:.0f}" if m.method == "exact" else f"{m.statistic:.3f}"
        return [*counts, f"McNemar {m.method}", statistic, _p(m.pvalue)]
    if crossed is None:
        return [*counts, NA, NA, NA]
    return [*counts, "seeds x images (crossed)", f"Δ {crossed.delta * 100:+.2f} pp",
            _p(crossed.pvalue)]  # fmt: skip


TRANSITION_HEADERS = [
    "seed", "corrected", "worsened", "both wrong", "both right", "images",
    "test", "statistic", "p (unadjusted)",
]  # fmt: skip


def write_transitions_csv(analysis: Analysis, path: Path) -> Path:
    """``transitions.csv``: one row per comparison and seed, plus a ``pooled`` row each."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["reference", "group", "seed", "corrected", "worsened", "both_wrong",
                         "both_right", "images", "test", "statistic", "p_unadjusted",
                         "corrected_label_errors", "worsened_label_errors"])  # fmt: skip
        for c in analysis.comparisons:
            tables = [*((str(s), t) for s, t in c.transitions.items())]
            if c.pooled is not None:
                tables.append(("pooled", c.pooled))
            for name, table in tables:
                m, crossed = table.mcnemar, c.crossed
                if m is not None:
                    test = [f"mcnemar-{m.method}", m.statistic, m.pvalue]
                elif crossed is not None:
                    test = ["crossed-seeds-x-images", crossed.delta, _opt(crossed.pvalue)]
                else:
                    test = ["", "", ""]
                errors = [_opt(table.corrected_label_errors), _opt(table.worsened_label_errors)]
                writer.writerow([
                    c.reference.key.label, c.other.key.label, name, table.corrected,
                    table.worsened, table.both_wrong, table.both_right, table.total, *test,
                    *errors,
                ])  # fmt: skip
    return path


def _per_class_lines(c: Comparison, k: int = 5) -> list[str]:
    names = class_names(c.reference.key.dataset)
    delta = np.nan_to_num(c.per_class_delta, nan=0.0)
    order = np.argsort(delta, kind="stable")
    gains = [i for i in order[::-1][:k] if delta[i] > 0]
    losses = [i for i in order[:k] if delta[i] < 0]

    def fmt(indices: list[int]) -> str:
        return ", ".join(f"{names[i]} {delta[i] * 100:+.1f} pp" for i in indices) or "none"

    return [f"per-class gains: {fmt(gains)}", f"per-class losses: {fmt(losses)}"]


METHOD_NOTES = [
    "Every number is computed from the runs' predictions.npz (test set), not copied from "
    "metrics.json; accuracy is top-1.",
    "Mean ± std: the mean over seeds and the sample standard deviation (ddof=1); 95% CI = mean "
    "± t(0.975, n-1) · std / √n. A group with one seed has no std or interval (n/a), not a zero.",
    "Δ acc: the mean over the seeds both groups have of the per-seed accuracy difference (group "
    "minus reference), ± its std, with the 95% t-interval; with fewer than two shared seeds "
    "only the difference of the group means is given, and no test.",
    "95% CI and p, seeds x test images (the verdict's test): seed s of both groups on the same "
    "N test images give per-image differences D[s, i] in {-1, 0, 1}, modelled as seed effect + "
    "test-image effect + their interaction (a two-way random-effects layout; Owen 2007, 'The "
    "pigeonhole bootstrap'). The interval generalises over new training runs and new test sets "
    "from the same distribution: SE² = (MS_seed + max(0, MS_image - MS_resid)) / (S·N) from the "
    "ANOVA mean squares counts each of the three variance components once (the image component "
    "truncated at 0, its REML estimate). mean(D)/SE is referred to its exact distribution under "
    "normality, Z/√(a·W + b) with W ~ χ²(S-1)/(S-1) (Welch's approach, by quadrature), where a "
    "and b split the variance between the seed part and the image part, the seed part taken at "
    f"its one-sided {SEED_VARIANCE_BOUND:.0%} upper confidence limit (never below MS_resid); "
    "with no image part this is exactly the paired t-test. Checked by simulation on planted "
    "data (bench/verdict_calibration.py, four regimes with and without seed and test-image "
    "effects): false-positive rate 3.7-6.5% from 3 seeds on, 2.4-8.8% with 2. With one shared "
    "seed, or per-seed differences that are all identical, there is no interval (no test "
    "possible). 'df' in summary.csv is the Student t with the same 97.5% quantile, for "
    "reading.",
    "Paired t-test p: scipy.stats.ttest_rel on the per-seed accuracies paired by seed (tests "
    "the mean of the per-seed differences against zero; seeds are the unit, the test images are "
    "fixed: it speaks about this test set only). 'No test possible (identical differences)' when "
    "the per-seed differences have no spread.",
    "Holm: in brackets, p-values Holm-adjusted within one family: the accuracy comparisons with "
    "the same reference (the crossed tests one family, the paired t-tests another), the "
    "clean-test-set comparisons with it (likewise), and for stresses and background the headline "
    "numbers of one stress against one reference. Every other p-value is marked unadjusted.",
    "Verdict: a clear gain (loss) when the crossed test's Holm-adjusted p is below 0.05 and the "
    "difference is positive (negative); otherwise unclear, or untested when no crossed test "
    "could run. The clean test set is judged on its own by the same rule and its own family: "
    "the call holds there, reverses, is not confirmed, or is clear only there.",
    "P(better on a seed): the share of shared seeds on which the group's accuracy is higher "
    "than the reference's (a tie counts half): the chance it wins on a random seed.",
    "Seeds: the crossed test's power at the observed difference with the current seeds "
    "(two-sided 5%, unadjusted, the estimated variance components taken as true), the smallest "
    "difference they detect with 80% power, and the seeds that would give 80% power at the "
    "observed difference on this test set (found by an upward search). More seeds never shrink "
    "the test-image part of the variance: when it alone keeps the power below 80%, no number "
    "of seeds suffices (a larger test set would). 'Suffice' only at 80% power or more.",
    "Transitions on the same test images: corrected = the reference wrong and the group right, "
    "worsened = the reference right and the group wrong.",
    f"McNemar's test on one seed's (corrected, worsened) (statsmodels, unadjusted): exact "
    f"two-sided binomial test when corrected + worsened < {MCNEMAR_EXACT_BELOW} (statistic = "
    "min of the two), else chi-square with continuity correction, 1 dof (statistic = "
    "(|b-c|-1)^2/(b+c)). The 'all seeds' row adds the tables up for reading only: its test is "
    "the crossed test above, never McNemar on the sum, whose image x seed pairs are not "
    "independent.",
    "HCE≥t: wrong predictions with top-1 confidence ≥ t, counted per run, mean over seeds. The "
    "thresholds include every one a run's failures callback recorded; the verdict's confident "
    "failures use the reference runs' recorded threshold.",
    "ECE: top-1 expected calibration error, 15 equal-width bins, L1 (torchmetrics).",
    "A group is the set of runs whose recorded configs (run.json) differ only in the seed; it "
    "is named after its improvement when its augmentation and loss are exactly that "
    "improvement's, else after the overrides that changed them. Groups of different datasets "
    "or models are never pooled or compared.",
    "Each group is compared with the reference group of its dataset and model; 'differs from "
    "ref in' lists every config key the two differ in. A comparison that also differs outside "
    "augmentation and loss (epochs, optimizer, data, ...) is an UNCONSTRAINED comparison: its "
    "difference is not the effect of one constrained improvement.",
]


def _pp(value: float) -> str:
    return f"{value * 100:+.2f}"


def _test_clause(judgement: Judgement, family: str) -> str:
    """``(95% CI +0.40 to +2.00 over seeds and test images; p = 0.004, Holm 0.008 over 2
    comparisons with this reference)``; ``family`` names one member of the Holm family."""
    test = judgement.test
    if test is None or not test.tested:
        return ""
    if judgement.family > 1:
        plural = family.replace("comparison", "comparisons", 1)
        holm = f"unadjusted, Holm {_p(judgement.p_holm)} over {judgement.family} {plural}"
    else:
        holm = f"unadjusted: the only {family}"
    return (
        f" (95% CI {_pp(test.ci_low)} to {_pp(test.ci_high)} over seeds and test images; "
        f"p = {_p(test.pvalue)}, {holm})"
    )


def _reason(reason: str) -> str:
    return IDENTICAL if reason.startswith("identical") else reason


def _call(judgement: Judgement) -> str:
    """``a clear gain`` / ``no clear difference (why)`` / ``untested (why)`` / ``no test
    possible (identical differences)``."""
    outcome = judgement.outcome
    if outcome.clear:
        return f"a {outcome.value}"
    if outcome is Outcome.UNTESTED:
        reason = _reason(judgement.reason)
        return reason if reason == IDENTICAL else f"untested ({reason})"
    return "no clear difference" + (f" ({judgement.reason})" if judgement.reason else "")


def _paired_clause(v: Verdict) -> str:
    paired = v.paired
    if paired.identical and v.overall.test is not None and v.overall.test.identical:
        return ""  # the call itself says it
    if paired.identical:
        return f"paired t-test over seeds: {IDENTICAL}"
    if paired.pvalue is None:
        return ""
    return (
        f"paired t-test over seeds (this test set only): p = {_p(paired.pvalue)} unadjusted, "
        f"Holm {_p(v.paired_p_holm)}"
    )


CLEAN_SENTENCES = {
    CleanOutcome.HOLDS: "so the {call} holds on the clean test set",
    CleanOutcome.REVERSES: "so it reverses on the clean test set: a {clean} there",
    CleanOutcome.NOT_CONFIRMED: "the clean test set does not confirm the {call} (no clear "
    "difference there)",
    CleanOutcome.CLEAN_ONLY: "clear only on the clean test set: a {clean} there",
    CleanOutcome.NEITHER: "no clear difference there either",
    CleanOutcome.UNTESTED: "untested there ({reason})",
}


def _clean_sentence(v: Verdict, errors: int) -> str:
    clean = v.clean
    if clean is None or clean.test is None:
        return ""
    test = clean.test
    text = f" Without the {errors} known label errors: {_pp(test.delta)} pp"
    text += _test_clause(clean, "clean-set comparison with this reference") + ", "
    reason = _reason(clean.reason or test.reason)
    return (
        text
        + CLEAN_SENTENCES[v.clean_outcome].format(
            call=v.overall.outcome.value, clean=clean.outcome.value, reason=reason
        )
        + "."
    )


def _seeds_sentence(v: Verdict) -> str:
    plan, n = v.plan, v.shared_seeds
    if v.seeds is SeedsOutcome.ONE_SEED:
        return " 1 shared seed: no test across training runs; run 3 or more for one."
    if v.seeds is SeedsOutcome.IDENTICAL:
        return (
            f" Seeds: {IDENTICAL}: the {n} seeds' differences are all the same, so their spread "
            "and the seeds needed are unknown."
        )
    if plan is None or plan.power is None:
        return ""
    power = f"power {plan.power:.2f} at this difference"
    if v.seeds is SeedsOutcome.SUFFICE:
        return f" The {n} seeds suffice ({power}, two-sided 5%)."
    if v.seeds is SeedsOutcome.NO_DIFFERENCE:
        return " The observed difference is 0: no number of seeds makes it significant."
    if v.seeds is SeedsOutcome.NO_NUMBER:
        return (
            f" The {n} seeds have {power}, and no number of seeds suffices on this test set: "
            f"its test-image variance alone caps the power at {plan.limit_power:.2f}."
        )
    if v.seeds is SeedsOutcome.NEED_MORE:
        return (
            f" The {n} seeds have {power}; about {plan.needed} seeds on this test set would give "
            f"{plan.target:.0%}."
        )
    return ""


def verdict(c: Comparison, analysis: Analysis) -> str:
    """One plain sentence on a comparison of ``analysis``, rendered from its :class:`Verdict`:
    the accuracy difference with its interval and test, the change in confident failures (at
    ``c.failure_threshold``, always one of the analysis thresholds), the clean test set, and
    whether the seeds suffice."""
    v = c.verdict
    name = f"{c.other.key.name} vs {c.reference.key.name} ({'/'.join(c.other.key.setting)})"
    if not c.constrained:
        name += (
            ", an UNCONSTRAINED comparison (also differs in "
            + ", ".join(c.unconstrained_keys[:3])
            + ")"
        )
    test = None if v is None else v.overall.test
    delta = test.delta if test is not None else c.delta_mean
    text = f"{name}: accuracy {_pp(delta)} pp"
    if v is None:
        return text + ": untested."
    clause = _test_clause(v.overall, "comparison with this reference")
    paired = _paired_clause(v)
    if clause and paired:
        clause = clause[:-1] + f"; {paired})"
    elif paired:
        clause = f" ({paired})"
    text += clause + ": " + _call(v.overall)
    column = analysis.thresholds.index(c.failure_threshold)
    ref_hce = c.reference.high_conf[:, column].mean()
    other_hce = c.other.high_conf[:, column].mean()
    change = f" ({(other_hce - ref_hce) / ref_hce * 100:+.0f}%)" if ref_hce > 0 else ""
    source = "" if c.failure_threshold_recorded else "; the runs recorded no threshold"
    text += (
        f". Confident failures (≥ {c.failure_threshold:g}{source}): {ref_hce:.1f} -> "
        f"{other_hce:.1f} per run{change}."
    )
    errors = c.reference.runs[0].is_label_error
    if errors is not None:
        text += _clean_sentence(v, int(errors.sum()))
    return text + _seeds_sentence(v)


def label_error_blocks(analysis: Analysis) -> list[Block]:
    """The report's "Known label errors" section (nothing when no group has official test
    indices of CIFAR-10/100)."""
    groups = [g for g in analysis.groups if g.has_label_errors]
    if not groups:
        return []
    threshold, recorded = analysis.failure_threshold
    column = analysis.thresholds.index(threshold)
    rows = []
    for g in groups:
        total = g.high_conf[:, column].astype(float)
        errors = g.high_conf_label_errors[:, column].astype(float)
        rows.append([
            g.key.label, str(int(g.runs[0].is_label_error.sum())),
            _mean_std(g.accuracy, 100), _mean_std(g.clean_accuracy, 100),
            _mean_std(g.corrected_accuracy, 100),
            f"{total.mean():.1f}", f"{(total - errors).mean():.1f}", f"{errors.mean():.1f}",
        ])  # fmt: skip
    source = "the runs' recorded threshold" if recorded else "no threshold recorded"
    blocks: list[Block] = [
        Heading(2, "Known label errors"),
        Paragraph(
            "Human-verified label errors of the test set (Northcutt, Athalye & Mueller, NeurIPS "
            "2021: fewer than 3 of 5 workers agreed with the given label). A confident failure "
            "on such an image is often the model being right. Clean accuracy leaves them out; "
            "corrected accuracy uses the workers' class where 3 or more agreed and leaves the "
            "rest out. Numbers are mean ± std over seeds (%)."
        ),
        Table(
            [
                "group",
                "label errors in the test images",
                "test acc %",
                "clean acc %",
                "corrected acc %",
                f"confident failures ≥{threshold:g} ({source})",
                "of which model errors",
                "of which label errors",
            ],
            rows,
        ),
    ]
    compared = [c for c in analysis.comparisons if c.crossed_clean is not None]
    if compared:
        rows = [
            [
                f"{c.other.key.label} vs {c.reference.key.name}",
                _interval(c.crossed),
                _interval(c.crossed_clean),
                _p_holm(c.crossed_clean.pvalue, c.clean_p_holm),
                NA if c.paired_clean is None else _paired_p(c.paired_clean, c.paired_clean_p_holm),
                NA if c.verdict is None or c.verdict.clean_outcome is None
                else c.verdict.clean_outcome.value,
            ]
            for c in compared
        ]  # fmt: skip
        blocks.append(
            Table(
                [
                    "group vs reference",
                    "Δ acc (pp), all test images [95% CI, seeds x images]",
                    "Δ acc (pp), clean test set [95% CI, seeds x images]",
                    "p clean, unadjusted (Holm over the clean-set comparisons)",
                    "paired t-test p clean, unadjusted (Holm)",
                    "verdict on the clean set",
                ],
                rows,
            )
        )
    return blocks


def verdict_blocks(analysis: Analysis) -> list[Block]:
    """The report's first section: one sentence per comparison."""
    if not analysis.comparisons:
        return [Heading(2, "Verdict"), Paragraph("No group to compare with a reference.")]
    sentences = [verdict(c, analysis) for c in analysis.comparisons]
    return [
        Heading(2, "Verdict"),
        Bullets(sentences),
        Paragraph(
            "A gain or loss is called clear when the 95% interval over seeds and test images "
            "excludes 0 after Holm adjustment over the comparisons with the same reference "
            "(its p < 0.05). The interval generalises over new training runs and new test sets "
            "from the same distribution; the paired t-test beside it speaks about this test "
            "set only. See 'How the numbers are computed' at the end."
        ),
    ]


def build_blocks(
    analysis: Analysis,
    figures: dict[str, list[str]],
    sources: Sequence[str],
    gradcam_notes: Sequence[str] = (),
    stress: StressSummary | None = None,
) -> list[Block]:
    """The report's content (a "Stress" section when ``stress`` is given). ``figures`` maps a
    section name (``transitions``, ``confidence``, ``high_conf_errors``, ``per_class_delta``,
    ``reliability``, ``gradcam``, ``stress_corruptions``, ``stress_adversarial``) to PNG names."""
    blocks: list[Block] = [
        Heading(1, "cnnstress analysis"),
        Paragraph(
            f"Generated {datetime.now().isoformat(timespec='seconds')} from "
            f"{'; '.join(sources)}. Reference: {analysis.reference}. "
            f"{sum(len(g.runs) for g in analysis.groups)} runs in {len(analysis.groups)} "
            f"groups, {len(analysis.skipped)} skipped."
        ),
    ]
    blocks += verdict_blocks(analysis)
    notes = [*analysis.notes, *(n for c in analysis.comparisons for n in
                                (f"{c.other.key.label}: {x}" for x in c.notes))]  # fmt: skip
    if notes:
        blocks += [Heading(2, "Warnings"), Bullets(notes)]
    blocks += [Heading(2, "Summary"), summary_table(analysis)]
    if analysis.comparisons:
        blocks += [Heading(2, "Comparisons against the reference"), comparison_table(analysis)]
    blocks += label_error_blocks(analysis)

    blocks.append(Heading(2, "Transitions against the reference"))
    if not analysis.comparisons:
        blocks.append(Paragraph("No group to compare with a reference."))
    for c in analysis.comparisons:
        kind = "" if c.constrained else " (unconstrained comparison)"
        blocks.append(Heading(3, f"{c.other.key.label} vs {c.reference.key.label}{kind}"))
        blocks.append(Paragraph(f"Differs from the reference in: {differs_in(c)}."))
        rows = [_transition_row(str(s), t) for s, t in c.transitions.items()]
        if c.pooled is not None:
            rows.append(_transition_row("all seeds", c.pooled, c.crossed))
        blocks.append(Table(TRANSITION_HEADERS, rows) if rows else Paragraph("No shared seed."))
        blocks.append(Bullets(_per_class_lines(c)))
    blocks += [Image(f, "Transitions per seed and pooled") for f in figures.get("transitions", [])]

    blocks += [Heading(2, "High-confidence errors")]
    blocks.append(
        Table(
            ["group", *(f"≥{_threshold(t)}" for t in analysis.thresholds)],
            [
                [g.key.label, *(_mean_std(g.high_conf_estimate(i), 1, 1)
                                for i in range(len(analysis.thresholds)))]
                for g in analysis.groups
            ],
        )
    )  # fmt: skip
    captions = {
        "high_conf_errors": "High-confidence error count against threshold (mean ± std)",
        "confidence": "Confidence of correct and wrong predictions, all seeds",
        "reliability": "Reliability diagrams, all seeds pooled per group",
        "per_class_delta": "Per-class accuracy change against the reference",
    }
    for section, title in [
        ("high_conf_errors", None),
        ("confidence", "Confidence"),
        ("reliability", "Calibration"),
        ("per_class_delta", "Per-class accuracy change"),
    ]:
        if title:
            blocks.append(Heading(2, title))
        blocks += [Image(f, captions[section]) for f in figures.get(section, [])]

    blocks += stress_blocks(stress, figures)
    blocks += background_blocks(stress, figures)

    blocks.append(Heading(2, "Grad-CAM: the reference's most confident failures"))
    if gradcam_notes:
        blocks.append(Bullets(list(gradcam_notes)))
    blocks += [
        Image(f, "Each model's CAM for its own prediction (green: right, red: wrong)")
        for f in figures.get("gradcam", [])
    ]

    blocks += [Heading(2, "Runs"), _runs_table(analysis.groups)]
    if analysis.skipped:
        blocks += [
            Heading(2, "Skipped run directories"),
            Table(["path", "reason"], [[str(s.path), s.reason] for s in analysis.skipped]),
        ]
    blocks += [Heading(2, "How the numbers are computed"), Bullets(METHOD_NOTES)]
    return [*blocks[:2], Heading(2, "Contents"), table_of_contents(blocks), *blocks[2:]]


def _runs_table(groups: Sequence[GroupResult]) -> Table:
    rows = [
        [g.key.label, str(r.seed), _num(g.accuracy_by_seed[r.seed], 100),
         _num(g.ece_by_seed[r.seed], 1, 4), str(r.path)]
        for g in groups
        for r in g.runs
    ]  # fmt: skip
    return Table(["group", "seed", "test acc %", "ECE", "path"], rows)


@dataclass
class ReportFiles:
    """Paths of the written files."""

    summary_md: Path
    summary_csv: Path
    transitions_csv: Path
    report_md: Path
    report_html: Path
    figures: dict[str, list[str]] = field(default_factory=dict)
    stress_csv: Path | None = None


def write_report(
    analysis: Analysis,
    out_dir: str | Path,
    figures: dict[str, list[str]],
    sources: Sequence[str],
    gradcam_notes: Sequence[str] = (),
    stress: StressSummary | None = None,
) -> ReportFiles:
    """Write every text file of the analysis into ``out_dir`` (figures must already be there);
    with ``stress`` also ``stress.csv`` and a "Stress" section in summary.md and the report."""
    out = Path(out_dir)
    summary = [
        Heading(1, "cnnstress summary"),
        Paragraph(f"Reference: {analysis.reference}. Sources: {'; '.join(sources)}."),
        *verdict_blocks(analysis),
        Heading(2, "Groups"),
        summary_table(analysis),
    ]
    if analysis.comparisons:
        summary += [Heading(2, "Comparisons against the reference"), comparison_table(analysis)]
    summary += label_error_blocks(analysis)
    if analysis.skipped:
        summary += [
            Heading(2, "Skipped run directories"),
            Table(["path", "reason"], [[str(s.path), s.reason] for s in analysis.skipped]),
        ]
    if analysis.notes:
        summary += [Heading(2, "Warnings"), Bullets(analysis.notes)]
    if stress is not None:
        summary += [Heading(2, "Stress"), *stress_tables(stress), Bullets(STRESS_NOTES)]
        summary += background_blocks(stress, {})
    summary += [Heading(2, "How the numbers are computed"), Bullets(METHOD_NOTES)]
    (out / "summary.md").write_text(to_markdown(summary))
    blocks = build_blocks(analysis, figures, sources, gradcam_notes, stress)
    (out / "report.md").write_text(to_markdown(blocks))
    (out / "report.html").write_text(to_html(blocks, out, "cnnstress analysis"))
    return ReportFiles(
        summary_md=out / "summary.md",
        summary_csv=write_summary_csv(analysis, out / "summary.csv"),
        transitions_csv=write_transitions_csv(analysis, out / "transitions.csv"),
        report_md=out / "report.md",
        stress_csv=None if stress is None else write_stress_csv(stress, out / "stress.csv"),
        report_html=out / "report.html",
        figures=figures,
    )
