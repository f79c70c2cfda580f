"""The verdict's decision rules as data: what a comparison may claim, from its statistics.

One :class:`Verdict` per comparison of a group with its reference, computed by :func:`decide`
from the crossed images x seeds test (:func:`cnnstress.analysis.statistics.crossed_test`) of
the whole test set and of the clean test set, their Holm-adjusted p-values, the paired t-test
and the seed plan. The report only words it.

The rules:

- **clear gain / clear loss**: the crossed test's p-value, Holm-adjusted over the comparisons
  with the same reference, is below ``alpha`` (0.05); the sign of the difference says which.
  Chosen by simulation (``bench/verdict_calibration.py``): the crossed test alone keeps the
  false-positive rate near 5% with and without a seed effect; a second condition (the paired
  t-test, as the previous rule had) could only lower its power and push that rate below 5%, and
  the t-test does not count the test-image variance.
  Otherwise **unclear**, or **untested** when the crossed test could not run (one shared seed,
  identical per-seed differences, no shared images).
- **the clean test set** (known label errors left out) is judged on its own, by the same rule
  with its own Holm family: the overall call holds there, reverses, is not confirmed, or the
  difference is clear only there, or neither is clear.
- **seeds**: "suffice" only when the crossed test's power at the observed difference is at least
  0.8; else about K seeds are needed (K > the seeds there are), or no number suffices on this
  test set (its image variance alone caps the power), or no test is possible (identical
  differences, one shared seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cnnstress.analysis.statistics import ALPHA, CrossedTest, PairedTest, SeedPlan


class Outcome(str, Enum):
    """The call on one test set."""

    CLEAR_GAIN = "clear gain"
    CLEAR_LOSS = "clear loss"
    UNCLEAR = "unclear"
    UNTESTED = "untested"

    @property
    def clear(self) -> bool:
        """A clear gain or a clear loss."""
        return self in (Outcome.CLEAR_GAIN, Outcome.CLEAR_LOSS)


class CleanOutcome(str, Enum):
    """The clean test set's call next to the whole test set's."""

    HOLDS = "holds on the clean test set"
    REVERSES = "reverses on the clean test set"
    NOT_CONFIRMED = "not confirmed on the clean test set"
    CLEAN_ONLY = "clear only on the clean test set"
    NEITHER = "unclear on both"
    UNTESTED = "untested on the clean test set"


class SeedsOutcome(str, Enum):
    """Whether the seeds suffice for the observed difference."""

    SUFFICE = "suffice"
    NEED_MORE = "need more"
    NO_NUMBER = "no number of seeds suffices on this test set"
    IDENTICAL = "no test possible (identical differences)"
    ONE_SEED = "one shared seed"
    NO_DIFFERENCE = "the observed difference is 0"
    UNTESTED = "untested"


@dataclass(frozen=True)
class Judgement:
    """The call on one test set.

    Attributes:
        outcome: clear gain / clear loss / unclear / untested.
        test: the crossed test (``None``: none could run, see ``reason``).
        p_holm: its p-value Holm-adjusted within ``family`` comparisons with one reference.
        reason: why it is untested, or why an interval that excludes 0 is still unclear.
    """

    outcome: Outcome
    test: CrossedTest | None
    p_holm: float | None
    family: int
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    """What one comparison may claim.

    Attributes:
        overall: the whole test set.
        clean: the clean test set (``None``: label errors unknown).
        clean_outcome: the clean call next to the overall one (``None`` without ``clean``).
        seeds: whether the seeds suffice; ``plan`` the numbers behind it.
        shared_seeds: seeds both groups have; ``paired`` the paired t-test over them, with
            ``paired_p_holm`` Holm-adjusted like the crossed test.
    """

    overall: Judgement
    clean: Judgement | None
    clean_outcome: CleanOutcome | None
    seeds: SeedsOutcome
    plan: SeedPlan | None
    shared_seeds: int
    paired: PairedTest
    paired_p_holm: float | None


def judge(
    test: CrossedTest | None,
    p_holm: float | None,
    family: int,
    alpha: float = ALPHA,
    missing: str = "no seed shared on the same test images",
) -> Judgement:
    """Clear gain / clear loss / unclear / untested for one crossed test (``missing``: the
    reason when there is no test at all)."""
    if test is None:
        return Judgement(Outcome.UNTESTED, None, None, family, missing)
    if not test.tested:
        return Judgement(Outcome.UNTESTED, test, None, family, test.reason)
    p = test.pvalue if p_holm is None else p_holm
    if p < alpha:
        outcome = Outcome.CLEAR_GAIN if test.delta > 0 else Outcome.CLEAR_LOSS
        return Judgement(outcome, test, p, family)
    reason = ""
    if test.excludes_zero:
        reason = f"the 95% interval excludes 0, but not after Holm over {family} comparisons"
    return Judgement(Outcome.UNCLEAR, test, p, family, reason)


def clean_outcome(overall: Judgement, clean: Judgement | None) -> CleanOutcome | None:
    """The clean test set's call next to the overall one."""
    if clean is None:
        return None
    if clean.outcome is Outcome.UNTESTED:
        return CleanOutcome.UNTESTED
    if overall.outcome.clear and clean.outcome.clear:
        same = overall.outcome is clean.outcome
        return CleanOutcome.HOLDS if same else CleanOutcome.REVERSES
    if overall.outcome.clear:
        return CleanOutcome.NOT_CONFIRMED
    return CleanOutcome.CLEAN_ONLY if clean.outcome.clear else CleanOutcome.NEITHER


def seeds_outcome(
    test: CrossedTest | None, plan: SeedPlan | None, shared_seeds: int
) -> SeedsOutcome:
    """Whether the seeds suffice; never asks for seeds that exist (``needed > seeds``)."""
    if shared_seeds == 1 or (test is not None and test.seeds == 1):
        return SeedsOutcome.ONE_SEED
    if test is not None and test.identical:
        return SeedsOutcome.IDENTICAL
    if test is None or not test.tested or plan is None or plan.power is None:
        return SeedsOutcome.UNTESTED
    if test.delta == 0:
        return SeedsOutcome.NO_DIFFERENCE
    if plan.suffice:
        return SeedsOutcome.SUFFICE
    if plan.unreachable:
        return SeedsOutcome.NO_NUMBER
    return SeedsOutcome.NEED_MORE if plan.needed is not None else SeedsOutcome.UNTESTED


def decide(
    overall: Judgement,
    paired: PairedTest,
    paired_p_holm: float | None,
    plan: SeedPlan | None,
    clean: Judgement | None = None,
) -> Verdict:
    """The verdict of one comparison from its judgements (:func:`judge`) and statistics."""
    return Verdict(
        overall=overall,
        clean=clean,
        clean_outcome=clean_outcome(overall, clean),
        seeds=seeds_outcome(overall.test, plan, len(paired.seeds)),
        plan=plan,
        shared_seeds=len(paired.seeds),
        paired=paired,
        paired_p_holm=paired_p_holm,
    )
