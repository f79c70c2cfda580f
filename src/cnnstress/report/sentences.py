"""The report's sentences: the verdict of a comparison, the background reliance of a group.

Rendered from the analysis' results (:class:`~cnnstress.analysis.verdict.Verdict` and the
estimates); nothing here decides or computes a statistic.
"""

from __future__ import annotations

from cnnstress.analysis.compare import Analysis, Comparison
from cnnstress.analysis.stress import StressGroup, StressSummary
from cnnstress.analysis.verdict import CleanOutcome, Judgement, Outcome, SeedsOutcome, Verdict
from cnnstress.report.numbers import IDENTICAL, pct_points, pvalue


def _test_clause(judgement: Judgement, family: str) -> str:
    """``(95% CI +0.40 to +2.00 over seeds and test images; p = 0.004, Holm 0.008 over 2
    comparisons with this reference)``; ``family`` names one member of the Holm family."""
    test = judgement.test
    if test is None or not test.tested:
        return ""
    if judgement.family > 1:
        plural = family.replace("comparison", "comparisons", 1)
        holm = f"unadjusted, Holm {pvalue(judgement.p_holm)} over {judgement.family} {plural}"
    else:
        holm = f"unadjusted: the only {family}"
    return (
        f" (95% CI {pct_points(test.ci_low)} to {pct_points(test.ci_high)} over seeds and test "
        f"images; p = {pvalue(test.pvalue)}, {holm})"
    )


def _reason(reason: str) -> str:
    return IDENTICAL if reason.startswith("identical") else reason


def _call(judgement: Judgement) -> str:
    """``a clear gain`` / ``no clear difference (why)`` / ``untested (why)`` / ``no test
    possible (identical differences)``."""
    outcome = judgement.outcome
    if outcome.clear:
        return f"a {outcome.value}"
    if outcome is Outcome.UNTESTED:
        reason = _reason(judgement.reason)
        return reason if reason == IDENTICAL else f"untested ({reason})"
    return "no clear difference" + (f" ({judgement.reason})" if judgement.reason else "")


def _paired_clause(v: Verdict) -> str:
    paired = v.paired
    if paired.identical and v.overall.test is not None and v.overall.test.identical:
        return ""  # the call itself says it
    if paired.identical:
        return f"paired t-test over seeds: {IDENTICAL}"
    if paired.pvalue is None:
        return ""
    return (
        f"paired t-test over seeds (this test set only): p = {pvalue(paired.pvalue)} "
        f"unadjusted, Holm {pvalue(v.paired_p_holm)}"
    )


CLEAN_SENTENCES = {
    CleanOutcome.HOLDS: "so the {call} holds on the clean test set",
    CleanOutcome.REVERSES: "so it reverses on the clean test set: a {clean} there",
    CleanOutcome.NOT_CONFIRMED: "the clean test set does not confirm the {call} (no clear "
    "difference there)",
    CleanOutcome.CLEAN_ONLY: "clear only on the clean test set: a {clean} there",
    CleanOutcome.NEITHER: "no clear difference there either",
    CleanOutcome.UNTESTED: "untested there ({reason})",
}


def _clean_sentence(v: Verdict, errors: int) -> str:
    clean = v.clean
    if clean is None or clean.test is None:
        return ""
    test = clean.test
    text = f" Without the {errors} known label errors: {pct_points(test.delta)} pp"
    text += _test_clause(clean, "clean-set comparison with this reference") + ", "
    reason = _reason(clean.reason or test.reason)
    outcome = CLEAN_SENTENCES[v.clean_outcome]
    return text + outcome.format(
        call=v.overall.outcome.value, clean=clean.outcome.value, reason=reason
    ) + "."  # fmt: skip


def _seeds_sentence(v: Verdict) -> str:
    plan, n = v.plan, v.shared_seeds
    if v.seeds is SeedsOutcome.ONE_SEED:
        return " 1 shared seed: no test across training runs; run 3 or more for one."
    if v.seeds is SeedsOutcome.IDENTICAL:
        return (
            f" Seeds: {IDENTICAL}: the {n} seeds' differences are all the same, so their spread "
            "and the seeds needed are unknown."
        )
    if plan is None or plan.power is None:
        return ""
    power = f"power {plan.power:.2f} at this difference"
    if v.seeds is SeedsOutcome.SUFFICE:
        return f" The {n} seeds suffice ({power}, two-sided 5%)."
    if v.seeds is SeedsOutcome.NO_DIFFERENCE:
        return " The observed difference is 0: no number of seeds makes it significant."
    if v.seeds is SeedsOutcome.NO_NUMBER:
        return (
            f" The {n} seeds have {power}, and no number of seeds suffices on this test set: "
            f"its test-image variance alone caps the power at {plan.limit_power:.2f}."
        )
    if v.seeds is SeedsOutcome.NEED_MORE:
        return (
            f" The {n} seeds have {power}; about {plan.needed} seeds on this test set would give "
            f"{plan.target:.0%}."
        )
    return ""


def verdict(c: Comparison, analysis: Analysis) -> str:
    """One plain sentence on a comparison of ``analysis``, rendered from its :class:`Verdict`:
    the accuracy difference with its interval and test, the change in confident failures (at
    the runs' confidence threshold), the clean test set, and whether the seeds suffice."""
    v = c.verdict
    name = f"{c.other.key.name} vs {c.reference.key.name} ({'/'.join(c.other.key.setting)})"
    if not c.constrained:
        also = ", ".join(c.unconstrained_keys[:3])
        name += f", an UNCONSTRAINED comparison (also differs in {also})"
    test = None if v is None else v.overall.test
    delta = test.delta if test is not None else c.delta_mean
    text = f"{name}: accuracy {pct_points(delta)} pp"
    if v is None:
        return text + ": untested."
    clause = _test_clause(v.overall, "comparison with this reference")
    paired = _paired_clause(v)
    if clause and paired:
        clause = clause[:-1] + f"; {paired})"
    elif paired:
        clause = f" ({paired})"
    text += clause + ": " + _call(v.overall)
    column = analysis.thresholds.index(c.failure_threshold)
    ref_hce = c.reference.high_conf[:, column].mean()
    other_hce = c.other.high_conf[:, column].mean()
    change = f" ({(other_hce - ref_hce) / ref_hce * 100:+.0f}%)" if ref_hce > 0 else ""
    text += (
        f". Confident failures (≥ {c.failure_threshold:g}): {ref_hce:.1f} -> "
        f"{other_hce:.1f} per run{change}."
    )
    errors = c.reference.runs[0].is_label_error
    if errors is not None:
        text += _clean_sentence(v, int(errors.sum()))
    return text + _seeds_sentence(v)


#: The background numbers the section has a sentence for (lower = less background reliance).
BACKGROUND_NUMBERS = {
    "background/surround_share": "the surround share (cue conflict)",
    "background/only_surround/acc": "the only-surround accuracy",
    "background/bg_gap": "the BG-gap (mixed-same minus mixed-rand accuracy)",
    "background/cam/outside_correct": "the CAM mass outside the centre (correct predictions)",
}


def background(group: StressGroup, metric: str, what: str, stress: StressSummary) -> str | None:
    """``cutout lowers the surround share from 0.41 to 0.33 (paired t-test p = 0.02 unadjusted,
    Holm 0.08 over 8 background tests; 3 shared seeds)``."""
    test = group.paired(metric)
    if test is None or group.reference is None or metric not in group.values:
        return None
    before, after = group.reference.estimate(metric).mean, group.estimate(metric).mean
    verb = "lowers" if after < before else "raises" if after > before else "leaves"
    if test.pvalue is None:
        p = IDENTICAL if test.identical else "n/a"
    else:
        p = f"{pvalue(test.pvalue)} unadjusted"
        key = (group.key, metric)
        if stress.p_holm.get(key) is not None:
            size = stress.family_size[key]
            p += f", Holm {pvalue(stress.p_holm[key])} over {size} background tests"
    return (
        f"{group.key.name} {verb} {what} from {before:.3f} to {after:.3f} "
        f"(paired t-test p = {p}; {test.delta.n} shared seed(s))"
    )
