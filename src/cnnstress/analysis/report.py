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

from cnnstress.analysis.compare import (
    BOOTSTRAP_RESAMPLES,
    MCNEMAR_EXACT_BELOW,
    Analysis,
    BootstrapTest,
    Comparison,
    Estimate,
    GroupResult,
    Transitions,
)
from cnnstress.analysis.stress import StressGroup, StressSummary
from cnnstress.data import class_names
from cnnstress.identity import describe

NA = "n/a"


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
    "bootstrap 95% CI (pp, images x seeds)", "paired t-test p (Holm)", "bootstrap p (Holm)",
    "P(better on a seed)", "seeds: detectable Δ (pp) / needed", "differs from ref in",
]  # fmt: skip


def _seeds_cell(c: Comparison) -> str:
    power = c.power
    if power is None or power.detectable is None:
        return f"n/a ({c.paired.delta.n} seed(s), no spread)"
    needed = "n/a (Δ = 0)" if power.needed is None else str(power.needed)
    return f"{power.seeds} seeds detect ±{power.detectable * 100:.2f}; Δ needs {needed}"


def comparison_row(c: Comparison) -> list[str]:
    """The comparison table's row of ``c`` (see :data:`COMPARISON_HEADERS`)."""
    paired, boot = c.paired, c.bootstrap
    if paired.delta.n >= 2:
        delta = f"{_mean_std(paired.delta, 100)} {_ci(paired.delta, 100)}"
        t_test = f"{_p(paired.pvalue)} ({_p(c.paired_p_holm)})"
    else:
        delta = f"{_num(c.delta_mean, 100)} (difference of means)"
        t_test = f"{NA} ({paired.delta.n} shared seed(s))"
    if boot is None:
        boot_ci = boot_p = NA
    else:
        boot_ci = f"{boot.delta * 100:+.2f} [{boot.ci_low * 100:+.2f}, {boot.ci_high * 100:+.2f}]"
        boot_p = f"{_p(boot.pvalue)} ({_p(c.bootstrap_p_holm)})"
    better = NA if c.share_better is None else f"{c.share_better:.2f} (of {paired.delta.n})"
    return [
        f"{c.other.key.label} vs {c.reference.key.name}", delta, boot_ci, t_test, boot_p,
        better, _seeds_cell(c), differs_in(c),
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
    comparison_columns = [
        "reference", "delta_acc_of_means", "paired_n", "paired_delta_mean", "paired_delta_std",
        "paired_delta_ci_low", "paired_delta_ci_high", "paired_t", "paired_p", "paired_p_holm",
        "bootstrap_delta", "bootstrap_ci_low", "bootstrap_ci_high", "bootstrap_p",
        "bootstrap_p_holm", "p_better", "seed_spread", "detectable_delta", "seeds_needed",
        "pooled_corrected", "pooled_worsened", "pooled_both_wrong", "pooled_both_right",
        "constrained", "differs_in", "clean_delta", "clean_ci_low", "clean_ci_high",
        "clean_bootstrap_p", "clean_paired_p",
    ]  # fmt: skip
    header += comparison_columns
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
            c = analysis.comparison_for(g.key)
            if c is None:
                row += [""] * len(comparison_columns)
            else:
                d, boot, power, pooled = c.paired.delta, c.bootstrap, c.power, c.pooled
                row += [
                    c.reference.key.label, c.delta_mean, d.n, _opt(d.mean), _opt(d.std),
                    _opt(d.ci_low), _opt(d.ci_high), _opt(c.paired.t), _opt(c.paired.pvalue),
                    _opt(c.paired_p_holm),
                ]  # fmt: skip
                row += (
                    ["", "", "", "", ""]
                    if boot is None
                    else [boot.delta, boot.ci_low, boot.ci_high, boot.pvalue,
                          _opt(c.bootstrap_p_holm)]
                )  # fmt: skip
                row.append(_opt(c.share_better))
                row += (
                    ["", "", ""]
                    if power is None
                    else [_opt(power.spread), _opt(power.detectable), _opt(power.needed)]
                )
                row += (
                    ["", "", "", ""]
                    if pooled is None
                    else [pooled.corrected, pooled.worsened, pooled.both_wrong, pooled.both_right]
                )
                row += [int(c.constrained), describe(c.differences, limit=50)]
                clean = c.bootstrap_clean
                row += (
                    ["", "", "", ""]
                    if clean is None
                    else [clean.delta, clean.ci_low, clean.ci_high, clean.pvalue]
                )
                row.append("" if c.paired_clean is None else _opt(c.paired_clean.pvalue))
            writer.writerow(row)
    return path


STRESS_NOTES = [
    "Each run's checkpoint is evaluated by cnnstress.stress.run_stress (results in the run's "
    "stress.json, recomputed on every analysis); numbers are fractions (accuracy 0.91 = 91%), "
    "mean ± std (ddof=1) over seeds, n/a for one seed.",
    "Δ vs ref: difference of the group means (other - reference); paired p: paired t-test over "
    "the seeds both groups have (n/a with fewer than two or no spread).",
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
        headers += [f"Δ {g.key.name} vs ref (paired p)" for g in others]
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
                p = NA if test is None else _p(test.pvalue)
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
            "paired_p",
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
                    row += [""] * 7
                else:
                    d = test.delta
                    row += [g.reference.key.label, g.delta_of_means(metric), d.n, _opt(d.mean),
                            _opt(d.std), _opt(test.t), _opt(test.pvalue)]  # fmt: skip
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


def background_sentence(group: StressGroup, metric: str, what: str) -> str | None:
    """``cutout lowers the surround share from 0.41 to 0.33 (paired t-test p = 0.02; 3 seeds)``."""
    test = group.paired(metric)
    if test is None or group.reference is None or metric not in group.values:
        return None
    before, after = group.reference.estimate(metric).mean, group.estimate(metric).mean
    verb = "lowers" if after < before else "raises" if after > before else "leaves"
    p = "n/a" if test.pvalue is None else _p(test.pvalue)
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
        if (sentence := background_sentence(g, metric, what))
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


def _transition_row(name: str, t: Transitions, boot: BootstrapTest | None = None) -> list[str]:
    counts = [name, _with_errors(t.corrected, t.corrected_label_errors),
              _with_errors(t.worsened, t.worsened_label_errors), str(t.both_wrong),
              str(t.both_right), str(t.total)]  # fmt: skip
    m = t.mcnemar
    if m is not None:
        statistic = f"{m.statistic:.0f}" if m.method == "exact" else f"{m.statistic:.3f}"
        return [*counts, f"McNemar {m.method}", statistic, _p(m.pvalue)]
    if boot is None:
        return [*counts, NA, NA, NA]
    return [*counts, "bootstrap (images x seeds)", f"Δ {boot.delta * 100:+.2f} pp", _p(boot.pvalue)]


TRANSITION_HEADERS = [
    "seed", "corrected", "worsened", "both wrong", "both right", "images",
    "test", "statistic", "p",
]  # fmt: skip


def write_transitions_csv(analysis: Analysis, path: Path) -> Path:
    """``transitions.csv``: one row per comparison and seed, plus a ``pooled`` row each."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["reference", "group", *(h.replace(" ", "_") for h in TRANSITION_HEADERS),
                         "corrected_label_errors", "worsened_label_errors"])  # fmt: skip
        for c in analysis.comparisons:
            tables = [*((str(s), t) for s, t in c.transitions.items())]
            if c.pooled is not None:
                tables.append(("pooled", c.pooled))
            for name, table in tables:
                m, boot = table.mcnemar, c.bootstrap
                if m is not None:
                    test = [f"mcnemar-{m.method}", m.statistic, m.pvalue]
                elif boot is not None:
                    test = ["bootstrap-images-x-seeds", boot.delta, boot.pvalue]
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
    "Paired t-test p: scipy.stats.ttest_rel on the per-seed accuracies paired by seed (tests "
    "the mean of the per-seed differences against zero; seeds are the unit, images are not).",
    f"Bootstrap 95% CI and p: {BOOTSTRAP_RESAMPLES} resamples that draw the seeds and the test "
    "images with replacement, the same images for every seed, so an image's correlation across "
    "seeds is kept; CI = 2.5th-97.5th percentile of the resampled mean difference, p = 2 · the "
    "smaller share of resamples on either side of zero. With few seeds the seed part of the "
    "interval is itself uncertain.",
    "Holm: the p-values in brackets are Holm-adjusted over all the comparisons against the same "
    "reference (several improvements against one baseline are several tests).",
    "P(better on a seed): the share of shared seeds on which the group's accuracy is higher "
    "than the reference's (a tie counts half): the chance it wins on a random seed.",
    "Seeds: from the seed-to-seed spread (std) of the paired differences, the smallest accuracy "
    "difference the current seeds detect with 80% power at two-sided alpha 0.05 (paired "
    "t-test, statsmodels TTestPower), and the seeds needed to detect the observed difference "
    "that way; both rest on the spread estimated from these few seeds.",
    "Transitions on the same test images: corrected = the reference wrong and the group right, "
    "worsened = the reference right and the group wrong.",
    f"McNemar's test on one seed's (corrected, worsened): exact two-sided binomial test when "
    f"corrected + worsened < {MCNEMAR_EXACT_BELOW} (statistic = min of the two), else "
    "chi-square with continuity correction, 1 dof (statistic = (|b-c|-1)^2/(b+c)). The 'all "
    "seeds' row adds the tables up for reading only: its test is the bootstrap above, never "
    "McNemar on the sum, whose image x seed pairs are not independent.",
    "HCE≥t: wrong predictions with top-1 confidence ≥ t, counted per run, mean over seeds.",
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


VERDICT_THRESHOLD = 0.8  # the failures callback's default confidence


def _hce_column(analysis: Analysis) -> int:
    """The threshold column closest to :data:`VERDICT_THRESHOLD`."""
    return int(np.argmin([abs(t - VERDICT_THRESHOLD) for t in analysis.thresholds]))


def verdict(c: Comparison, hce: int, threshold: float) -> str:
    """One plain sentence on a comparison: the accuracy difference with its interval and test,
    the change in confident failures, and whether the seeds suffice."""
    name = f"{c.other.key.name} vs {c.reference.key.name} ({'/'.join(c.other.key.setting)})"
    if not c.constrained:
        name += (
            ", an UNCONSTRAINED comparison (also differs in "
            + ", ".join(c.unconstrained_keys[:3])
            + ")"
        )
    boot, paired, n = c.bootstrap, c.paired, c.paired.delta.n
    delta = (boot.delta if boot is not None else c.delta_mean) * 100
    text = f"{name}: accuracy {delta:+.2f} pp"
    if boot is not None:
        text += f" (bootstrap 95% CI {boot.ci_low * 100:+.2f} to {boot.ci_high * 100:+.2f}"
        if paired.pvalue is not None:
            text += f"; paired t-test p = {_p(paired.pvalue)}, Holm {_p(c.paired_p_holm)}"
        text += ")"
    sure = boot is not None and (boot.ci_low > 0 or boot.ci_high < 0)
    significant = c.paired_p_holm is not None and c.paired_p_holm < 0.05
    if sure and significant:
        text += ": a clear " + ("gain" if delta > 0 else "loss")
    elif sure:
        text += ": the interval excludes 0 but the seeds' test does not confirm it"
    else:
        text += ": no clear difference"
    ref_hce = c.reference.high_conf[:, hce].mean()
    other_hce = c.other.high_conf[:, hce].mean()
    change = f" ({(other_hce - ref_hce) / ref_hce * 100:+.0f}%)" if ref_hce > 0 else ""
    text += (
        f". Confident failures (≥ {threshold:g}): {ref_hce:.1f} -> {other_hce:.1f} per run{change}."
    )
    clean = c.bootstrap_clean
    if clean is not None:
        holds = (clean.ci_low > 0) if delta > 0 else (clean.ci_high < 0)
        errors = int(c.reference.runs[0].is_label_error.sum())
        text += (
            f" Without the {errors} known label errors: {clean.delta * 100:+.2f} pp "
            f"(CI {clean.ci_low * 100:+.2f} to {clean.ci_high * 100:+.2f}), "
            + ("so the difference holds on the clean test set." if sure and holds
               else "the clean test set does not confirm a difference." if sure
               else "no clear difference there either.")
        )  # fmt: skip
    power = c.power
    if n < 2 or power is None or power.detectable is None:
        text += f" {n} shared seed(s): no seed-to-seed spread, so no test; run 3 or more."
    elif power.needed is None or power.needed <= n:
        text += (
            f" The {n} seeds detect differences of ±{power.detectable * 100:.2f} pp and suffice "
            "for this one."
        )
    else:
        text += (
            f" The {n} seeds detect only ±{power.detectable * 100:.2f} pp; this difference needs "
            f"about {power.needed} seeds for a conclusive answer."
        )
    return text


def label_error_blocks(analysis: Analysis) -> list[Block]:
    """The report's "Known label errors" section (nothing when no group has official test
    indices of CIFAR-10/100)."""
    groups = [g for g in analysis.groups if g.has_label_errors]
    if not groups:
        return []
    column = _hce_column(analysis)
    threshold = analysis.thresholds[column]
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
                f"confident failures ≥{threshold:g}",
                "of which model errors",
                "of which label errors",
            ],
            rows,
        ),
    ]
    compared = [c for c in analysis.comparisons if c.bootstrap_clean is not None]
    if compared:
        rows = []
        for c in compared:
            all_, clean = c.bootstrap, c.bootstrap_clean
            p = NA if c.paired_clean is None else _p(c.paired_clean.pvalue)
            rows.append([
                f"{c.other.key.label} vs {c.reference.key.name}",
                f"{all_.delta * 100:+.2f} [{all_.ci_low * 100:+.2f}, {all_.ci_high * 100:+.2f}]",
                f"{clean.delta * 100:+.2f} [{clean.ci_low * 100:+.2f}, {clean.ci_high * 100:+.2f}]",
                p,
            ])  # fmt: skip
        blocks.append(
            Table(
                [
                    "group vs reference",
                    "Δ acc (pp), all test images [bootstrap 95% CI]",
                    "Δ acc (pp), clean test set [bootstrap 95% CI]",
                    "paired t-test p (clean)",
                ],
                rows,
            )
        )
    return blocks


def verdict_blocks(analysis: Analysis) -> list[Block]:
    """The report's first section: one sentence per comparison."""
    if not analysis.comparisons:
        return [Heading(2, "Verdict"), Paragraph("No group to compare with a reference.")]
    column = _hce_column(analysis)
    sentences = [verdict(c, column, analysis.thresholds[column]) for c in analysis.comparisons]
    return [
        Heading(2, "Verdict"),
        Bullets(sentences),
        Paragraph(
            "A gain or loss is called clear when the bootstrap interval (images and seeds "
            "resampled) excludes 0 and the Holm-adjusted paired t-test gives p < 0.05; see "
            "'How the numbers are computed' at the end."
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
            rows.append(_transition_row("all seeds", c.pooled, c.bootstrap))
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
