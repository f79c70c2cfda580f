"""Analysis: read run directories, group by config, compare against a reference, report."""

from cnnstress.analysis.compare import Analysis, analyse, transitions
from cnnstress.analysis.pipeline import analyze
from cnnstress.analysis.runs import GroupKey, Run, RunCollection, SkippedRun, collect_runs
from cnnstress.analysis.statistics import mcnemar

__all__ = [
    "Analysis",
    "GroupKey",
    "Run",
    "RunCollection",
    "SkippedRun",
    "analyse",
    "analyze",
    "collect_runs",
    "mcnemar",
    "transitions",
]
