"""Failure modes of a run: its errors grouped by its own embeddings and described.

* :mod:`~cnnstress.core.failure_modes.embeddings`: the penultimate features (a hook on the head);
* :mod:`~cnnstress.core.failure_modes.attributes`: measured image attributes, centre vs surround;
* :mod:`~cnnstress.core.failure_modes.clustering`: PCA + Gaussian mixture, its size by BIC;
* :mod:`~cnnstress.core.failure_modes.modes`: the modes, their descriptions, the JSON record;
* :mod:`~cnnstress.core.failure_modes.run`: all of it for a model and its test split (the training
  callback) or for a finished run from its checkpoint (the analysis);
* :mod:`~cnnstress.core.failure_modes.settings`: the knobs.

Compute only: the figure lives in :mod:`cnnstress.core.plots.failure_modes`; matching modes across
seeds and improvements in :mod:`cnnstress.analysis.failure_modes`.
"""

from cnnstress.core.failure_modes.modes import (
    AttributeContrast,
    FailureMode,
    FailureModes,
    ModeGrouping,
    PairCount,
    find_failure_modes,
    from_json,
)
from cnnstress.core.failure_modes.settings import FailureModeSettings

__all__ = [
    "AttributeContrast",
    "FailureMode",
    "FailureModeSettings",
    "FailureModes",
    "ModeGrouping",
    "PairCount",
    "find_failure_modes",
    "from_json",
]
