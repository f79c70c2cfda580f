"""Find run directories and load what a finished run left behind.

A run directory holds ``.hydra/config.yaml``; a finished one also holds ``metrics.json`` and
``predictions.npz`` (see :mod:`cnnstress.run_files`). Nothing here imports training code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cnnstress.checkpoints import CONFIG_FILE, load_run_config
from cnnstress.errors import ConfigError, DataError
from cnnstress.run_files import METRICS_FILE, PREDICTIONS_FILE, read_metrics, read_predictions

log = logging.getLogger(__name__)

# Config keys that may differ between the seeds of one group without making them different
# experiments (where the run wrote, which checkpoint it resumed from).
IGNORED_CONFIG_KEYS = ("seed", "ckpt_path", "paths.")


@dataclass(frozen=True, order=True)
class GroupKey:
    """What makes runs comparable: the same dataset, backbone and improvement."""

    dataset: str
    model: str
    improvement: str

    @property
    def label(self) -> str:
        """``dataset/model/improvement``, the name a group has in reports and in ``reference=``."""
        return f"{self.dataset}/{self.model}/{self.improvement}"

    @property
    def setting(self) -> tuple[str, str]:
        """``(dataset, model)``: groups are only ever compared within one setting."""
        return (self.dataset, self.model)


@dataclass(frozen=True)
class Run:
    """One finished run.

    Attributes:
        path: the run directory.
        config: its saved (unresolved) ``.hydra/config.yaml``.
        key: its group.
        seed: ``config.seed``.
        metrics: ``metrics.json``.
        index: ``(N,)`` int64 test-set positions.
        target: ``(N,)`` int64 true classes.
        probs: ``(N, C)`` float32 softmax outputs.
    """

    path: Path
    config: DictConfig
    key: GroupKey
    seed: int
    metrics: dict[str, float | None]
    index: np.ndarray
    target: np.ndarray
    probs: np.ndarray

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


def find_run_dirs(sweep: str | Path) -> list[Path]:
    """Every directory at or below ``sweep`` that has ``.hydra/config.yaml``, sorted."""
    root = Path(sweep)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here.name == ".hydra":
            dirnames.clear()
            if "config.yaml" in filenames:
                found.append(here.parent)
        else:
            # Run contents (checkpoints, event files) never hold another run.
            dirnames[:] = [d for d in dirnames if d not in {"checkpoints", "tensorboard"}]
    return sorted(found)


def _group_key(cfg: DictConfig) -> tuple[GroupKey, int]:
    values = {}
    for key in ("dataset.name", "model.name", "improvement", "seed"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            raise DataError(f"config has no {key}: not a training run")
        values[key] = value
    dataset, model, improvement = (
        str(values[k]) for k in ("dataset.name", "model.name", "improvement")
    )
    key = GroupKey(dataset, model, improvement)
    return key, int(values["seed"])


def load_run(path: str | Path) -> Run:
    """Load a finished run.

    Raises:
        DataError: not a training run, not finished (no ``metrics.json``), or its files are
            missing, unreadable or inconsistent.
    """
    path = Path(path)
    cfg = load_run_config(path)
    key, seed = _group_key(cfg)
    if not (path / METRICS_FILE).is_file():
        raise DataError(f"no {METRICS_FILE} (failed or unfinished run)")
    if not (path / PREDICTIONS_FILE).is_file():
        raise DataError(f"no {PREDICTIONS_FILE}")
    try:
        metrics = read_metrics(path)
        preds = read_predictions(path)
        index, target, probs = preds["index"], preds["target"], preds["probs"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"unreadable run files: {err}") from err
    num_classes = OmegaConf.select(cfg, "dataset.num_classes", default=None)
    if probs.ndim != 2 or len(index) != len(target) or len(target) != len(probs):
        raise DataError(f"{PREDICTIONS_FILE} arrays have inconsistent shapes")
    if num_classes is not None and probs.shape[1] != int(num_classes):
        raise DataError(f"{PREDICTIONS_FILE} has {probs.shape[1]} classes, config {num_classes}")
    return Run(path, cfg, key, seed, metrics, index, target, probs.astype(np.float32))


def _resolve_dirs(
    runs: Sequence[str | Path], sweep: str | Path | None, exclude: Iterable[Path]
) -> list[Path]:
    dirs: list[Path] = []
    for i, entry in enumerate(runs):
        path = Path(entry).expanduser()
        if not path.is_dir():
            raise ConfigError(f"runs[{i}]={entry} is not a directory")
        if not (path / CONFIG_FILE).is_file():
            raise ConfigError(
                f"runs[{i}]={entry} is not a run directory (no {CONFIG_FILE}); "
                f"use sweep={entry} to analyse every run below it"
            )
        dirs.append(path)
    if sweep is not None:
        root = Path(sweep).expanduser()
        if not root.is_dir():
            raise ConfigError(f"sweep={sweep} is not a directory")
        below = find_run_dirs(root)
        if not below:
            raise DataError(f"no run directories (with {CONFIG_FILE}) below sweep={sweep}")
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
    reason. Directories in ``exclude`` (the analysis' own output) are ignored.

    Raises:
        ConfigError: neither ``runs`` nor ``sweep`` given, or a path is not a directory.
        DataError: no finished run was found.
    """
    if not runs and sweep is None:
        raise ConfigError("nothing to analyse: give runs=[DIR,...] or sweep=DIR")
    collection = RunCollection()
    seen: dict[tuple[GroupKey, int], Path] = {}
    for path in _resolve_dirs(runs, sweep, exclude):
        try:
            run = load_run(path)
        except DataError as err:
            collection.skipped.append(SkippedRun(path, str(err)))
            log.warning("skipping %s: %s", path, err)
            continue
        first = seen.setdefault((run.key, run.seed), path)
        if first != path:
            reason = f"seed {run.seed} of {run.key.label} already analysed from {first}"
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


def _flatten(cfg: object, prefix: str = "") -> dict[str, object]:
    if isinstance(cfg, dict):
        out: dict[str, object] = {}
        for k, v in cfg.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: cfg}


def config_differences(runs: Sequence[Run]) -> list[str]:
    """Config keys (dotted, unresolved values) that differ between ``runs`` of one group.

    Seeds and paths are expected to differ and are left out; anything else means the group
    pools runs of different experiments.
    """
    flat = [_flatten(OmegaConf.to_container(r.config, resolve=False)) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    return [
        k
        for k in keys
        if not any(k == i or (i.endswith(".") and k.startswith(i)) for i in IGNORED_CONFIG_KEYS)
        and len({repr(f.get(k, "<missing>")) for f in flat}) > 1
    ]
