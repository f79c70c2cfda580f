"""Reading a stress's measurements in tests: ``value(result, "acc", image="mixed_same")``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cnnstress.stress.results import Measurement, StoredStress, StressResult


def rows(result: StressResult | StoredStress | Iterable[Measurement]) -> list[Measurement]:
    """The measurements of a result, a stored entry, or the rows themselves."""
    if isinstance(result, StressResult | StoredStress):
        return list(result.measurements)
    return list(result)


def row(result: Any, metric: str, **where: Any) -> Measurement:
    """The one measurement ``metric`` at exactly ``where`` (fails the test when there is not
    exactly one)."""
    wanted = tuple(sorted(where.items()))
    found = [m for m in rows(result) if m.metric == metric and m.where == wanted]
    assert len(found) == 1, f"{len(found)} rows of {metric} at {where}"
    return found[0]


def value(result: Any, metric: str, **where: Any) -> float | None:
    """The value of :func:`row`."""
    return row(result, metric, **where).value


def has(result: Any, metric: str, **where: Any) -> bool:
    """Whether ``result`` has a measurement ``metric`` at exactly ``where``."""
    wanted = tuple(sorted(where.items()))
    return any(m.metric == metric and m.where == wanted for m in rows(result))
