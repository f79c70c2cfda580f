"""How numbers read in the report: percentages, mean ± std, intervals, p-values."""

from __future__ import annotations

import math

from cnnstress.analysis.statistics import CrossedTest, Estimate

NA = "n/a"
IDENTICAL = "no test possible (identical differences)"


def num(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    """``value x scale`` with ``digits`` decimals, ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value * scale:.{digits}f}"


def mean_std(e: Estimate, scale: float = 1.0, digits: int = 2) -> str:
    """``76.40 ± 1.08`` (just the mean for one seed)."""
    if e.std is None:
        return num(e.mean, scale, digits)
    return f"{num(e.mean, scale, digits)} ± {num(e.std, scale, digits)}"


def interval(e: Estimate, scale: float = 1.0, digits: int = 2) -> str:
    """``[75.10, 77.70]``, ``n/a`` without one."""
    if e.ci_low is None:
        return NA
    return f"[{num(e.ci_low, scale, digits)}, {num(e.ci_high, scale, digits)}]"


def pvalue(value: float | None) -> str:
    """Three significant digits, ``n/a`` for None."""
    return NA if value is None else f"{value:.3g}"


def pct_points(value: float) -> str:
    """A difference of fractions in percentage points with its sign: ``+1.20``."""
    return f"{value * 100:+.2f}"


def crossed(test: CrossedTest | None) -> str:
    """``+1.20 [+0.40, +2.00]`` in pp, or why there is no interval."""
    if test is None:
        return NA
    if not test.tested:
        return f"{pct_points(test.delta)} (no interval: {test.reason})"
    return f"{pct_points(test.delta)} [{pct_points(test.ci_low)}, {pct_points(test.ci_high)}]"


def with_holm(p: float | None, holm: float | None) -> str:
    """``0.012 (0.036)``: unadjusted, Holm-adjusted in brackets."""
    return NA if p is None else f"{pvalue(p)} ({pvalue(holm)})"


def threshold(t: float) -> str:
    return f"{t:g}"
