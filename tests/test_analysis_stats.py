"""The statistics and the report rendering of the analysis, on hand-computed cases."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats
from torchmetrics.functional.classification import multiclass_calibration_error

from cnnstress.analysis.compare import Analysis, compare_groups, pool_transitions, transitions
from cnnstress.analysis.runs import Run, RunCollection
from cnnstress.analysis.statistics import (
    crossed_test,
    estimate,
    holm,
    mcnemar,
    paired_test,
    share_better,
)
from cnnstress.core.cam import run_cam_settings
from cnnstress.core.data.label_errors import load_label_errors
from cnnstress.core.errors import ConfigError
from cnnstress.core.identity import run_identity
from cnnstress.core.metrics import (
    binned_calibration_error,
    expected_calibration_error,
    high_conf_errors,
    per_class_accuracy,
    reliability_bins,
)
from cnnstress.report.figures.comparison import per_class_selection
from cnnstress.report.sentences import verdict
from cnnstress.report.view import build_view
from cnnstress.report.write import render
from tests.conftest import TINY_RUN, compose_train_config


def test_mcnemar_exact_by_hand():
    # b=3, c=10: p = 2 * P(X <= 3), X ~ Bin(13, 1/2) = 2 * (1 + 13 + 78 + 286) / 2**13
    result = mcnemar(3, 10)
    assert result.method == "exact"
    assert result.statistic == 3
    assert result.pvalue == pytest.approx(2 * 378 / 8192)
    assert mcnemar(0, 0).pvalue == 1.0
    assert mcnemar(5, 5).pvalue == pytest.approx(1.0)


def test_mcnemar_chi_square_with_continuity_correction_by_hand():
    # b=30, c=12: (|30 - 12| - 1)^2 / 42 = 289 / 42; p from chi-square with 1 dof
    result = mcnemar(30, 12)
    assert result.method == "chi2-cc"
    assert result.statistic == pytest.approx(289 / 42)
    assert result.pvalue == pytest.approx(math.erfc(math.sqrt(289 / 42 / 2)))  # chi2(1) tail
    assert mcnemar(12, 12).method == "exact"  # 24 discordant pairs: still exact
    assert mcnemar(13, 12).method == "chi2-cc"


def test_transitions_count_each_cell_and_pool():
    ref = np.array([1, 1, 0, 0, 0, 1], bool)
    other = np.array([1, 0, 1, 1, 0, 1], bool)
    t = transitions(ref, other)
    assert (t.corrected, t.worsened, t.both_wrong, t.both_right, t.total) == (2, 1, 1, 2, 6)
    pooled = pool_transitions([t, t])
    assert (pooled.corrected, pooled.worsened, pooled.both_right) == (4, 2, 4)
    assert pooled.mcnemar is None  # image x seed pairs are not independent: no test on a sum


def test_estimate_one_seed_has_no_spread_and_three_seeds_a_t_interval():
    one = estimate([0.9])
    assert (one.mean, one.std, one.ci_low, one.ci_high, one.n) == (0.9, None, None, None, 1)
    three = estimate([0.80, 0.82, 0.87])
    std = math.sqrt(((0.80 - 0.83) ** 2 + (0.82 - 0.83) ** 2 + (0.87 - 0.83) ** 2) / 2)
    half = 4.302652729911275 * std / math.sqrt(3)  # t(0.975, 2)
    assert (three.mean, three.std) == pytest.approx((0.83, std))
    assert (three.ci_low, three.ci_high) == pytest.approx((0.83 - half, 0.83 + half))


def test_paired_test_pairs_by_seed():
    ref = {1: 0.80, 2: 0.82, 3: 0.85, 9: 0.5}
    other = {3: 0.88, 1: 0.84, 2: 0.83, 7: 0.1}
    result = paired_test(ref, other)
    assert result.seeds == (1, 2, 3)
    assert result.delta.mean == pytest.approx((0.04 + 0.01 + 0.03) / 3)
    expected = stats.ttest_rel([0.84, 0.83, 0.88], [0.80, 0.82, 0.85])
    assert (result.t, result.pvalue) == pytest.approx((expected.statistic, expected.pvalue))
    single = paired_test({1: 0.8}, {1: 0.9})
    assert single.t is None and single.pvalue is None and single.delta.std is None


def test_high_conf_errors_include_the_threshold():
    probs = np.array([[0.8, 0.2], [0.5, 0.5], [0.1, 0.9], [0.3, 0.7]], np.float32)
    target = np.array([1, 1, 1, 0])  # wrong: rows 0 (conf 0.8), 1 (0.5, argmax 0), 3 (0.7)
    assert high_conf_errors(probs, target, [0.5, 0.7, 0.8, 0.81]).tolist() == [3, 2, 1, 0]


def test_per_class_accuracy_and_absent_class():
    probs = np.eye(3, dtype=np.float32)[[0, 0, 1, 0]]
    acc = per_class_accuracy(probs, np.array([0, 1, 1, 0]), 3)
    assert acc[:2].tolist() == [1.0, 0.5] and math.isnan(acc[2])


def test_ece_is_torchmetrics_ece():
    gen = torch.Generator().manual_seed(0)
    probs = torch.randn(200, 10, generator=gen).mul(3).softmax(1)
    target = torch.randint(0, 10, (200,), generator=gen)
    expected = multiclass_calibration_error(probs, target, 10, n_bins=15, norm="l1")
    assert expected_calibration_error(probs.numpy(), target.numpy()) == pytest.approx(
        float(expected)
    )


def test_reliability_bins_put_a_confidence_on_an_edge_where_torchmetrics_does():
    """torchmetrics bins on float32 edges: the edge 8/15 is 0.53333330 there, below the float64
    8/15 (0.53333333), so a float32 confidence on it belongs to bin 8, not bin 7."""
    edge = float(torch.linspace(0, 1, 16, dtype=torch.float32)[8])
    assert edge < 8 / 15
    conf = np.array([edge] * 3 + [0.52] * 3, np.float32)
    correct = np.array([True] * 3 + [False] * 3)
    bins = reliability_bins(conf, correct)
    assert bins["count"][7] == 3 and bins["count"][8] == 3
    assert bins["edges"].dtype == np.float32 and bins["edges"][8] == np.float32(edge)
    probs = np.stack([conf, 1 - conf], axis=1)  # top-1 is class 0
    target = np.where(correct, 0, 1)
    assert binned_calibration_error(bins) == pytest.approx(
        expected_calibration_error(probs, target), abs=1e-6
    )


def test_per_class_selection_keeps_100_classes_readable():
    delta = np.zeros(100)
    delta[[3, 50, 70]] = [-0.2, 0.1, 0.3]
    delta[5] = np.nan
    order, subtitle = per_class_selection(delta)
    assert order == [3, 50, 70] and "of 99 classes (96 unchanged)" in subtitle
    small, _ = per_class_selection(np.array([0.1, -0.2, 0.0]))
    assert small == [1, 2, 0]


def test_cam_settings_follow_the_run_config(tmp_path):
    overrides = ["callbacks.gradcam.method=GradCAM++", "callbacks.gradcam.target_layer=block2"]
    cfg = compose_train_config(tmp_path, [*TINY_RUN, *overrides])
    assert run_cam_settings(cfg) == ("gradcam++", "block2")  # the callback's, as in training
    assert run_cam_settings(cfg, "xgradcam", "block1") == ("xgradcam", "block1")
    no_callback = compose_train_config(tmp_path, [*TINY_RUN, "callbacks.gradcam=null"])
    assert run_cam_settings(no_callback) == ("gradcam", no_callback.model.target_layer)
    with pytest.raises(ConfigError, match=r"^gradcam\.method must be one of .*got 'gradcamm'"):
        run_cam_settings(cfg, "gradcamm", key="gradcam.method")


def test_report_renders_markdown_and_self_contained_html(tmp_path):
    """Text from run directories is untrusted: Markdown keeps it (table pipes escaped), the page
    escapes it, and figures are embedded so the page stands alone."""
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    view = build_view(planted_analysis([0.05, 0.06, 0.055]), {"confidence": ["a.png"]},
                      ["runs <b>x</b> | y & z"])  # fmt: skip
    summary, md, html = render(view, tmp_path)
    assert "runs <b>x</b> \\| y & z" in md and "runs <b>x</b>" in summary
    assert "](a.png)" in md and "| group |" in md
    assert "runs &lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert "&amp; z" in html and "<table>" in html
    (src,) = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert src == "data:image/png;base64,iVBORw0KGgpmYWtl"


def test_crossed_test_keeps_an_image_one_unit_across_seeds():
    rng = np.random.default_rng(0)
    ref = rng.random((3, 2000)) < 0.7
    other = ref.copy()
    for seed in range(3):  # each seed corrects and worsens its own images
        flip = rng.choice(2000, 120, replace=False)
        other[seed, flip] = ~other[seed, flip]
    test = crossed_test(ref, other)
    diff = other.astype(float) - ref
    assert test.delta == pytest.approx(diff.mean())
    # Summing the three McNemar tables counts every image three times as if independent; the
    # crossed test does not.
    pooled = mcnemar(int((~ref & other).sum()), int((ref & ~other).sum()))
    assert test.pvalue > pooled.pvalue or test.pvalue > 0.05
    # Three seeds that agree image for image carry no spread to test: no interval, not a zero.
    same = crossed_test(np.stack([ref[0]] * 3), np.stack([other[0]] * 3))
    assert same.pvalue is None and same.identical


def test_crossed_test_of_identical_and_of_one_seed():
    ref = np.zeros((2, 50), bool)
    same = crossed_test(ref, ref)
    assert (same.delta, same.pvalue, same.ci_low) == (0, None, None) and same.identical
    one = crossed_test(ref[:1], np.ones((1, 50), bool))
    assert one.delta == 1 and one.pvalue is None and "one seed" in one.reason


def test_share_better_counts_ties_half():
    assert share_better([0.01, -0.02, 0.0, 0.03]) == pytest.approx(2.5 / 4)
    assert share_better([]) is None


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.04, 0.01, None, 0.03]) == pytest.approx([0.06, 0.03, None, 0.06])


def planted_run(
    name: str,
    seed: int,
    correct: np.ndarray,
    index: np.ndarray | None = None,
    target: np.ndarray | None = None,
) -> Run:
    """A run whose test predictions are right exactly where ``correct`` says (10 classes),
    confidently (0.91); ``index`` makes its test indices official."""
    n = correct.size
    official = index is not None
    index = np.arange(n) if index is None else index
    target = np.arange(n) % 10 if target is None else target
    pred = np.where(correct, target, (target + 1) % 10)
    probs = np.full((n, 10), 0.01, np.float32)
    probs[np.arange(n), pred] = 0.91
    smoothing = 0.1 if name != "baseline" else 0.0
    config = {"dataset": {"name": "cifar10"}, "model": {"name": "net"}, "seed": seed,
              "module": {"loss": {"label_smoothing": smoothing}}}  # fmt: skip
    return Run(Path("/planted") / f"{name}_{seed}", OmegaConf.create(config),
               run_identity(config), seed, name, (), {"test/acc": float(correct.mean())},
               index, target, probs, official)  # fmt: skip


def planted_analysis(gains: list[float], n: int = 2000) -> Analysis:
    rng = np.random.default_rng(0)
    runs = []
    for seed, gain in enumerate(gains):
        base = rng.random(n) < 0.7
        better = base.copy()
        pool = np.flatnonzero(~base if gain > 0 else base)
        better[rng.choice(pool, round(abs(gain) * n), replace=False)] = gain > 0
        runs += [planted_run("baseline", seed, base), planted_run("smooth", seed, better)]
    return compare_groups(RunCollection(runs=runs), "baseline", (0.5, 0.8))


def test_verdict_of_a_clear_gain_and_of_too_few_seeds():
    analysis = planted_analysis([0.05, 0.06, 0.055])
    (clear,) = analysis.comparisons
    text = verdict(clear, analysis)
    assert text.startswith("smooth vs baseline (cifar10/net): accuracy +5.50 pp (95% CI ")
    assert ": a clear gain." in text and "The 3 seeds suffice (power " in text
    assert clear.plan.power >= 0.8
    analysis = planted_analysis([0.004, -0.002, 0.003])
    (unsure,) = analysis.comparisons
    text = verdict(unsure, analysis)
    assert ": no clear difference." in text
    assert f"about {unsure.plan.needed} seeds on this test set would give 80%" in text
    assert unsure.plan.needed > 3 and unsure.plan.power < 0.8
    # Every wrong prediction is confident (0.91): the counts are the wrong images per run.
    ref = np.mean([(~r.correct).sum() for r in unsure.reference.runs])
    other = np.mean([(~r.correct).sum() for r in unsure.other.runs])
    expected = f"(≥ 0.8): {ref:.1f} -> {other:.1f} per run"
    assert f"Confident failures {expected}" in text


def test_label_errors_in_the_analysis_of_planted_runs():
    """The improvement 'gains' only by predicting the given (wrong) label of known label errors:
    its accuracy rises, its clean accuracy does not, and the analysis says so."""
    errors = load_label_errors("cifar10")
    error_ids = errors.ids[:40]
    clean_ids = np.setdiff1d(np.arange(2000), errors.ids)[:1960]
    index = np.sort(np.concatenate([error_ids, clean_ids]))
    is_error = errors.is_error(index)
    target = np.where(is_error, errors.given[np.searchsorted(errors.ids, index).clip(max=53)],
                      index % 10)  # fmt: skip
    rng = np.random.default_rng(1)
    runs = []
    for seed in range(3):
        base = (rng.random(index.size) < 0.7) & ~is_error  # never "right" on a label error
        better = base | is_error  # the same, plus every label error's given label
        runs += [planted_run("baseline", seed, base, index, target),
                 planted_run("smooth", seed, better, index, target)]  # fmt: skip
    analysis = compare_groups(RunCollection(runs=runs), "baseline", (0.5, 0.8))
    ref, other = analysis.groups
    assert ref.has_label_errors and other.has_label_errors
    for group in (ref, other):
        for run in group.runs:
            keep = ~run.is_label_error
            assert group.clean_by_seed[run.seed] == pytest.approx(run.correct[keep].mean())
    # The baseline fails confidently on all 40 label errors (wrong w.r.t. the given label).
    assert ref.high_conf_label_errors[:, 1].tolist() == [40, 40, 40]
    assert other.high_conf_label_errors[:, 1].tolist() == [0, 0, 0]
    (c,) = analysis.comparisons
    assert all(t.corrected_label_errors == 40 == t.corrected for t in c.transitions.values())
    assert c.crossed.delta == pytest.approx(40 / 2000)
    assert c.crossed_clean.delta == 0 and c.crossed_clean.images == 1960
    text = verdict(c, analysis)
    assert "Without the 40 known label errors: +0.00 pp" in text
    _, rendered, _ = render(build_view(analysis, {}, ["planted"]), Path("."))
    assert "## Known label errors" in rendered and "| 40 |" in rendered
