"""One table of per-seed numbers: group x metric x seed -> value.

Every number the analysis estimates over seeds or compares with a reference (test accuracy,
ECE, clean and corrected accuracy, confident failures at each threshold, every stress
measurement) is a cell here, so one estimate and one paired test serve all of them and a new
metric needs no new field.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cnnstress.analysis.runs import GroupKey
from cnnstress.analysis.statistics import Estimate, PairedTest, estimate, paired_test


@dataclass(frozen=True)
class Metric:
    """What a per-seed number is.

    Attributes:
        source: where it comes from: ``test`` (the run's predictions), ``label_errors`` (the
            predictions against the known label errors), or a stress name.
        name: the quantity (``acc``, ``ece``, ``confident_failures``, ``mean_acc``...).
        where: the conditions it was measured under, ``(("severity", 3), ...)``.
        headline: shown in the report's tables (the rest is in the CSV files); not part of
            the metric's identity.
    """

    source: str
    name: str
    where: tuple[tuple[str, Any], ...] = ()
    headline: bool = field(default=True, compare=False)

    def at(self, key: str, default: Any = None) -> Any:
        """The value of condition ``key`` (``default`` when it has none)."""
        return dict(self.where).get(key, default)


ACCURACY = Metric("test", "acc")
ECE = Metric("test", "ece")
CLEAN_ACCURACY = Metric("label_errors", "clean_acc")
CORRECTED_ACCURACY = Metric("label_errors", "corrected_acc")


def confident_failures(threshold: float) -> Metric:
    """Test images misclassified with top-1 probability >= ``threshold`` (a count)."""
    return Metric("test", "confident_failures", (("threshold", float(threshold)),))


def confident_label_errors(threshold: float) -> Metric:
    """Of :func:`confident_failures`, the images whose label is a known label error."""
    return Metric("label_errors", "confident_failures", (("threshold", float(threshold)),))


class SeedTable:
    """group x metric x seed -> value, with the estimate over seeds and the paired test against
    another group read from it."""

    def __init__(self) -> None:
        self._cells: dict[GroupKey, dict[Metric, dict[int, float]]] = {}

    def add(self, group: GroupKey, metric: Metric, seed: int, value: float) -> None:
        """Record one seed's value (a second value for the same cell replaces the first)."""
        self._cells.setdefault(group, {}).setdefault(metric, {})[int(seed)] = float(value)

    def by_seed(self, group: GroupKey, metric: Metric) -> dict[int, float]:
        """seed -> value of ``metric`` in ``group`` (empty when it has none)."""
        return dict(sorted(self._cells.get(group, {}).get(metric, {}).items()))

    def has(self, group: GroupKey, metric: Metric) -> bool:
        """Whether ``group`` has any value of ``metric``."""
        return bool(self._cells.get(group, {}).get(metric))

    def metrics(self, group: GroupKey | None = None, source: str | None = None) -> list[Metric]:
        """The metrics of ``group`` (of every group when ``None``), from ``source`` only when
        given, in the order they were first added."""
        groups = [self._cells.get(group, {})] if group is not None else self._cells.values()
        found: dict[Metric, Metric] = {}
        for cells in groups:
            for metric in cells:
                if source is None or metric.source == source:
                    found.setdefault(metric, metric)
        return list(found.values())

    def groups(self, metric: Metric) -> list[GroupKey]:
        """The groups with a value of ``metric``."""
        return [g for g, cells in self._cells.items() if cells.get(metric)]

    def estimate(self, group: GroupKey, metric: Metric) -> Estimate:
        """Mean, std and t-interval over the group's seeds."""
        return estimate(list(self.by_seed(group, metric).values()))

    def paired(self, reference: GroupKey, other: GroupKey, metric: Metric) -> PairedTest | None:
        """``other - reference`` paired over the seeds both have; ``None`` when either group
        has no value of ``metric``."""
        if not (self.has(reference, metric) and self.has(other, metric)):
            return None
        return paired_test(self.by_seed(reference, metric), self.by_seed(other, metric))

    def delta_of_means(self, reference: GroupKey, other: GroupKey, metric: Metric) -> float | None:
        """Mean of ``other`` minus mean of ``reference`` over all their seeds."""
        if not (self.has(reference, metric) and self.has(other, metric)):
            return None
        return self.estimate(other, metric).mean - self.estimate(reference, metric).mean

    def cells(self) -> Iterator[tuple[GroupKey, Metric, int, float]]:
        """Every ``(group, metric, seed, value)``."""
        for group, cells in self._cells.items():
            for metric, by_seed in cells.items():
                for seed, value in sorted(by_seed.items()):
                    yield group, metric, seed, value
