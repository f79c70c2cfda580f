"""The analysis' CSV files: raw numbers (fractions), one dict per row, empty cells where a value
is not defined."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cnnstress.analysis.compare import Analysis, Comparison
from cnnstress.analysis.statistics import CrossedTest, Estimate
from cnnstress.analysis.stress import StressSummary
from cnnstress.analysis.stress import family as stress_family
from cnnstress.core.identity import describe
from cnnstress.report.numbers import threshold


def _value(value: Any) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts) as CSV, the columns in the order they first appear."""
    rows = list(rows)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows({k: _value(v) for k, v in row.items()} for row in rows)
    return path


def _estimate(prefix: str, e: Estimate | None) -> dict[str, Any]:
    keys = ("mean", "std", "ci_low", "ci_high")
    return {f"{prefix}_{k}": None if e is None else getattr(e, k) for k in keys}


def _crossed(prefix: str, test: CrossedTest | None, holm: float | None) -> dict[str, Any]:
    tested = test if test is not None and test.tested else None
    return {
        f"{prefix}_delta": None if test is None else test.delta,
        f"{prefix}_ci_low": None if tested is None else tested.ci_low,
        f"{prefix}_ci_high": None if tested is None else tested.ci_high,
        f"{prefix}_p_unadjusted": None if tested is None else tested.pvalue,
        f"{prefix}_p_holm": holm,
    }


def _comparison(c: Comparison) -> dict[str, Any]:
    """The comparison columns of a group's row (Holm families: the comparisons with one
    reference on the whole test set; the same on the clean test set)."""
    d, test, plan, pooled, v = c.paired.delta, c.crossed, c.plan, c.pooled, c.verdict
    parts = None if test is None else test.components
    tested = test is not None and test.tested
    row = {
        "reference": c.reference.key.label, "delta_acc_of_means": c.delta_mean, "paired_n": d.n,
        **{f"paired_delta_{k}": getattr(d, k) for k in ("mean", "std", "ci_low", "ci_high")},
        "paired_t": c.paired.t, "paired_p_unadjusted": c.paired.pvalue,
        "paired_p_holm": c.paired_p_holm, **_crossed("crossed", test, c.crossed_p_holm),
        "crossed_se": test.se if tested else None, "crossed_df": test.df if tested else None,
        "crossed_note": None if test is None else test.reason, "holm_family_size": c.family,
        "var_seed": None if parts is None else parts.seed,
        "var_image": None if parts is None else parts.image,
        "var_interaction": None if parts is None else parts.interaction,
        "p_better": c.share_better,
        "power_at_delta": None if plan is None else plan.power,
        "detectable_delta": None if plan is None else plan.detectable,
        "seeds_needed": None if plan is None else plan.needed,
        "seeds_limit_power": None if plan is None else plan.limit_power,
        "seeds_verdict": None if v is None else v.seeds.value,
        "verdict": None if v is None else v.overall.outcome.value,
        "failure_threshold": c.failure_threshold,
        "constrained": int(c.constrained), "differs_in": describe(c.differences, limit=50),
    }  # fmt: skip
    for name in ("corrected", "worsened", "both_wrong", "both_right"):
        row[f"pooled_{name}"] = None if pooled is None else getattr(pooled, name)
    row |= _crossed("clean", c.crossed_clean, c.clean_p_holm)
    row |= {
        "clean_paired_p_unadjusted": None if c.paired_clean is None else c.paired_clean.pvalue,
        "clean_paired_p_holm": c.paired_clean_p_holm,
        "clean_holm_family_size": None if c.crossed_clean is None else c.clean_family,
        "verdict_clean": None if v is None or v.clean_outcome is None else v.clean_outcome.value,
    }
    return row


def write_summary(analysis: Analysis, path: Path) -> Path:
    """``summary.csv``: one row per group, with its comparison against its reference."""
    rows = []
    for g in analysis.groups:
        row = {
            "dataset": g.key.dataset, "model": g.key.model, "name": g.key.name,
            "label": g.key.label, "is_reference": int(analysis.is_reference(g.key)),
            "n_seeds": g.accuracy.n, "seeds": ";".join(map(str, g.seeds)),
            **_estimate("acc", g.accuracy), **_estimate("ece", g.ece),
        }  # fmt: skip
        clean = g.clean_accuracy if g.has_label_errors else None
        corrected = g.corrected_accuracy if g.has_label_errors else None
        row |= {
            "acc_clean_mean": None if clean is None else clean.mean,
            "acc_clean_std": None if clean is None else clean.std,
            "acc_corrected_mean": None if corrected is None else corrected.mean,
            "acc_corrected_std": None if corrected is None else corrected.std,
        }
        for i, t in enumerate(analysis.thresholds):
            h, errors = g.high_conf_estimate(i), g.high_conf_label_errors
            row[f"hce_mean@{threshold(t)}"], row[f"hce_std@{threshold(t)}"] = h.mean, h.std
            row[f"hce_label_errors_mean@{threshold(t)}"] = (
                None if errors is None else errors[:, i].mean()
            )
        c = analysis.comparison_for(g.key)
        rows.append(row | (_comparison(c) if c is not None else {}))
    return write_rows(path, rows)


def write_transitions(analysis: Analysis, path: Path) -> Path:
    """``transitions.csv``: one row per comparison and seed, plus a ``pooled`` row each."""
    rows = []
    for c in analysis.comparisons:
        tables = [(str(s), t) for s, t in c.transitions.items()]
        if c.pooled is not None:
            tables.append(("pooled", c.pooled))
        for name, t in tables:
            m = t.mcnemar
            if m is not None:
                test = {"test": f"mcnemar-{m.method}", "statistic": m.statistic,
                        "p_unadjusted": m.pvalue}  # fmt: skip
            elif c.crossed is not None:
                test = {"test": "crossed-seeds-x-images", "statistic": c.crossed.delta,
                        "p_unadjusted": c.crossed.pvalue}  # fmt: skip
            else:
                test = {"test": None, "statistic": None, "p_unadjusted": None}
            rows.append({
                "reference": c.reference.key.label, "group": c.other.key.label, "seed": name,
                "corrected": t.corrected, "worsened": t.worsened, "both_wrong": t.both_wrong,
                "both_right": t.both_right, "images": t.total, **test,
                "corrected_label_errors": t.corrected_label_errors,
                "worsened_label_errors": t.worsened_label_errors,
            })  # fmt: skip
    return write_rows(path, rows)


def write_stress(stress: StressSummary, path: Path) -> Path:
    """``stress.csv``: one row per group and stress metric (headline and details)."""
    rows = []
    for g in stress.groups:
        for metric in stress.metrics:
            if metric not in g.values:
                continue
            row = {
                "dataset": g.key.dataset, "model": g.key.model, "name": g.key.name,
                "label": g.key.label, "is_reference": int(g.key in stress.reference_keys),
                "metric": metric, "headline": int(metric in stress.headline),
                "n_seeds": len(g.values[metric]),
                "seeds": ";".join(map(str, sorted(g.values[metric]))),
                **{k: getattr(g.estimate(metric), k) for k in ("mean", "std", "ci_low",
                                                               "ci_high")},
            }  # fmt: skip
            test, key = g.paired(metric), (g.key, metric)
            if test is not None:
                family = (
                    f"{stress_family(metric)} headline vs {g.reference.key.label} "
                    f"({stress.family_size[key]} tests)"
                    if key in stress.family_size
                    else "unadjusted (detail metric)"
                )
                row |= {
                    "reference": g.reference.key.label, "delta_of_means": g.delta_of_means(metric),
                    "paired_n": test.delta.n, "paired_delta_mean": test.delta.mean,
                    "paired_delta_std": test.delta.std, "paired_t": test.t,
                    "paired_p_unadjusted": test.pvalue, "paired_p_holm": stress.p_holm.get(key),
                    "holm_family": family,
                }  # fmt: skip
            rows.append(row)
    return write_rows(path, rows)
