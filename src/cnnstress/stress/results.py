"""What a stress measures, and how a run keeps it: ``stress.json`` (format 2).

A stress returns a :class:`StressResult`: rows of :class:`Measurement` (a metric, its value and
where it was measured, as fields: ``acc`` at ``corruption=fog, severity=3``), descriptive
``info`` (source, method, images used) and the arrays its per-run figure is drawn from. The run
keeps one :class:`StoredStress` per stress: the rows plus who computed them, when, where and with
which settings, so that the analysis can reuse them and say where each number came from.

``stress.json`` is shared between people like the rest of a run directory: :func:`read_stored`
checks every field and raises :class:`~cnnstress.core.errors.DataError` for anything else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnstress.core.errors import DataError
from cnnstress.core.run_dir import RunDir, write_json

log = logging.getLogger(__name__)

#: The version of stress.json this module writes and reads.
FORMAT = 2

Scalar = str | int | float | bool | None
Coordinate = str | int | float


@dataclass(frozen=True)
class Measurement:
    """One number a stress measured.

    Attributes:
        metric: what was measured (``acc``, ``ece_after``, ``spearman``...).
        value: the number; ``None`` where it is undefined (no image to average over).
        where: the coordinates it was measured at, as sorted ``(name, value)`` pairs
            (``(("corruption", "fog"), ("severity", 3))``); empty for a stress's overall
            numbers. Build it with :func:`measure`.
        headline: one of the stress's headline numbers (the report's tables); every
            measurement is in ``stress.csv``.
    """

    metric: str
    value: float | None
    where: tuple[tuple[str, Coordinate], ...] = ()
    headline: bool = False

    def at(self, name: str) -> Coordinate | None:
        """The coordinate ``name`` of this measurement (``None`` when it has none)."""
        return dict(self.where).get(name)

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "where": dict(self.where),
                "headline": self.headline}  # fmt: skip


def measure(metric: str, value: Any, headline: bool = False, **where: Coordinate) -> Measurement:
    """A :class:`Measurement`; ``value`` may be a numpy or torch scalar, NaN becomes ``None``;
    coordinates are strings or numbers (numpy and torch scalars become Python numbers).

    Raises:
        TypeError: a coordinate that :func:`read_stored` would refuse (a bool, a list...).
    """
    coordinates = {name: _coordinate(name, v) for name, v in where.items()}
    return Measurement(metric, _number(value), tuple(sorted(coordinates.items())), headline)


#: Coordinates the analysis and the figures compute with: their types (any other coordinate is
#: a string or a number).
COORDINATE_TYPES: dict[str, tuple[type, ...]] = {
    "severity": (int,), "step": (int,), "eps": (int, float),
}  # fmt: skip


def _coordinate(name: str, value: Any) -> Coordinate:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy and torch scalars
        value = value.item()
    allowed = COORDINATE_TYPES.get(name, (str, int, float))
    if isinstance(value, bool) or not isinstance(value, allowed):
        kinds = " or ".join(t.__name__ for t in allowed)
        raise TypeError(f"coordinate {name}={value!r} must be {kinds}")
    return value


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "item"):  # numpy and torch scalars
        value = value.item()
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class StressResult:
    """What a stress computes on one run.

    Attributes:
        measurements: its numbers.
        info: descriptive values (``source``, ``method``, ``num_images``...): strings, counts.
        arrays: what its per-run figure is drawn from (not kept in ``stress.json``).
    """

    measurements: list[Measurement]
    info: dict[str, Scalar] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredStress:
    """One stress's entry of a run's ``stress.json``.

    Attributes:
        name: the stress (``corruptions``, ``background``...).
        settings: the settings it ran with, as plain JSON values (:func:`settings_record`).
        computed_by: ``train.py`` (at the end of training) or ``analyze.py``.
        time: when, ISO 8601 to the second.
        device: ``cpu`` or ``cuda``.
        checkpoint: the checkpoint it evaluated, relative to the run directory.
        info: the :attr:`StressResult.info`.
        measurements: the :attr:`StressResult.measurements`.
    """

    name: str
    settings: dict[str, Any]
    computed_by: str
    time: str
    device: str
    checkpoint: str
    info: dict[str, Scalar]
    measurements: tuple[Measurement, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings, "computed_by": self.computed_by, "time": self.time,
            "device": self.device, "checkpoint": self.checkpoint, "info": self.info,
            "measurements": [m.to_json() for m in self.measurements],
        }  # fmt: skip


def settings_record(settings: Any) -> dict[str, Any]:
    """A settings dataclass as the plain JSON values ``stress.json`` keeps (tuples as lists), so
    that settings read back compare equal to the settings asked for."""
    return json.loads(json.dumps(dataclasses.asdict(settings), default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not a JSON value: {value!r}")


def read_stored(run_dir: str | Path) -> dict[str, StoredStress]:
    """The stresses kept in a run's ``stress.json`` (empty when it has none).

    Raises:
        DataError: the file is not a format-2 ``stress.json`` (unreadable, malformed, or written
            by an earlier cnnstress, whose numbers are recomputed by ``stress=[...]``).
    """
    path = RunDir(run_dir).stress
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise DataError(f"{path}: not readable as JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a stress.json of format {FORMAT} (an earlier cnnstress "
                        "wrote it; stress=[...] recomputes it)")  # fmt: skip
    stresses = data.get("stresses")
    if not isinstance(stresses, dict):
        raise DataError(f"{path}: 'stresses' must be a mapping")
    try:
        return {name: _stored(name, entry) for name, entry in stresses.items()}
    except (TypeError, ValueError, KeyError) as err:
        raise DataError(f"{path}: malformed entry: {err}") from None


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _stored(name: Any, entry: Any) -> StoredStress:
    _check(
        isinstance(name, str) and isinstance(entry, dict), "a stress must map a name to a mapping"
    )
    for key in ("computed_by", "time", "device", "checkpoint"):
        _check(isinstance(entry.get(key), str), f"{name}.{key} must be a string")
    _check(isinstance(entry.get("settings"), dict), f"{name}.settings must be a mapping")
    info = entry.get("info")
    _check(isinstance(info, dict) and all(isinstance(k, str) and _is_scalar(v)
                                          for k, v in info.items()),
           f"{name}.info must map names to numbers or strings")  # fmt: skip
    rows = entry.get("measurements")
    _check(isinstance(rows, list), f"{name}.measurements must be a list")
    return StoredStress(name, entry["settings"], entry["computed_by"], entry["time"],
                        entry["device"], entry["checkpoint"], dict(info),
                        tuple(_measurement(name, row) for row in rows))  # fmt: skip


def _measurement(name: str, row: Any) -> Measurement:
    _check(isinstance(row, dict), f"{name}: a measurement must be a mapping")
    metric, value, where = row.get("metric"), row.get("value"), row.get("where", {})
    _check(isinstance(metric, str), f"{name}: a measurement's metric must be a string")
    _check(value is None or (isinstance(value, int | float) and not isinstance(value, bool)),
           f"{name}/{metric}: value must be a number or null")  # fmt: skip
    _check(isinstance(where, dict) and all(isinstance(k, str) for k in where),
           f"{name}/{metric}: where must map names to strings or numbers")  # fmt: skip
    for key, coordinate in where.items():
        _coordinate(key, coordinate)  # TypeError: a malformed entry
    _check(
        isinstance(row.get("headline", False), bool), f"{name}/{metric}: headline must be a boolean"
    )
    return Measurement(metric, _number(value), tuple(sorted(where.items())),
                       row.get("headline", False))  # fmt: skip


def write_stored(
    run_dir: str | Path, entries: Mapping[str, StoredStress]
) -> dict[str, StoredStress]:
    """Keep ``entries`` in the run's ``stress.json`` atomically, replacing those stresses' earlier
    entries and keeping the others (an unreadable or earlier-format file is replaced whole).
    Returns every stress now in the file."""
    try:
        kept = read_stored(run_dir)
    except DataError as err:  # said, not silent: the earlier numbers are lost
        log.warning("replacing the whole stress.json: %s", err)
        kept = {}
    kept.update(entries)
    data = {"format": FORMAT, "stresses": {name: kept[name].to_json() for name in sorted(kept)}}
    write_json(RunDir(run_dir).stress, data)
    return kept
