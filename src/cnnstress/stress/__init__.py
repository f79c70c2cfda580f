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


# TEMPORARY (delete with the integrator's rewrite of cnnstress.analysis.stress, which still
# imports these names): the flat-key API is gone; these placeholders only keep
# ``cnnstress.app.configs`` (which imports app.analyze for its schema) and so train.py and the
# test suite importable until then. Calling one says what replaced it.
def run_stress(*args: object, **kwargs: object) -> None:
    """Removed: use :func:`evaluate_run` (or ``cnnstress.app.stress.stress_run``)."""
    raise NotImplementedError("run_stress was removed: use cnnstress.stress.evaluate_run")


def corruption_accuracies(*args: object, **kwargs: object) -> None:
    """Removed: use :func:`accuracy_table` on a result's measurements."""
    raise NotImplementedError("corruption_accuracies was removed: use accuracy_table")


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
