"""The verdict's rules (cnnstress.analysis.verdict) and its sentences on planted runs."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import special

from cnnstress.analysis.compare import Analysis, compare_groups
from cnnstress.analysis.runs import Run, RunCollection
from cnnstress.analysis.statistics import (
    CrossedTest,
    PairedTest,
    SeedPlan,
    VarianceComponents,
    estimate,
    holm,
)
from cnnstress.analysis.verdict import (
    CleanOutcome,
    Outcome,
    SeedsOutcome,
    clean_outcome,
    decide,
    judge,
    seeds_outcome,
)
from cnnstress.core.data.label_errors import load_label_errors
from cnnstress.report.csv_files import write_summary, write_transitions
from cnnstress.report.sentences import verdict
from cnnstress.report.view import build_view
from cnnstress.report.write import render
from tests.test_analysis_stats import planted_run

PARTS = VarianceComponents(0.1, 0.1, 0.1, 0.0, 0.0, 0.1)


def crossed(delta: float, p: float | None, half: float = 0.01, reason: str = "") -> CrossedTest:
    """A crossed test with difference ``delta``, p-value ``p`` and interval ``delta -/+ half``."""
    if p is None:
        return CrossedTest(delta, None, None, None, None, None, 3, 1000, PARTS, reason=reason)
    return CrossedTest(delta, half / 2, 2.0, delta - half, delta + half, p, 3, 1000, PARTS)


def test_clear_needs_the_holm_adjusted_crossed_p():
    assert judge(crossed(0.02, 0.01), 0.01, 1).outcome is Outcome.CLEAR_GAIN
    assert judge(crossed(-0.02, 0.01), 0.03, 2).outcome is Outcome.CLEAR_LOSS
    adjusted = judge(crossed(0.02, 0.03, half=0.015), 0.06, 2)
    assert adjusted.outcome is Outcome.UNCLEAR
    assert adjusted.reason == "the 95% interval excludes 0, but not after Holm over 2 comparisons"
    untested = judge(crossed(0.05, None, reason="identical per-seed differences: ..."), None, 1)
    assert untested.outcome is Outcome.UNTESTED and untested.reason.startswith("identical")
    assert judge(None, None, 1).reason == "no seed shared on the same test images"


@pytest.mark.parametrize(
    ("overall", "clean", "expected"),
    [
        ((0.02, 0.001), (0.025, 0.001), CleanOutcome.HOLDS),
        ((0.02, 0.001), (-0.03, 0.001), CleanOutcome.REVERSES),
        ((0.02, 0.001), (0.004, 0.4), CleanOutcome.NOT_CONFIRMED),
        ((0.002, 0.6), (0.0158, 0.003), CleanOutcome.CLEAN_ONLY),
        ((0.002, 0.6), (0.003, 0.5), CleanOutcome.NEITHER),
        ((0.002, 0.6), (0.003, None), CleanOutcome.UNTESTED),
    ],
)
def test_the_clean_test_set_is_judged_on_its_own(overall, clean, expected):
    whole = judge(crossed(*overall), overall[1], 1)
    assert clean_outcome(whole, judge(crossed(*clean), clean[1], 1)) is expected
    assert clean_outcome(whole, None) is None


def plan(power: float, needed: int | None = None, limit: float = 1.0) -> SeedPlan:
    return SeedPlan(3, power, 0.01, needed, limit)


def test_seeds_suffice_only_at_80_percent_power_and_never_ask_for_seeds_that_exist():
    test = crossed(0.011, 0.06)
    assert seeds_outcome(test, plan(0.85), 3) is SeedsOutcome.SUFFICE
    assert seeds_outcome(test, plan(0.61, needed=7), 3) is SeedsOutcome.NEED_MORE
    assert seeds_outcome(test, plan(0.3, limit=0.5), 3) is SeedsOutcome.NO_NUMBER
    identical = crossed(0.05, None, reason="identical per-seed differences: unknown spread")
    assert seeds_outcome(identical, None, 3) is SeedsOutcome.IDENTICAL
    assert seeds_outcome(crossed(0.0, 1.0), plan(0.05, needed=None, limit=0.05), 3) in (
        SeedsOutcome.NO_DIFFERENCE,
    )
    one = CrossedTest(0.02, None, None, None, None, None, 1, 1000, PARTS, reason="one seed")
    assert seeds_outcome(one, None, 1) is SeedsOutcome.ONE_SEED


def test_decide_puts_the_calls_together():
    paired = PairedTest((1, 2, 3), estimate([0.01, 0.012, 0.011]), 10.0, 0.01, (0.01, 0.012))
    v = decide(judge(crossed(0.011, 0.2), 0.2, 1), paired, 0.01, plan(0.3, needed=9),
               judge(crossed(0.0158, 0.003), 0.003, 1))  # fmt: skip
    assert (v.overall.outcome, v.clean_outcome, v.seeds) == (
        Outcome.UNCLEAR, CleanOutcome.CLEAN_ONLY, SeedsOutcome.NEED_MORE,
    )  # fmt: skip
    assert v.shared_seeds == 3 and v.paired_p_holm == 0.01


# -- sentences on planted runs ----------------------------------------------------------------
BETA = (0.35, 0.04)  # per-image success probabilities, mean ~0.9: churn of a few % of images


def _analysis(runs: list[Run], thresholds: tuple[float, ...] = (0.5, 0.8)) -> Analysis:
    return compare_groups(RunCollection(runs=runs), "baseline", thresholds)


def _clean_only() -> Analysis:
    """The improvement predicts something else than the given label on every known label error
    (where the reference predicts the given one) and gains about 2.8 pp on the clean images: on
    the whole test set the two cancel, on the clean set the gain is clear."""
    errors = load_label_errors("cifar10")
    clean_ids = np.setdiff1d(np.arange(3000), errors.ids)[: 2000 - errors.ids.size]
    index = np.sort(np.concatenate([errors.ids, clean_ids]))
    is_error = errors.is_error(index)
    given = errors.given[np.searchsorted(errors.ids, index).clip(max=errors.ids.size - 1)]
    target = np.where(is_error, given, index % 10)
    rng = np.random.default_rng(7)
    logit = special.logit(rng.beta(*BETA, index.size).clip(1e-9, 1 - 1e-9))
    runs = []
    for seed in range(3):
        base = (rng.random(index.size) < special.expit(logit)) | is_error
        better = (rng.random(index.size) < special.expit(logit + 1.2)) & ~is_error
        runs += [planted_run("baseline", seed, base, index, target),
                 planted_run("smooth", seed, better, index, target)]  # fmt: skip
    return _analysis(runs)


def test_a_clear_gain_on_the_clean_set_is_said_when_the_whole_set_shows_none():
    analysis = _clean_only()
    (c,) = analysis.comparisons
    v = c.verdict
    assert c.crossed.ci_low < 0 < c.crossed.ci_high and v.overall.outcome is Outcome.UNCLEAR
    assert v.clean.outcome is Outcome.CLEAR_GAIN and v.clean_outcome is CleanOutcome.CLEAN_ONLY
    text = verdict(c, analysis)
    clean = c.crossed_clean
    assert (
        f"Without the 54 known label errors: {clean.delta * 100:+.2f} pp (95% CI "
        f"{clean.ci_low * 100:+.2f} to {clean.ci_high * 100:+.2f} over seeds and test images"
    ) in text
    assert "clear only on the clean test set: a clear gain there." in text
    assert "no clear difference there either" not in text


def test_identical_per_seed_differences_say_no_test_possible_and_ask_no_seeds():
    rng = np.random.default_rng(0)
    runs = []
    for seed in range(3):
        base = rng.random(2000) < 0.7
        better = base.copy()
        better[rng.choice(np.flatnonzero(~base), 100, replace=False)] = True  # +5.00 pp each
        runs += [planted_run("baseline", seed, base), planted_run("smooth", seed, better)]
    analysis = _analysis(runs)
    (c,) = analysis.comparisons
    assert c.verdict.overall.outcome is Outcome.UNTESTED
    assert c.verdict.seeds is SeedsOutcome.IDENTICAL
    text = verdict(c, analysis)
    assert "accuracy +5.00 pp: no test possible (identical differences). " in text
    assert "Seeds: no test possible (identical differences): the 3 seeds' differences" in text
    assert "run 3 or more" not in text and "seeds on this test set would give" not in text
    assert "does not confirm" not in text


def _churned_runs(seed_gains: list[int], images: int = 2000) -> list[Run]:
    """Runs whose per-image correctness is drawn afresh per run (heterogeneous difficulty), the
    other group exactly ``seed_gains[s]`` more images right than the reference on seed ``s``."""
    rng = np.random.default_rng(5)
    p = rng.beta(*BETA, images)
    runs = []
    for seed, gain in enumerate(seed_gains):
        base, better = rng.random(images) < p, rng.random(images) < p
        now = int(better.sum() - base.sum())
        pool = np.flatnonzero(~better if gain > now else better)
        better[pool[: abs(gain - now)]] = gain > now
        runs += [planted_run("baseline", seed, base), planted_run("smooth", seed, better)]
    return runs


def test_two_seeds_of_1_0_and_1_2_pp_do_not_suffice():
    """The issue's case: statsmodels' solve_power gave NaN for the paired t-test's effect size
    (7.8) and the verdict said the seeds 'suffice' at power 0.61."""
    analysis = _analysis(_churned_runs([20, 24]))
    (c,) = analysis.comparisons
    assert c.paired.differences == pytest.approx((0.010, 0.012))
    plan = c.plan
    assert plan.power < 0.8 and plan.needed > 2
    assert c.verdict.seeds is SeedsOutcome.NEED_MORE
    text = verdict(c, analysis)
    assert "suffice" not in text
    assert (
        f"The 2 seeds have power {plan.power:.2f} at this difference; about {plan.needed} seeds "
        "on this test set would give 80%."
    ) in text


def _with_threshold(run: Run, threshold: float) -> Run:
    config = OmegaConf.merge(
        run.config, {"callbacks": {"high_conf_failures": {"threshold": threshold}}}
    )
    return dataclasses.replace(run, config=config)


def test_confident_failures_at_the_threshold_the_runs_recorded():
    runs = _churned_runs([20, 24, 10])
    analysis = _analysis([_with_threshold(r, 0.9) for r in runs], thresholds=(0.5,))
    assert analysis.thresholds == (0.5, 0.9)  # the recorded threshold is counted
    (c,) = analysis.comparisons
    assert (c.failure_threshold, c.failure_threshold_recorded) == (0.9, True)
    assert not c.notes
    ref = np.mean([(~r.correct).sum() for r in c.reference.runs])  # all wrong ones at 0.91
    assert f"Confident failures (≥ 0.9): {ref:.1f} -> " in verdict(c, analysis)
    # groups that recorded different thresholds: counted at the reference's, with a warning
    mixed = [_with_threshold(r, 0.9 if r.improvement == "baseline" else 0.8) for r in runs]
    analysis = _analysis(mixed, thresholds=(0.5,))
    assert analysis.thresholds == (0.5, 0.8, 0.9)
    (c,) = analysis.comparisons
    assert c.failure_threshold == 0.9
    assert c.notes == [
        "the runs recorded different confident-failure thresholds (baseline: 0.9; smooth: 0.8): "
        "the verdict counts both groups at >= 0.9"
    ]
    assert "Confident failures (≥ 0.9): " in verdict(c, analysis)


def _renamed(run: Run, name: str, smoothing: float) -> Run:
    """``run`` as the improvement ``name`` with label smoothing ``smoothing`` (its own group)."""
    config = OmegaConf.merge(run.config, {"module": {"loss": {"label_smoothing": smoothing}}})
    identity = {**run.identity, "module.loss.label_smoothing": smoothing}
    return dataclasses.replace(run, config=config, identity=identity, improvement=name)


def test_holm_family_is_the_comparisons_with_one_reference():
    rng = np.random.default_rng(11)
    runs = []
    for seed in range(3):
        base = rng.random(1000) < 0.8
        runs.append(planted_run("baseline", seed, base))
        for name, share in (("smooth", 0.3), ("cutout", 0.1)):
            other = base.copy()
            flip = rng.choice(np.flatnonzero(~base), int(share * (~base).sum()), replace=False)
            other[flip] = True
            runs.append(_renamed(planted_run("smooth", seed, other), name, share))
    analysis = _analysis(runs)
    assert len(analysis.comparisons) == 2
    raw = [c.crossed.pvalue for c in analysis.comparisons]
    assert [c.crossed_p_holm for c in analysis.comparisons] == pytest.approx(holm(raw))
    assert all(c.family == 2 for c in analysis.comparisons)
    paired = holm([c.paired.pvalue for c in analysis.comparisons])
    assert [c.paired_p_holm for c in analysis.comparisons] == pytest.approx(paired)
    text = verdict(analysis.comparisons[0], analysis)
    first = analysis.comparisons[0]
    assert (
        f"p = {first.crossed.pvalue:.3g}, unadjusted, Holm {first.crossed_p_holm:.3g} over 2 "
        "comparisons with this reference"
    ) in text


def test_the_files_say_which_p_values_are_adjusted(tmp_path):
    analysis = _clean_only()
    (c,) = analysis.comparisons
    rows = list(csv.DictReader(write_summary(analysis, tmp_path / "s.csv").open()))
    row = next(r for r in rows if r["name"] == "smooth")
    assert {
        "crossed_delta",
        "crossed_ci_low",
        "crossed_ci_high",
        "paired_p_unadjusted",
        "paired_p_holm",
        "seeds_needed",
    } <= set(row)
    assert float(row["crossed_p_unadjusted"]) == pytest.approx(c.crossed.pvalue)
    assert float(row["crossed_p_holm"]) == pytest.approx(c.crossed_p_holm)
    assert float(row["crossed_ci_low"]) == pytest.approx(c.crossed.ci_low)
    assert float(row["clean_p_unadjusted"]) == pytest.approx(c.crossed_clean.pvalue)
    assert (row["verdict"], row["verdict_clean"]) == (
        "unclear", "clear only on the clean test set"
    )  # fmt: skip
    assert row["holm_family_size"] == row["clean_holm_family_size"] == "1"
    assert not any(name.endswith("_p") or "bootstrap" in name for name in row)
    lines = (write_transitions(analysis, tmp_path / "t.csv")).read_text().splitlines()
    assert "p_unadjusted" in lines[0].split(",")
    assert lines[-1].split(",")[2:3] == ["pooled"] and "crossed-seeds-x-images" in lines[-1]
    _, rendered, _ = render(build_view(analysis, {}, ["planted"]), tmp_path)
    assert "clear only on the clean test set" in rendered
    assert "p clean, unadjusted (Holm over the clean-set comparisons)" in rendered
