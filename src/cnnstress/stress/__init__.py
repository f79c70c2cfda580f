"""Stress tests beyond the clean test set, evaluated on a run's checkpoint.

:func:`evaluate_run` runs any of :data:`STRESSES` and keeps the results in the run's
``stress.json`` (:mod:`cnnstress.stress.results`); :func:`mce` compares a run's corruption
errors (:func:`corruption_errors`) with a reference's.
"""

from cnnstress.stress.corruption_suite import accuracy_table, corruption_errors, mce
from cnnstress.stress.corruptions import CORRUPTIONS, corrupt
from cnnstress.stress.results import (
    Measurement,
    StoredStress,
    StressResult,
    measure,
    read_stored,
    write_stored,
)
from cnnstress.stress.runner import STRESS_SETTINGS, STRESSES, check_names, evaluate_run

__all__ = [
    "CORRUPTIONS",
    "STRESSES",
    "STRESS_SETTINGS",
    "Measurement",
    "StoredStress",
    "StressResult",
    "accuracy_table",
    "check_names",
    "corrupt",
    "corruption_errors",
    "evaluate_run",
    "mce",
    "measure",
    "read_stored",
    "write_stored",
]
