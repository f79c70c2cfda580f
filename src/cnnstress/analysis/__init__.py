"""Analysis: read run directories, group them by what they ran, and compare every group with its
reference: the statistics and the verdict as data (the report layer words and draws them)."""

from cnnstress.analysis.compare import Analysis, compare_groups, transitions
from cnnstress.analysis.runs import GroupKey, Run, RunCollection, SkippedRun, collect_runs
from cnnstress.analysis.statistics import mcnemar

__all__ = [
    "Analysis",
    "GroupKey",
    "Run",
    "RunCollection",
    "SkippedRun",
    "collect_runs",
    "compare_groups",
    "mcnemar",
    "transitions",
]
