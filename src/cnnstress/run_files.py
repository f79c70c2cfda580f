"""Write and read the files a finished run leaves in its run directory.

Contract (analysis relies on it):

* ``metrics.json``: flat ``{"group/name": number}``; present only for a finished run.
* ``predictions.npz``: ``index`` (int64), ``target`` (int64) and ``probs`` (float32, N x C,
  softmax) for the whole test set, sorted by index, and ``official_index`` (bool scalar):
  whether ``index`` is the official test index (else the position in the sorted test split).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"


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
