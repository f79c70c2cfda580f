"""The table of per-seed numbers (cnnstress.analysis.seed_table): cells, the order of metrics,
and the estimate and paired test read from it, checked against scipy on planted numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cnnstress.analysis.runs import GroupKey
from cnnstress.analysis.seed_table import (
    ACCURACY,
    CLEAN_ACCURACY,
    ECE,
    Metric,
    SeedTable,
    confident_failures,
    confident_label_errors,
)

BASE = GroupKey("cifar10", "resnet18", "baseline")
CUTOUT = GroupKey("cifar10", "resnet18", "cutout")
SEVERITY_3 = Metric("corruption_suite", "acc", (("corruption", "fog"), ("severity", 3)))


def table_of(values: dict[GroupKey, dict[int, float]], metric: Metric = ACCURACY) -> SeedTable:
    table = SeedTable()
    for group, by_seed in values.items():
        for seed, value in by_seed.items():
            table.add(group, metric, seed, value)
    return table


# -- Metric -------------------------------------------------------------------------------------
def test_a_metric_is_its_source_name_and_conditions_not_whether_it_is_a_headline():
    quiet = Metric("test", "acc", headline=False)
    assert quiet == ACCURACY and hash(quiet) == hash(ACCURACY)
    assert Metric("test", "acc", (("threshold", 0.5),)) != ACCURACY
    assert ECE != ACCURACY and Metric("test", "clean_acc") != CLEAN_ACCURACY
    table = SeedTable()
    table.add(BASE, quiet, 0, 0.9)
    table.add(BASE, ACCURACY, 1, 0.8)  # the same cell row
    assert table.by_seed(BASE, ACCURACY) == {0: 0.9, 1: 0.8}
    (kept,) = table.metrics()
    assert kept.headline is False  # the instance added first


def test_metric_conditions_and_threshold_metrics():
    assert SEVERITY_3.at("severity") == 3 and SEVERITY_3.at("corruption") == "fog"
    assert SEVERITY_3.at("shift") is None and SEVERITY_3.at("shift", "none") == "none"
    assert confident_failures(1) == Metric("test", "confident_failures", (("threshold", 1.0),))
    assert confident_failures(0.8) == confident_failures(0.8000)
    assert confident_failures(0.8).at("threshold") == 0.8
    assert confident_label_errors(0.8).source == "label_errors"
    assert confident_label_errors(0.8) != confident_failures(0.8)


# -- cells --------------------------------------------------------------------------------------
def test_add_and_by_seed_keep_one_float_per_seed_sorted_by_seed():
    table = SeedTable()
    for seed, value in ((2, 0.7), (0, 0.9), (1, 1)):
        table.add(BASE, ACCURACY, seed, value)
    table.add(BASE, ACCURACY, 2.0, 0.75)  # type: ignore[arg-type]  # replaces seed 2's value
    by_seed = table.by_seed(BASE, ACCURACY)
    assert by_seed == {0: 0.9, 1: 1.0, 2: 0.75} and list(by_seed) == [0, 1, 2]
    assert all(type(s) is int and type(v) is float for s, v in by_seed.items())
    assert table.by_seed(BASE, ECE) == {} and table.by_seed(CUTOUT, ACCURACY) == {}
    by_seed[5] = 0.0  # a copy: the table is unchanged
    assert 5 not in table.by_seed(BASE, ACCURACY)


def test_has_groups_and_cells_report_what_was_added():
    table = table_of({BASE: {1: 0.9, 0: 0.8}, CUTOUT: {0: 0.85}})
    table.add(CUTOUT, ECE, 0, 0.03)
    assert table.has(BASE, ACCURACY) and not table.has(BASE, ECE) and table.has(CUTOUT, ECE)
    assert table.groups(ACCURACY) == [BASE, CUTOUT] and table.groups(ECE) == [CUTOUT]
    assert table.groups(CLEAN_ACCURACY) == []
    assert list(table.cells()) == [
        (BASE, ACCURACY, 0, 0.8), (BASE, ACCURACY, 1, 0.9),
        (CUTOUT, ACCURACY, 0, 0.85), (CUTOUT, ECE, 0, 0.03),
    ]  # fmt: skip


def test_metrics_come_in_the_order_first_added_per_group_or_source():
    table = SeedTable()
    table.add(BASE, ECE, 0, 0.1)
    table.add(CUTOUT, SEVERITY_3, 0, 0.5)
    table.add(BASE, ACCURACY, 0, 0.9)
    table.add(CUTOUT, ACCURACY, 0, 0.9)
    table.add(BASE, confident_failures(0.8), 0, 12)
    table.add(BASE, ECE, 1, 0.2)  # not new: keeps its place
    assert table.metrics(BASE) == [ECE, ACCURACY, confident_failures(0.8)]
    assert table.metrics(CUTOUT) == [SEVERITY_3, ACCURACY]
    # every group's: the first group's metrics, then those only later groups have
    assert table.metrics() == [ECE, ACCURACY, confident_failures(0.8), SEVERITY_3]
    assert table.metrics(source="corruption_suite") == [SEVERITY_3]
    assert table.metrics(source="test") == [ECE, ACCURACY, confident_failures(0.8)]
    assert table.metrics(BASE, source="corruption_suite") == []
    assert table.metrics(GroupKey("cifar100", "resnet18", "baseline")) == []


# -- estimates and paired tests ---------------------------------------------------------------
def test_estimate_is_the_mean_sample_std_and_t_interval_over_seeds():
    values = [0.91, 0.93, 0.92, 0.95]
    table = table_of({BASE: dict(enumerate(values))})
    est = table.estimate(BASE, ACCURACY)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / math.sqrt(4)
    assert est.n == 4 and est.mean == pytest.approx(np.mean(values))
    assert est.std == pytest.approx(np.std(values, ddof=1))
    assert (est.ci_low, est.ci_high) == pytest.approx(
        (np.mean(values) - half, np.mean(values) + half)
    )
    one = table_of({BASE: {7: 0.9}}).estimate(BASE, ACCURACY)
    assert (one.mean, one.std, one.ci_low, one.n) == (0.9, None, None, 1)
    assert table.estimate(CUTOUT, ACCURACY).n == 0 and math.isnan(
        table.estimate(CUTOUT, ACCURACY).mean
    )


def test_paired_agrees_with_scipy_ttest_rel_over_the_shared_seeds():
    reference = {0: 0.900, 1: 0.905, 2: 0.897, 3: 0.910, 9: 0.5}  # seed 9: reference only
    other = {0: 0.912, 1: 0.911, 2: 0.909, 3: 0.918, 4: 0.99}  # seed 4: other only
    table = table_of({BASE: reference, CUTOUT: other})
    test = table.paired(BASE, CUTOUT, ACCURACY)
    shared = [0, 1, 2, 3]
    expected = stats.ttest_rel([other[s] for s in shared], [reference[s] for s in shared])
    assert test.seeds == (0, 1, 2, 3)
    assert test.t == pytest.approx(expected.statistic) and test.t > 0
    assert test.pvalue == pytest.approx(expected.pvalue)
    assert test.differences == pytest.approx((0.012, 0.006, 0.012, 0.008))
    assert test.delta.mean == pytest.approx(0.0095) and test.delta.n == 4
    swapped = table.paired(CUTOUT, BASE, ACCURACY)
    assert swapped.t == pytest.approx(-test.t) and swapped.pvalue == pytest.approx(test.pvalue)


def test_delta_of_means_uses_every_seed_of_each_group_not_only_the_shared_ones():
    table = table_of({BASE: {0: 0.90, 1: 0.92, 9: 0.50}, CUTOUT: {0: 0.91, 1: 0.95}})
    assert table.delta_of_means(BASE, CUTOUT, ACCURACY) == pytest.approx(0.93 - 2.32 / 3)
    assert table.paired(BASE, CUTOUT, ACCURACY).delta.mean == pytest.approx(0.02)


def test_paired_and_delta_are_none_when_a_group_has_no_value():
    table = table_of({BASE: {0: 0.9, 1: 0.91}})
    table.add(CUTOUT, ECE, 0, 0.02)
    assert table.paired(BASE, CUTOUT, ACCURACY) is None
    assert table.delta_of_means(BASE, CUTOUT, ACCURACY) is None
    assert table.paired(CUTOUT, BASE, ACCURACY) is None


def test_paired_on_identical_differences_gives_no_t_value():
    table = table_of({BASE: {0: 0.90, 1: 0.80, 2: 0.70}, CUTOUT: {0: 0.91, 1: 0.81, 2: 0.71}})
    test = table.paired(BASE, CUTOUT, ACCURACY)
    assert test.identical and test.t is None and test.pvalue is None
    assert test.delta.mean == pytest.approx(0.01)
