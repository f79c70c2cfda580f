"""Stress results in the analysis: the numbers each run keeps in its ``stress.json``, per group
over seeds and against the reference.

A run's ``stress.json`` keeps one entry per stress (:class:`~cnnstress.stress.results.StoredStress`)
with the settings it was computed with, by whom, when and on which device. Within one dataset and
model, each stress is analysed under one settings record: the one most runs have. Runs whose
entry has other settings are left out of that stress with a note, never pooled. Computing the
missing entries (``analyze.py stress=[...]``) is the application's job
(:func:`cnnstress.app.analyze.stress_numbers`); this module only reads and aggregates.

Every measurement becomes a :class:`~cnnstress.analysis.seed_table.Metric` of the analysis'
seed table (source = the stress), so stress numbers are estimated and compared with the reference
exactly like accuracy; the paired p-values of one stress's headline numbers against one
reference are one Holm family. mCE (Hendrycks & Dietterich 2019) is added here, relative to the
reference group, from the ``acc`` rows of the corruption suite.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnstress.analysis.compare import Analysis
from cnnstress.analysis.runs import GroupKey, Run
from cnnstress.analysis.seed_table import Metric, SeedTable
from cnnstress.analysis.statistics import holm
from cnnstress.core.errors import DataError
from cnnstress.core.identity import describe, differences
from cnnstress.stress.corruption_suite import corruption_errors, mce
from cnnstress.stress.corruptions import BENCHMARK_TYPES
from cnnstress.stress.results import Measurement, StoredStress, read_stored
from cnnstress.stress.runner import STRESSES

log = logging.getLogger(__name__)

#: run directory -> stress name -> its stored entry.
Stored = dict[Path, dict[str, StoredStress]]


def read_stress(runs: Sequence[Run]) -> tuple[Stored, list[str]]:
    """The stress entries each run keeps; a ``stress.json`` that cannot be read is noted and
    its run has none."""
    stored: Stored = {}
    notes = []
    for run in runs:
        try:
            stored[run.path] = read_stored(run.path)
        except DataError as err:
            notes.append(f"{run.path}: stress results not used: {err}")
            log.warning("stress results of %s not used: %s", run.path, err)
            stored[run.path] = {}
    return stored, notes


@dataclass(frozen=True)
class Provenance:
    """Where one stress's numbers of one dataset and model came from."""

    stress: str
    dataset_model: tuple[str, str]
    settings: dict
    runs: int
    computed_by: dict[str, int]  # train.py / analyze.py -> runs
    devices: tuple[str, ...]
    first: str
    last: str


@dataclass
class StressSummary:
    """The stresses the analysis shows.

    Their per-seed numbers are in ``Analysis.table`` (source = the stress name).

    Attributes:
        names: the stresses with numbers, in :data:`~cnnstress.stress.runner.STRESSES` order.
        metrics: every stress metric, stress by stress.
        reference_of: each compared group -> its reference group.
        p_holm, family_size: the paired p of a headline metric of a group against its
            reference, Holm-adjusted within the stress's headline metrics of every group
            against that reference, and the size of that family.
    """

    names: list[str]
    metrics: list[Metric]
    provenance: list[Provenance]
    reference_of: dict[GroupKey, GroupKey]
    reference_keys: set[GroupKey]
    notes: list[str] = field(default_factory=list)
    p_holm: dict[tuple[GroupKey, Metric], float | None] = field(default_factory=dict)
    family_size: dict[tuple[GroupKey, Metric], int] = field(default_factory=dict)

    @property
    def headline(self) -> list[Metric]:
        """The metrics shown in the report tables."""
        return [m for m in self.metrics if m.headline]


def _settings_id(settings: Mapping) -> str:
    return json.dumps(settings, sort_keys=True)


def _chosen_entries(
    name: str, pair: tuple[str, str], runs: Sequence[Run], stored: Stored
) -> tuple[dict[Path, StoredStress], Provenance | None, str | None]:
    """The entries of stress ``name`` computed with the settings most of ``runs`` have (the
    most recent on a tie), their provenance, and a note on the runs left out."""
    entries = {r.path: e for r in runs if (e := stored.get(r.path, {}).get(name)) is not None}
    if not entries:
        return {}, None, None
    counts = Counter(_settings_id(e.settings) for e in entries.values())
    latest = {sid: max(e.time for e in entries.values() if _settings_id(e.settings) == sid)
              for sid in counts}  # fmt: skip
    chosen = max(counts, key=lambda sid: (counts[sid], latest[sid]))
    kept = {p: e for p, e in entries.items() if _settings_id(e.settings) == chosen}
    note = None
    if len(kept) < len(entries):
        other = next(e for e in entries.values() if _settings_id(e.settings) != chosen)
        first = next(iter(kept.values()))
        changed = describe(differences(first.settings, other.settings), limit=4)
        note = (
            f"{name} ({'/'.join(pair)}): {len(entries) - len(kept)} of {len(entries)} runs "
            f"computed it with other settings ({changed}) and are left out of it; "
            f"stress=[{name}] recomputes them with the same settings"
        )
    first = next(iter(kept.values()))
    times = sorted(e.time for e in kept.values())
    provenance = Provenance(
        stress=name,
        dataset_model=pair,
        settings=first.settings,
        runs=len(kept),
        computed_by=dict(Counter(e.computed_by for e in kept.values())),
        devices=tuple(sorted({e.device for e in kept.values()})),
        first=times[0],
        last=times[-1],
    )
    return kept, provenance, note


def _corruption_errors(
    table: SeedTable, key: GroupKey, seed: int
) -> tuple[dict[str, dict[int, float]], float | None]:
    """``{benchmark type: {severity: error}}`` and the clean error of one seed of ``key``."""
    rows = [Measurement(m.name, table.by_seed(key, m).get(seed), m.where)
            for m in table.metrics(key, "corruptions")]  # fmt: skip
    errors = {t: row for t, row in corruption_errors(rows).items() if t in BENCHMARK_TYPES}
    clean = table.by_seed(key, Metric("corruptions", "clean_acc")).get(seed)
    return errors, None if clean is None else 1.0 - clean


def _coverage(errors: Mapping[str, Mapping[int, float]]) -> frozenset[tuple[str, int]]:
    return frozenset((t, s) for t, row in errors.items() for s in row)


def add_mce(table: SeedTable, key: GroupKey, reference: GroupKey) -> str | None:
    """Add mCE, relative mCE and per-type CE of every seed of ``key`` to ``table``, relative to
    ``reference``'s errors averaged over its seeds (so the reference's mean mCE is exactly 1 and
    groups with different seeds still compare). Only when every run of both groups covers the
    same benchmark types and severities; otherwise nothing is added and the reason returned."""
    seeds = {k: table.by_seed(k, Metric("corruptions", "clean_acc")) for k in (key, reference)}
    runs = {(k, s): _corruption_errors(table, k, s) for k in (key, reference) for s in seeds[k]}
    if not any(errors for errors, _ in runs.values()):
        return None
    coverage = {_coverage(errors) for errors, _ in runs.values()}
    if len(coverage) > 1:
        return "the runs cover different corruption types or severities: no mCE"
    if not next(iter(coverage)):
        return "no benchmark corruption type evaluated: no mCE"
    reference_runs = [runs[(reference, s)] for s in seeds[reference]]
    base = {t: {s: float(np.mean([e[t][s] for e, _ in reference_runs])) for s in row}
            for t, row in reference_runs[0][0].items()}  # fmt: skip
    clean = [c for _, c in reference_runs]
    base_clean = None if None in clean else float(np.mean(clean))
    for seed in seeds[key]:
        errors, clean_error = runs[(key, seed)]
        for m in mce(errors, base, clean_error, None if clean_error is None else base_clean):
            if m.value is not None:
                table.add(key, Metric("corruptions", m.metric, m.where, m.headline), seed, m.value)
    return None


def _holm(
    table: SeedTable, reference_of: Mapping[GroupKey, GroupKey], metrics: Sequence[Metric]
) -> tuple[dict[tuple[GroupKey, Metric], float | None], dict[tuple[GroupKey, Metric], int]]:
    """Holm-adjust the paired p of the headline metrics, one family per stress and reference."""
    families: dict[tuple[GroupKey, str], list[tuple[GroupKey, Metric, float | None]]] = {}
    for key, ref in reference_of.items():
        for metric in metrics:
            test = table.paired(ref, key, metric) if metric.headline else None
            if test is not None:
                families.setdefault((ref, metric.source), []).append((key, metric, test.pvalue))
    adjusted: dict[tuple[GroupKey, Metric], float | None] = {}
    sizes: dict[tuple[GroupKey, Metric], int] = {}
    for tests in families.values():
        size = sum(p is not None for *_, p in tests)
        for (key, metric, _), value in zip(tests, holm([p for *_, p in tests]), strict=True):
            adjusted[(key, metric)], sizes[(key, metric)] = value, size
    return adjusted, sizes


def summarise_stress(
    analysis: Analysis, stored: Stored, names: Sequence[str] | None = None
) -> StressSummary | None:
    """Add the stress numbers of ``stored`` (only the stresses ``names``, else all) to
    ``analysis.table``; ``None`` when no run has any."""
    table = analysis.table
    wanted = [n for n in STRESSES if names is None or n in names]
    provenance, notes = [], []
    found: list[str] = []
    for pair in analysis.dataset_models:
        groups = [g for g in analysis.groups if g.key.dataset_model == pair]
        runs = [r for g in groups for r in g.runs]
        group_of = {r.path: g.key for g in groups for r in g.runs}
        seed_of = {r.path: r.seed for r in runs}
        for name in wanted:
            kept, origin, note = _chosen_entries(name, pair, runs, stored)
            notes += [note] if note else []
            if origin is None:
                continue
            provenance.append(origin)
            found += [] if name in found else [name]
            for path, entry in kept.items():
                for m in entry.measurements:
                    if m.value is not None:
                        metric = Metric(name, m.metric, m.where, m.headline)
                        table.add(group_of[path], metric, seed_of[path], m.value)
    reference_of = {c.other.key: c.reference.key for c in analysis.comparisons}
    if "corruptions" in found:
        for key, ref in [*reference_of.items(), *((k, k) for k in analysis.reference_keys)]:
            if reason := add_mce(table, key, ref):
                notes.append(f"{key.label} vs {ref.name}: {reason}")
    if not found:
        return None
    metrics = [m for name in found for m in table.metrics(source=name)]
    p_holm, sizes = _holm(table, reference_of, metrics)
    return StressSummary(
        names=[n for n in STRESSES if n in found],
        metrics=metrics,
        provenance=provenance,
        reference_of=reference_of,
        reference_keys=set(analysis.reference_keys),
        notes=notes,
        p_holm=p_holm,
        family_size=sizes,
    )
