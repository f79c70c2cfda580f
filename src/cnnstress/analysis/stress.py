"""Stress results in the analysis: run the stresses on every run, aggregate them over seeds.

``analyze.py stress=[corruptions,adversarial,...]`` calls :func:`cnnstress.stress.run_stress`
on each finished run (results land in the run's ``stress.json``), then
:func:`summarise_stress` aggregates the per-run numbers per group (mean ± std over seeds) and
against the reference group (difference of means, paired over shared seeds; the paired p-values
Holm-adjusted per metric family: the headline numbers of one stress against one reference), and
adds mCE relative to the reference (:func:`cnnstress.stress.mce`).

The stresses are always recomputed: reusing a ``stress.json`` would need its knobs recorded
and compared, and a tiny-to-moderate stress costs seconds per run; the run's ``stress.json``
still keeps the results of stresses not asked for this time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnstress.analysis.compare import Analysis, GroupResult
from cnnstress.analysis.runs import GroupKey
from cnnstress.analysis.statistics import Estimate, PairedTest, estimate, holm
from cnnstress.analysis.statistics import paired_test as paired
from cnnstress.core.console import Progress
from cnnstress.core.errors import UserError
from cnnstress.stress import corruption_accuracies, corruption_errors, mce, run_stress
from cnnstress.stress.corruptions import BENCHMARK_TYPES
from cnnstress.stress.runner import STRESSES

log = logging.getLogger(__name__)

# Shown in report.md / report.html / summary.md (stress.csv has these and the details).
HEADLINE = (
    r"corruptions/(clean_acc|mean_acc|benchmark_types|extra_mean_acc|mce|relative_mce)",
    r"shift/[^/]+/(acc|drop)",
    r"adversarial/clean_acc",
    r"adversarial/[^/]+/[^/]+/acc",
    r"calibration/(temperature|ece_before|ece_after|nll_before|nll_after)",
    r"faithfulness/road/[^/]+",
    r"faithfulness/randomization_spearman",
    r"background/(chance|only_centre/acc|only_surround/acc|surround_share|mixed_same/acc"
    r"|mixed_rand/acc|bg_gap|cam/outside_correct|cam/outside_confident_failures)",
)
DETAIL = (
    r"corruptions/[^/]+/mean_acc",
    r"corruptions/[^/]+/\d+/acc",
    r"corruptions/[^/]+/(ce|relative_ce)",
    r"faithfulness/cascade/\d+/[^/]+/spearman",
    r"background/conflict/[^/]+",
    r"background/clean_acc",
    r"background/class/[^/]+/(only_surround|surround_share|cam_outside)",
)
_HEADLINE = [re.compile(p) for p in HEADLINE]
_DETAIL = [re.compile(p) for p in DETAIL]


def is_headline(metric: str) -> bool:
    """Whether ``metric`` (a ``stress.json`` key) is one of the report's headline numbers."""
    return any(p.fullmatch(metric) for p in _HEADLINE)


def _kept(metric: str) -> bool:
    return is_headline(metric) or any(p.fullmatch(metric) for p in _DETAIL)


def run_stresses(
    settings: Mapping[str, Any], analysis: Analysis, device: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Run the stresses of ``settings`` (name -> settings object) on every analysed run; return
    (run path -> stress.json, notes).

    A run that cannot be stressed (no readable checkpoint, moved dataset, a stress that does
    not apply to it) is noted and left out; the other runs go on.
    """
    names = list(settings)
    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    progress = Progress(f"stress {'+'.join(names)}: run", len(analysis.runs), log)
    for group in analysis.groups:
        for run in group.runs:
            try:
                results[str(run.path)] = run_stress(run.path, names, settings, device)
            except UserError as err:
                notes.append(f"{run.path}: no stress results: {err}")
                log.warning("no stress results for %s: %s", run.path, err)
            progress.step(f"{group.key.label} seed {run.seed}")
    return results, notes


@dataclass
class StressGroup:
    """One group's stress numbers: metric -> seed -> value, and their estimates."""

    key: GroupKey
    values: dict[str, dict[int, float]]
    reference: StressGroup | None = None

    @property
    def seeds(self) -> list[int]:
        """Seeds with any stress number, sorted."""
        return sorted({s for by_seed in self.values.values() for s in by_seed})

    def estimate(self, metric: str) -> Estimate:
        """Mean ± std over the group's seeds (std ``None`` with one seed)."""
        return estimate(list(self.values.get(metric, {}).values()))

    def paired(self, metric: str) -> PairedTest | None:
        """Difference to the reference (other - reference) paired over shared seeds."""
        if self.reference is None or metric not in self.reference.values:
            return None
        return paired(self.reference.values[metric], self.values.get(metric, {}))

    def delta_of_means(self, metric: str) -> float | None:
        """Mean of this group minus mean of the reference (``None`` without a reference)."""
        if self.reference is None or metric not in self.reference.values:
            return None
        return self.estimate(metric).mean - self.reference.estimate(metric).mean


@dataclass
class StressSummary:
    """Stress numbers of every group that has any, in the order of ``Analysis.groups``."""

    names: list[str]
    groups: list[StressGroup]
    reference_keys: set[GroupKey]
    metrics: list[str]
    notes: list[str] = field(default_factory=list)
    # (group key, metric) -> the paired p Holm-adjusted within its family (see holm_families)
    p_holm: dict[tuple[GroupKey, str], float | None] = field(default_factory=dict)
    family_size: dict[tuple[GroupKey, str], int] = field(default_factory=dict)

    @property
    def headline(self) -> list[str]:
        """The metrics shown in the report tables."""
        return [m for m in self.metrics if is_headline(m)]

    def group(self, key: GroupKey) -> StressGroup | None:
        """The stress numbers of group ``key``."""
        return next((g for g in self.groups if g.key == key), None)


def family(metric: str) -> str:
    """The Holm family of a headline metric: its stress (``corruptions``, ``background``...)."""
    return metric.split("/", 1)[0]


def holm_families(
    groups: Sequence[StressGroup],
) -> tuple[dict[tuple[GroupKey, str], float | None], dict[tuple[GroupKey, str], int]]:
    """Holm-adjust the paired p-values of the headline metrics per family: one stress's
    headline numbers of every group against one reference. Detail metrics (stress.csv only)
    stay unadjusted. Returns (p_holm, family size) keyed by (group key, metric)."""
    members: dict[tuple[GroupKey, str], list[tuple[GroupKey, str, float | None]]] = {}
    for g in groups:
        if g.reference is None:
            continue
        for metric in g.values:
            test = g.paired(metric)
            if is_headline(metric) and test is not None:
                key = (g.reference.key, family(metric))
                members.setdefault(key, []).append((g.key, metric, test.pvalue))
    adjusted: dict[tuple[GroupKey, str], float | None] = {}
    sizes: dict[tuple[GroupKey, str], int] = {}
    for tests in members.values():
        size = sum(p is not None for *_, p in tests)
        for (key, metric, _), value in zip(tests, holm([p for *_, p in tests]), strict=True):
            adjusted[(key, metric)], sizes[(key, metric)] = value, size
    return adjusted, sizes


def _mean_errors(
    tables: Sequence[Mapping[str, Mapping[int, float]]],
) -> dict[str, dict[int, float]]:
    """Per type and severity, the mean error over the tables that have it."""
    out: dict[str, dict[int, float]] = {}
    for name in {t for table in tables for t in table}:
        severities = {s for table in tables for s in table.get(name, {})}
        out[name] = {
            s: float(np.mean([t[name][s] for t in tables if s in t.get(name, {})]))
            for s in sorted(severities)
        }
    return out


def _per_seed(group: GroupResult, results: Mapping[str, Mapping[str, Any]]) -> dict[int, dict]:
    return {r.seed: dict(results[str(r.path)]) for r in group.runs if str(r.path) in results}


def benchmark_coverage(per_seed: Mapping[int, Mapping[str, Any]]) -> set[frozenset[str]]:
    """The sets of (benchmark type, severity) pairs the runs' corruption numbers cover."""
    return {
        frozenset(
            (t, s)
            for t, row in corruption_accuracies(v).items()
            if t in BENCHMARK_TYPES
            for s in row
        )
        for v in per_seed.values()
        if corruption_accuracies(v)
    }


def _add_mce(per_seed: dict[int, dict], reference: dict[int, dict]) -> str | None:
    """Add ``corruptions/mce`` (and relative mCE, per-type CE) to every run's numbers.

    The baseline errors are the reference group's mean errors over its seeds, so the
    reference's mean mCE is exactly 1 and groups with different seeds still compare. mCE is
    only computed when every run of both groups covers the same benchmark types and
    severities; otherwise nothing is added and the reason is returned.
    """
    ref = [v for v in reference.values() if corruption_accuracies(v)]
    if not ref or not any(corruption_accuracies(v) for v in per_seed.values()):
        return None
    coverage = benchmark_coverage(per_seed) | benchmark_coverage(reference)
    if len(coverage) > 1:
        return "the runs cover different corruption types or severities: no mCE"
    if not next(iter(coverage)):
        return "no benchmark corruption type evaluated: no mCE"
    base = _mean_errors([corruption_errors(v) for v in ref])
    clean = [v["corruptions/clean_acc"] for v in ref if v.get("corruptions/clean_acc") is not None]
    base_clean = 1.0 - float(np.mean(clean)) if len(clean) == len(ref) else None
    for values in per_seed.values():
        errors = corruption_errors(values)
        if not errors:
            continue
        run_clean = values.get("corruptions/clean_acc")
        values.update(
            mce(
                errors,
                base,
                None if run_clean is None or base_clean is None else 1.0 - run_clean,
                None if run_clean is None else base_clean,
            )
        )
    return None


def summarise_stress(
    analysis: Analysis, results: Mapping[str, Mapping[str, Any]], names: Sequence[str]
) -> StressSummary:
    """Aggregate per-run ``stress.json`` contents (run path -> dict) per group and reference."""
    per_group = {g.key: _per_seed(g, results) for g in analysis.groups}
    # Every group's reference: its comparison's; a reference group is its own.
    ref_of = {c.other.key: c.reference.key for c in analysis.comparisons}
    ref_of |= {k: k for k in analysis.reference_keys}
    notes = []
    for key, per_seed in per_group.items():
        if key in ref_of and (reason := _add_mce(per_seed, per_group[ref_of[key]])):
            notes.append(f"{key.label} vs {ref_of[key].name}: {reason}")
    metrics: dict[str, None] = {}
    groups: dict[GroupKey, StressGroup] = {}
    for g in analysis.groups:
        values: dict[str, dict[int, float]] = {}
        for seed, numbers in per_group[g.key].items():
            for metric, value in numbers.items():
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if number and _kept(metric):
                    values.setdefault(metric, {})[seed] = float(value)
                    metrics[metric] = None
        if values:
            groups[g.key] = StressGroup(g.key, values)
    for key, group in groups.items():
        ref_key = ref_of.get(key)
        if ref_key is not None and ref_key != key:
            group.reference = groups.get(ref_key)
    order = {name: i for i, name in enumerate(STRESSES)}
    ordered = sorted(metrics, key=lambda m: (order.get(m.split("/", 1)[0], 99),))
    p_holm, sizes = holm_families(list(groups.values()))
    return StressSummary(
        names=list(names),
        groups=list(groups.values()),
        reference_keys=set(analysis.reference_keys),
        metrics=ordered,
        notes=notes,
        p_holm=p_holm,
        family_size=sizes,
    )
