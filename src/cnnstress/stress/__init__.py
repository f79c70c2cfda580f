"""Stress tests beyond the clean test set, evaluated on a run's checkpoint.

:func:`run_stress` runs any of :data:`STRESSES` and keeps the results in the run's
``stress.json``; :func:`mce` compares a run's corruption errors with a baseline's.
"""

from cnnstress.stress.corruption_suite import corruption_accuracies, corruption_errors, mce
from cnnstress.stress.corruptions import CORRUPTIONS, corrupt
from cnnstress.stress.runner import STRESS_SETTINGS, STRESSES, read_stress, run_stress

__all__ = [
    "CORRUPTIONS",
    "STRESSES",
    "STRESS_SETTINGS",
    "corrupt",
    "corruption_accuracies",
    "corruption_errors",
    "mce",
    "read_stress",
    "run_stress",
]
