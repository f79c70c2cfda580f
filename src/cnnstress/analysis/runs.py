"""Find run directories and load what a finished run left behind.

A run directory holds ``.hydra/config.yaml``; a finished one also holds ``run.json`` (the
config it ran with, which Hydra's ``.hydra/`` may no longer say), ``metrics.json`` and
``predictions.npz`` (see :mod:`cnnstress.core.run_dir`). Nothing here imports training code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cnnstress.core.data import class_names
from cnnstress.core.data.label_errors import LabelErrors, load_label_errors
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.identity import SEED_KEYS, fingerprint, run_identity
from cnnstress.core.run_dir import RunDir, RunRecord, read_metrics, read_predictions, read_record

log = logging.getLogger(__name__)

HYDRA_CONFIG = Path(".hydra") / "config.yaml"


@dataclass(frozen=True, order=True)
class GroupKey:
    """A group: runs whose identities (:mod:`cnnstress.core.identity`) differ only in the seed.

    Attributes:
        dataset, model: ``dataset.name`` and ``model.name``.
        name: the improvement the group's augmentation and loss are, or the overrides that
            made them differ from it (e.g. ``augmentation=[]``), plus ``[key=value]`` for what
            tells it apart from another group of the same name (see ``compare_groups``).
        config_id: the fingerprint of the identity without the seed.
    """

    dataset: str
    model: str
    name: str
    config_id: str = ""

    @property
    def label(self) -> str:
        """``dataset/model/name``, the name a group has in reports and in ``reference=``."""
        return f"{self.dataset}/{self.model}/{self.name}"

    @property
    def setting(self) -> tuple[str, str]:
        """``(dataset, model)``: groups are only ever compared within one setting."""
        return (self.dataset, self.model)


@dataclass(frozen=True)
class Run:
    """One finished run, as its ``run.json`` and run files describe it.

    Attributes:
        path: the run directory.
        config: the resolved config it ran with.
        identity: its flat identity (:func:`cnnstress.core.identity.run_identity`).
        seed: ``config.seed``.
        improvement: the ``improvement`` label it ran under.
        changed_by: the command-line overrides that changed that improvement's augmentation or
            loss (empty: the run is exactly the improvement).
        metrics: ``metrics.json``.
        index: ``(N,)`` int64 test-set indices (official test indices when
            ``official_index``, else positions in the test split).
        target: ``(N,)`` int64 true classes. probs: ``(N, C)`` float32 softmax outputs.
        official_index: whether ``index`` holds official test indices.
    """

    path: Path
    config: DictConfig
    identity: dict[str, Any]
    seed: int
    improvement: str
    changed_by: tuple[str, ...]
    metrics: dict[str, float | None]
    index: np.ndarray
    target: np.ndarray
    probs: np.ndarray
    official_index: bool = False
    record: RunRecord | None = None

    @property
    def label_errors(self) -> LabelErrors | None:
        """The dataset's known test-set label errors, when this run's indices are official."""
        return load_label_errors(self.dataset) if self.official_index else None

    @property
    def is_label_error(self) -> np.ndarray | None:
        """``(N,)`` bool: is each test image a known label error (None when unknown)."""
        errors = self.label_errors
        return None if errors is None else errors.is_error(self.index)

    @property
    def dataset(self) -> str:
        """``dataset.name``."""
        return str(self.config.dataset.name)

    @property
    def model(self) -> str:
        """``model.name``."""
        return str(self.config.model.name)

    @property
    def group_identity(self) -> dict[str, Any]:
        """The identity without the seed: what every run of its group shares."""
        return {k: v for k, v in self.identity.items() if k not in SEED_KEYS}

    @property
    def group_id(self) -> tuple[str, str, str]:
        """``(dataset, model, fingerprint of group_identity)``."""
        return (self.dataset, self.model, fingerprint(self.group_identity))

    @property
    def pred(self) -> np.ndarray:
        """``(N,)`` predicted classes."""
        return self.probs.argmax(1)

    @property
    def confidence(self) -> np.ndarray:
        """``(N,)`` top-1 probability."""
        return self.probs.max(1)

    @property
    def correct(self) -> np.ndarray:
        """``(N,)`` bool, top-1 prediction equals the target."""
        return self.pred == self.target

    @property
    def accuracy(self) -> float:
        """Top-1 test accuracy computed from ``predictions.npz``."""
        return float(self.correct.mean())


@dataclass(frozen=True)
class SkippedRun:
    """A run directory that was found but not analysed, and why."""

    path: Path
    reason: str


@dataclass
class RunCollection:
    """The finished runs and the skipped run directories of one analysis."""

    runs: list[Run] = field(default_factory=list)
    skipped: list[SkippedRun] = field(default_factory=list)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory (it has ``run.json`` or ``.hydra/config.yaml``)."""
    return RunDir(path).record.is_file() or (path / HYDRA_CONFIG).is_file()


def find_run_dirs(sweep: str | Path) -> list[Path]:
    """Every run directory at or below ``sweep`` (:func:`is_run_dir`), sorted."""
    found = []
    for dirpath, dirnames, _ in os.walk(Path(sweep)):
        here = Path(dirpath)
        if is_run_dir(here):
            found.append(here)
        # Run contents (checkpoints, event files, Hydra's folder) never hold another run.
        dirnames[:] = [d for d in dirnames if d not in {"checkpoints", "tensorboard", ".hydra"}]
    return sorted(found)


def latest_multirun(log_dir: str | Path, latest: int = 1) -> Path:
    """The ``latest``-th most recent sweep directory ``<log_dir>/multiruns/<date>/<time>``
    that holds any run directory (1 = the most recent), by its date and time of start.

    Raises:
        ConfigError: ``latest`` is not a positive integer, or there are fewer sweeps.
    """
    if isinstance(latest, bool) or not isinstance(latest, int) or latest < 1:
        raise ConfigError(f"latest must be an integer >= 1, got {latest!r}")
    root = Path(log_dir) / "multiruns"

    def started(path: Path) -> tuple[str, str, int]:  # <date>/<HH-MM-SS>[-n]
        time, _, n = path.name[:8], path.name[8:9], path.name[9:]
        return (path.parent.name, time, int(n) if n.isdigit() else 0)

    # A folder without any run directory (a sweep that never started a job) is no multirun.
    candidates = sorted((p for p in root.glob("*/*") if p.is_dir()), key=started)
    sweeps = [p for p in candidates if find_run_dirs(p)]
    if len(sweeps) < latest:
        found = f"only {len(sweeps)} multirun(s) with runs" if sweeps else "no multirun with runs"
        raise ConfigError(
            f"{found} under {root} (latest={latest}): run `python train.py -m ...` first, "
            "or give sweep=DIR or runs=[DIR,...]"
        )
    return sweeps[-latest]


def _number(metrics: dict[str, Any], key: str) -> None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"metrics.json has no number {key} (got {value!r})")


def _text(config: dict[str, Any], key: str) -> str:
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, str) or not node:
        raise DataError(f"run.json config has no {key} string (got {node!r}): not a training run")
    return node


def _seed(config: dict[str, Any]) -> int:
    seed = config.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DataError(f"run.json config seed {seed!r} is not an integer in [0, 2^32)")
    return seed


def _checked_predictions(arrays: dict[str, np.ndarray], num_classes: int, dataset: str) -> None:
    index, target, probs = arrays["index"], arrays["target"], arrays["probs"]
    if probs.ndim != 2 or index.ndim != 1 or not len(index) == len(target) == len(probs):
        raise DataError("predictions.npz arrays have inconsistent shapes")
    if probs.shape[1] != num_classes:
        raise DataError(
            f"predictions.npz has {probs.shape[1]} classes, {dataset} has {num_classes}"
        )
    for name, array in (("index", index), ("target", target)):
        if not np.issubdtype(array.dtype, np.integer):
            raise DataError(f"predictions.npz {name} is not an integer array")
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        raise DataError(f"predictions.npz targets lie outside the {num_classes} classes")
    if index.size and (index.min() < 0 or np.unique(index).size != index.size):
        raise DataError("predictions.npz indices are negative or repeat")
    if not np.issubdtype(probs.dtype, np.floating) or not np.isfinite(probs).all():
        raise DataError("predictions.npz probabilities are not finite numbers")


def load_run(path: str | Path) -> Run:
    """Load a finished run, checking everything it holds (run directories are untrusted).

    Raises:
        DataError: not finished (no ``metrics.json``), no or a malformed ``run.json`` (see
            :func:`cnnstress.core.run_dir.read_record`), not a CIFAR training run, or run files that
            are missing, unreadable or inconsistent.
    """
    path = Path(path)
    if not RunDir(path).finished:
        raise DataError("no metrics.json (failed or unfinished run)")
    if not RunDir(path).record.is_file():
        raise DataError("no run.json (a run of an older cnnstress, or not a cnnstress run)")
    record = read_record(path)
    metrics = read_metrics(path)
    _number(metrics, "test/acc")
    dataset = _text(record.config, "dataset.name")
    _text(record.config, "model.name")
    seed = _seed(record.config)
    try:
        num_classes = len(class_names(dataset))
    except ConfigError:
        raise DataError(f"dataset {dataset!r} is not one cnnstress analyses") from None
    preds = read_predictions(path)
    _checked_predictions(preds, num_classes, dataset)
    return Run(
        path=path,
        config=OmegaConf.create(record.config),
        identity=run_identity(record.config),
        seed=seed,
        improvement=record.improvement or str(record.config.get("improvement") or "unnamed"),
        changed_by=record.changed_by,
        metrics=metrics,
        index=preds["index"].astype(np.int64),
        target=preds["target"].astype(np.int64),
        probs=preds["probs"].astype(np.float32),
        official_index=bool(preds["official_index"]),
        record=record,
    )


def _resolve_dirs(
    runs: Sequence[str | Path], sweep: str | Path | None, exclude: Iterable[Path]
) -> list[Path]:
    dirs: list[Path] = []
    for i, entry in enumerate(runs):
        path = Path(entry).expanduser()
        if not path.is_dir():
            raise ConfigError(f"runs[{i}]={entry} is not a directory")
        if not is_run_dir(path):
            raise ConfigError(
                f"runs[{i}]={entry} is not a run directory (no run.json or {HYDRA_CONFIG}); "
                f"use sweep={entry} to analyse every run below it"
            )
        dirs.append(path)
    if sweep is not None:
        root = Path(sweep).expanduser()
        if not root.is_dir():
            raise ConfigError(f"sweep={sweep} is not a directory")
        below = find_run_dirs(root)
        if not below:
            raise DataError(f"no run directories (with run.json) below sweep={sweep}")
        dirs.extend(below)
    excluded = {p.resolve() for p in exclude}
    unique: dict[Path, Path] = {}
    for path in dirs:
        if path.resolve() not in excluded:
            unique.setdefault(path.resolve(), path)
    return list(unique.values())


def collect_runs(
    runs: Sequence[str | Path] = (),
    sweep: str | Path | None = None,
    exclude: Iterable[Path] = (),
) -> RunCollection:
    """Load the runs named in ``runs`` and every run below ``sweep``.

    A directory that cannot be analysed (no ``metrics.json``, not a training config, broken
    files, a second run of a seed already in its group) is listed in ``skipped`` with the
    reason; nothing a run directory holds makes this raise. Directories in ``exclude`` (the
    analysis' own output) are ignored.

    Raises:
        ConfigError: neither ``runs`` nor ``sweep`` given, or a path is not a directory.
        DataError: no finished run was found.
    """
    if not runs and sweep is None:
        raise ConfigError("nothing to compare_groups: give runs=[DIR,...] or sweep=DIR")
    collection = RunCollection()
    seen: dict[tuple[tuple[str, str, str], int], Path] = {}
    for path in _resolve_dirs(runs, sweep, exclude):
        try:
            run = load_run(path)
        except Exception as err:  # whatever a run directory holds, the others are analysed
            reason = str(err) if isinstance(err, DataError) else f"{type(err).__name__}: {err}"
            collection.skipped.append(SkippedRun(path, " ".join(reason.split())))
            log.warning("skipping %s: %s", path, reason)
            continue
        first = seen.setdefault((run.group_id, run.seed), path)
        if first != path:
            reason = f"seed {run.seed} of the same config already analysed from {first}"
            collection.skipped.append(SkippedRun(path, reason))
            log.warning("skipping %s: %s", path, reason)
            continue
        collection.runs.append(run)
    if not collection.runs:
        where = f"sweep={sweep}" if sweep is not None else f"runs={list(map(str, runs))}"
        detail = ""
        if collection.skipped:
            first = collection.skipped[0]
            detail = (
                f": {len(collection.skipped)} run director"
                f"{'y' if len(collection.skipped) == 1 else 'ies'} skipped "
                f"(first: {first.path}: {first.reason})"
            )
        raise DataError(f"no finished runs found in {where}{detail}")
    return collection
