"""Write and read the files a finished run leaves in its run directory.

Contract (analysis relies on it):

* ``metrics.json``: flat ``{"group/name": number}``; present only for a finished run.
* ``predictions.npz``: ``index`` (int64), ``target`` (int64) and ``probs`` (float32, N x C,
  softmax) for the whole test set, sorted by index, and ``official_index`` (bool scalar):
  whether ``index`` is the official test index (else the position in the sorted test split).
* ``run.json``: what the run was, written just before ``metrics.json``: ``config`` (the
  resolved config it ran with), ``fingerprint`` (:mod:`cnnstress.identity`), ``overrides``
  (the command-line overrides) and ``improvement`` (its label and the overrides that changed
  its augmentation or loss, if any). Hydra rewrites ``.hydra/config.yaml`` before a job even
  starts, so skipping and analysis trust this record, not ``.hydra/``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnstress import __version__
from cnnstress.identity import fingerprint, run_identity

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"
RUN_FILE = "run.json"


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
    return write_json(Path(run_dir) / METRICS_FILE, clean, sort_keys=True)


def read_metrics(run_dir: str | Path) -> dict[str, float]:
    """Read a run's ``metrics.json``."""
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())


def write_predictions(
    run_dir: str | Path,
    index: np.ndarray,
    target: np.ndarray,
    probs: np.ndarray,
    official_index: bool = False,
) -> Path:
    """Write ``predictions.npz`` atomically: ``index`` ``(N,)``, ``target`` ``(N,)``, ``probs``
    ``(N, C)`` and ``official_index`` (whether ``index`` is the official test index)."""
    path = Path(run_dir) / PREDICTIONS_FILE

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


def read_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Read a run's ``predictions.npz`` as a dict of arrays (``index``, ``target``, ``probs``,
    and ``official_index``, a 0-d bool array: False for files written before it existed)."""
    with np.load(Path(run_dir) / PREDICTIONS_FILE) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.setdefault("official_index", np.array(False))
    return arrays


def write_run_record(
    run_dir: str | Path,
    config: Mapping[str, Any],
    overrides: Sequence[str] = (),
    improvement_changed_by: Sequence[str] = (),
) -> Path:
    """Write ``run.json`` atomically: the resolved ``config`` (plain containers), its
    fingerprint, the command-line ``overrides``, and the overrides that changed the
    improvement's augmentation or loss."""
    record = {
        "fingerprint": fingerprint(run_identity(config)),
        "config": dict(config),
        "overrides": list(overrides),
        "improvement": {
            "name": config.get("improvement"),
            "changed_by": list(improvement_changed_by),
        },
        "cnnstress_version": __version__,
    }
    return write_json(Path(run_dir) / RUN_FILE, record)


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    """Read a run's ``run.json`` (raises ``OSError`` / ``ValueError`` when missing or broken)."""
    record = json.loads((Path(run_dir) / RUN_FILE).read_text())
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{RUN_FILE} has no config mapping")
    return record
