"""A run directory: every path a run writes, and reading and writing its files.

Contract (the analysis relies on it)::

    .hydra/               Hydra's record of the composed config (rewritten before a job starts)
    train.log             the run's log
    run.json              what the run was (:class:`RunRecord`), written just before metrics.json
    metrics.json          flat {"group/name": number}; only a finished run has it
    predictions.npz       index, target, probs (N x C softmax), official_index
    stress.json           stress results (format 2: measurements, settings, provenance)
    stress_<name>.png     stress figures
    checkpoints/          last.ckpt (every epoch), best.ckpt (selected on validation)
    tensorboard/          event files
    failures/             failures.json, val_failures.json, failures_grid.png
    gradcam/              epoch_XXX.png, test.png
    confusion_matrix.json, confusion_matrix.png, reliability.json, reliability.png
    failure_modes.json, failure_modes.png   the test errors grouped into modes

Run directories are shared between people, so everything read here is untrusted input:
:func:`read_record` refuses a record that is not plain data (an OmegaConf interpolation would
run the reader's resolvers, e.g. ``${oc.env:SECRET}``), and nothing read is ever executed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnstress import __version__
from cnnstress.core.errors import DataError
from cnnstress.core.identity import fingerprint, run_identity


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created by constructing one)."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def record(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.npz"

    @property
    def stress(self) -> Path:
        return self.path / "stress.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def failures(self) -> Path:
        return self.path / "failures"

    @property
    def gradcam(self) -> Path:
        return self.path / "gradcam"

    @property
    def failure_modes(self) -> Path:
        """``failure_modes.json`` (:mod:`cnnstress.core.failure_modes`)."""
        return self.path / "failure_modes.json"

    @property
    def failure_modes_figure(self) -> Path:
        """``failure_modes.png``: a row of the most typical images per mode."""
        return self.path / "failure_modes.png"

    @property
    def hydra(self) -> Path:
        return self.path / ".hydra"

    def stress_figure(self, name: str) -> Path:
        """``stress_<name>.png``."""
        return self.path / f"stress_{name}.png"

    def stress_figures(self) -> list[Path]:
        """The stress figures present, sorted."""
        return sorted(self.path.glob("stress_*.png"))

    def file(self, name: str) -> Path:
        """A file at the top of the run directory (``confusion_matrix.json``, ...)."""
        return self.path / name

    @property
    def finished(self) -> bool:
        """Whether the run finished (it has ``metrics.json``)."""
        return self.metrics.is_file()

    def outputs(self) -> list[Path]:
        """Every file or folder a run writes that exists now (not ``.hydra/`` and the log, which
        Hydra writes for the attempt under way)."""
        fixed = [
            self.metrics, self.record, self.predictions, self.stress, self.checkpoints,
            self.tensorboard, self.failures, self.gradcam, self.failure_modes,
            self.failure_modes_figure,
            *(self.file(f"{name}.{ext}") for name in ("confusion_matrix", "reliability")
              for ext in ("json", "png")),
        ]  # fmt: skip
        return [p for p in fixed if p.exists()] + self.stress_figures()

    def remove_outputs(self, keep: Path | None = None) -> list[Path]:
        """Delete :meth:`outputs` (a folder holding ``keep`` keeps ``keep`` and loses the rest);
        return what was deleted."""
        removed = []
        keep = keep.resolve() if keep is not None else None
        for path in self.outputs():
            if keep is not None and path.is_dir() and keep.is_relative_to(path.resolve()):
                for inner in path.iterdir():
                    if inner.resolve() != keep:
                        _delete(inner)
                        removed.append(inner)
                continue
            _delete(path)
            removed.append(path)
        return removed


def _delete(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


# -- writing ----------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any, sort_keys: bool = False) -> Path:
    """Write ``data`` as indented JSON atomically, creating the parent directory."""
    path = Path(path)
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys)))
    return path


def write_metrics(run_dir: str | Path, metrics: Mapping[str, float]) -> Path:
    """Write ``metrics.json`` atomically (sorted keys, finite numbers or null)."""
    clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
    return write_json(RunDir(run_dir).metrics, clean, sort_keys=True)


def write_predictions(
    run_dir: str | Path,
    index: np.ndarray,
    target: np.ndarray,
    probs: np.ndarray,
    official_index: bool = False,
) -> Path:
    """Write ``predictions.npz`` atomically: ``index`` ``(N,)``, ``target`` ``(N,)``, ``probs``
    ``(N, C)`` and ``official_index`` (whether ``index`` is the official test index)."""
    path = RunDir(run_dir).predictions

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(
                f,
                index=index.astype(np.int64),
                target=target.astype(np.int64),
                probs=probs.astype(np.float32),
                official_index=np.array(bool(official_index)),
            )

    _atomic_write(path, write)
    return path


def write_record(
    run_dir: str | Path,
    config: Mapping[str, Any],
    overrides: Sequence[str] = (),
    improvement_changed_by: Sequence[str] = (),
    checkpoint: str | Path | None = None,
) -> Path:
    """Write ``run.json`` atomically: the resolved ``config`` (plain containers), its
    fingerprint, the command-line ``overrides``, the overrides that changed the improvement's
    augmentation or loss, and ``checkpoint``: the weights the test used, relative to the run
    directory (``None``: an evaluation of a checkpoint elsewhere)."""
    run = RunDir(run_dir)
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        inside = checkpoint.resolve().is_relative_to(run.path.resolve())
        checkpoint = checkpoint.resolve().relative_to(run.path.resolve()) if inside else None
    record = {
        "fingerprint": fingerprint(run_identity(config)),
        "config": dict(config),
        "overrides": list(overrides),
        "improvement": {
            "name": config.get("improvement"),
            "changed_by": list(improvement_changed_by),
        },
        "checkpoint": None if checkpoint is None else checkpoint.as_posix(),
        "cnnstress_version": __version__,
    }
    return write_json(run.record, record)


# -- reading (untrusted) ----------------------------------------------------------------------
def read_json(path: Path) -> Any:
    """Parse a JSON file, or :class:`DataError` saying why not."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no {path.name}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise DataError(f"{path.name} is unreadable ({type(err).__name__}: {err})") from None


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``metrics.json`` (a mapping), or :class:`DataError`."""
    metrics = read_json(RunDir(run_dir).metrics)
    if not isinstance(metrics, dict):
        raise DataError("metrics.json is not a mapping")
    return metrics


def read_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    """A run's ``predictions.npz`` as arrays (``index``, ``target``, ``probs`` and
    ``official_index``, a 0-d bool array: False for files written before it existed), or
    :class:`DataError`. Never unpickles (``allow_pickle=False``)."""
    try:
        with np.load(RunDir(run_dir).predictions, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise DataError("no predictions.npz") from None
    except Exception as err:  # truncated zip, object arrays, not an npz at all, ...
        raise DataError(f"predictions.npz is unreadable ({type(err).__name__}: {err})") from None
    for key in ("index", "target", "probs"):
        if key not in arrays:
            raise DataError(f"predictions.npz has no {key} array")
    arrays.setdefault("official_index", np.array(False))
    return arrays


def _interpolations(node: Any, where: str = "") -> Iterator[str]:
    """Dotted keys of ``node`` whose strings hold an OmegaConf interpolation or ``???``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _interpolations(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _interpolations(value, f"{where}[{i}]")
    elif isinstance(node, str) and ("${" in node or node == "???"):
        yield where


@dataclass(frozen=True)
class RunRecord:
    """What a finished run was: its ``run.json``, checked to be plain data.

    Attributes:
        config: the resolved config it ran with (plain containers, no interpolation).
        fingerprint: the hash of its identity (:mod:`cnnstress.core.identity`) as recorded.
        overrides: its command-line overrides.
        improvement: the improvement label it ran under (``None`` if unrecorded).
        changed_by: the overrides that changed that improvement's augmentation or loss.
        checkpoint: the weights its test used, relative to the run directory (``None``: not
            recorded, or outside the run directory).
    """

    config: dict[str, Any]
    fingerprint: str
    overrides: tuple[str, ...]
    improvement: str | None
    changed_by: tuple[str, ...]
    checkpoint: str | None

    @property
    def confidence_threshold(self) -> float:
        """The run's confidence threshold (:func:`run_threshold`)."""
        return run_threshold(self.config)


#: The confidence threshold of a run recorded before ``confidence_threshold`` existed.
LEGACY_THRESHOLD = 0.8


def run_threshold(config: Mapping[str, Any]) -> float:
    """The confidence threshold a run's config says it used for confident failures: its
    ``confidence_threshold``; for older runs, the failures callback's ``threshold``, else the
    default of that time (0.8)."""
    value = config.get("confidence_threshold")
    if value is None:
        callbacks = config.get("callbacks") or {}  # untrusted: may be anything
        callback = (
            callbacks.get("high_conf_failures") or {} if isinstance(callbacks, Mapping) else None
        )
        value = (
            callback.get("threshold", LEGACY_THRESHOLD) if isinstance(callback, Mapping) else None
        )
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise DataError(f"the run's confidence threshold {value!r} is not a number in [0, 1]")
    return float(value)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"run.json {what} is not a list of strings")
    return tuple(value)


def read_record(run_dir: str | Path) -> RunRecord:
    """Read and check a run's ``run.json``.

    Raises:
        DataError: missing, unreadable, not the recorded shape, or holding an interpolation
            (records are written resolved; one with ``${...}`` was edited and could run the
            reader's resolvers).
    """
    record = read_json(RunDir(run_dir).record)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise DataError("run.json has no config mapping")
    found = next(_interpolations(record), None)
    if found is not None:
        raise DataError(
            f"run.json holds an interpolation or missing value at {found}: records are written "
            "resolved, so this one was edited; not read"
        )
    improvement = record.get("improvement") or {}
    if not isinstance(improvement, dict):
        raise DataError("run.json improvement is not a mapping")
    name = improvement.get("name")
    checkpoint = record.get("checkpoint")
    if checkpoint is not None and (
        not isinstance(checkpoint, str)
        or Path(checkpoint).is_absolute()
        or ".." in Path(checkpoint).parts
    ):
        raise DataError(f"run.json checkpoint {checkpoint!r} is not a path inside the run")
    if name is not None and not isinstance(name, str):
        raise DataError(f"run.json improvement name {name!r} is not a string")
    fp = record.get("fingerprint")
    return RunRecord(
        config=record["config"],
        fingerprint=fp if isinstance(fp, str) else "",
        overrides=_strings(record.get("overrides"), "overrides"),
        improvement=name,
        changed_by=_strings(improvement.get("changed_by"), "improvement.changed_by"),
        checkpoint=checkpoint,
    )


def tested_checkpoint(run_dir: str | Path, record: RunRecord | None = None) -> Path:
    """The checkpoint a finished run's test used: the one ``run.json`` records; for a record
    without one (older runs), ``best.ckpt`` when the run selected one, else ``last.ckpt``.

    Raises:
        DataError: the file is not there.
    """
    run = RunDir(run_dir)
    if record is not None and record.checkpoint is not None:
        path = run.path / record.checkpoint
        if not path.is_file():
            raise DataError(f"the checkpoint run.json names is missing: {path}")
        return path
    for name in ("best.ckpt", "last.ckpt"):
        if (run.checkpoints / name).is_file():
            return run.checkpoints / name
    raise DataError(f"no checkpoint in {run.checkpoints} (expected best.ckpt or last.ckpt)")
