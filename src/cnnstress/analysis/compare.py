"""Groups compared with their reference: seed aggregates, transitions, the crossed test, the
verdict.

Every number here is computed from ``predictions.npz`` (not copied from ``metrics.json``), so
all groups are measured the same way. Groups are only compared within one (dataset, model)
setting; seeds are paired by their value. The statistics themselves live in
:mod:`cnnstress.analysis.statistics`, the verdict's rules in :mod:`cnnstress.analysis.verdict`.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from cnnstress.analysis.groups import group_runs, improvement_keys, other_keys
from cnnstress.analysis.runs import GroupKey, Run, RunCollection, SkippedRun
from cnnstress.analysis.statistics import (
    CrossedTest,
    Estimate,
    McNemar,
    PairedTest,
    SeedPlan,
    crossed_test,
    estimate,
    holm,
    mcnemar,
    paired_test,
    seed_plan,
    share_better,
)
from cnnstress.analysis.verdict import Verdict, decide, judge
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.identity import describe, differences
from cnnstress.core.metrics import (
    expected_calibration_error,
    high_conf_errors,
    per_class_accuracy,
)
from cnnstress.core.run_dir import run_threshold

# The confident-failure threshold used when no run of a comparison recorded one.
DEFAULT_FAILURE_THRESHOLD = 0.8


@dataclass(frozen=True)
class Transitions:
    """How the test images moved from the reference model to another one (one 2x2 table).

    ``mcnemar`` is the test of one seed's table; a sum over seeds has none (``None``): the same
    images recur in every seed, so its image x seed pairs are not independent.
    """

    corrected: int
    worsened: int
    both_wrong: int
    both_right: int
    mcnemar: McNemar | None
    # of the corrected / worsened images, how many are known label errors (None: unknown)
    corrected_label_errors: int | None = None
    worsened_label_errors: int | None = None

    @property
    def total(self) -> int:
        """Number of images counted."""
        return self.corrected + self.worsened + self.both_wrong + self.both_right


def transitions(
    reference_correct: np.ndarray,
    other_correct: np.ndarray,
    label_error: np.ndarray | None = None,
) -> Transitions:
    """Count corrected / worsened / both wrong / both right from two ``(N,)`` bool arrays, and
    with ``label_error`` ``(N,)`` how many corrected and worsened images are label errors."""
    ref, other = np.asarray(reference_correct, bool), np.asarray(other_correct, bool)
    corrected = int((~ref & other).sum())
    worsened = int((ref & ~other).sum())
    errors = {}
    if label_error is not None:
        errors = {
            "corrected_label_errors": int((~ref & other & label_error).sum()),
            "worsened_label_errors": int((ref & ~other & label_error).sum()),
        }
    return Transitions(
        corrected=corrected,
        worsened=worsened,
        both_wrong=int((~ref & ~other).sum()),
        both_right=int((ref & other).sum()),
        mcnemar=mcnemar(corrected, worsened),
        **errors,
    )


def pool_transitions(tables: Sequence[Transitions]) -> Transitions:
    """Sum per-seed tables (counts only: see :class:`Transitions`; the pooled test is
    :func:`cnnstress.analysis.statistics.crossed_test`)."""
    known = all(t.corrected_label_errors is not None for t in tables)
    return Transitions(
        corrected=sum(t.corrected for t in tables),
        worsened=sum(t.worsened for t in tables),
        both_wrong=sum(t.both_wrong for t in tables),
        both_right=sum(t.both_right for t in tables),
        mcnemar=None,
        corrected_label_errors=sum(t.corrected_label_errors for t in tables) if known else None,
        worsened_label_errors=sum(t.worsened_label_errors for t in tables) if known else None,
    )


def recorded_threshold(run: Run) -> float | None:
    """The confident-failure threshold ``run`` recorded (its ``confidence_threshold``;
    :func:`cnnstress.core.run_dir.run_threshold`), ``None`` when it is no number in [0, 1]."""
    try:
        return run_threshold(OmegaConf.to_container(run.config))
    except DataError:
        return None


def most_recorded_threshold(runs: Sequence[Run]) -> float | None:
    """The threshold most of ``runs`` recorded (the smaller on a tie; ``None``: none did)."""
    counts = Counter(t for r in runs if (t := recorded_threshold(r)) is not None)
    return min(counts, key=lambda t: (-counts[t], t)) if counts else None


def closest_to_default(thresholds: Sequence[float]) -> float:
    """The analysis threshold closest to the failures callback's default (the higher on a tie):
    the confident-failure threshold when no run recorded one."""
    return min(thresholds, key=lambda t: (abs(t - DEFAULT_FAILURE_THRESHOLD), -t))


@dataclass
class GroupResult:
    """One group's runs (sorted by seed) and their per-seed and aggregated numbers.

    Attributes:
        accuracy_by_seed / ece_by_seed: seed -> value.
        high_conf: ``(S, T)`` high-confidence error counts, one row per seed, one column per
            threshold.
        per_class: ``(C,)`` per-class accuracy averaged over seeds.
    """

    key: GroupKey
    runs: list[Run]
    accuracy_by_seed: dict[int, float]
    ece_by_seed: dict[int, float]
    high_conf: np.ndarray
    per_class: np.ndarray
    # With known label errors (official indices, CIFAR-10/100) in every run, else empty/None:
    clean_by_seed: dict[int, float] = field(default_factory=dict)
    corrected_by_seed: dict[int, float] = field(default_factory=dict)
    high_conf_label_errors: np.ndarray | None = None  # (S, T), like high_conf

    @property
    def has_label_errors(self) -> bool:
        """Whether every run's test images can be matched with the known label errors."""
        return bool(self.clean_by_seed)

    @property
    def clean_accuracy(self) -> Estimate:
        """Accuracy with the known label errors left out, over seeds."""
        return estimate(list(self.clean_by_seed.values()))

    @property
    def corrected_accuracy(self) -> Estimate:
        """Accuracy on the corrected test set (likely true classes), over seeds."""
        return estimate(list(self.corrected_by_seed.values()))

    @property
    def identity(self) -> dict[str, object]:
        """What every run of the group ran with, the seed aside."""
        return self.runs[0].group_identity

    @property
    def seeds(self) -> list[int]:
        """The group's seeds, sorted."""
        return [r.seed for r in self.runs]

    @property
    def accuracy(self) -> Estimate:
        """Test accuracy over seeds."""
        return estimate(list(self.accuracy_by_seed.values()))

    @property
    def ece(self) -> Estimate:
        """Expected calibration error over seeds."""
        return estimate(list(self.ece_by_seed.values()))

    def high_conf_estimate(self, i: int) -> Estimate:
        """High-confidence error count at threshold number ``i`` over seeds."""
        return estimate(self.high_conf[:, i].tolist())

    @property
    def recorded_thresholds(self) -> list[float]:
        """The distinct confident-failure thresholds the group's runs recorded, sorted."""
        return sorted({t for r in self.runs if (t := recorded_threshold(r)) is not None})

    @property
    def failure_threshold(self) -> float | None:
        """The threshold most of the group's runs recorded (:func:`most_recorded_threshold`)."""
        return most_recorded_threshold(self.runs)

    def run(self, seed: int) -> Run:
        """The run of ``seed``."""
        return next(r for r in self.runs if r.seed == seed)


@dataclass
class Comparison:
    """One group against its setting's reference group.

    Attributes:
        transitions: seed -> 2x2 table for every seed both groups have and evaluated on the
            same test images; ``pooled`` sums them (``None`` without any).
        crossed: the test over those seeds and the test images
            (:func:`~cnnstress.analysis.statistics.crossed_test`), ``plan`` its power and
            seeds needed; ``crossed_clean`` / ``paired_clean``: the same on the clean test set
            (known label errors left out), when known.
        per_class_delta: ``(C,)`` seed-averaged per-class accuracy, other minus reference.
        differences: ``{key: (reference value, other value)}`` for every identity key in
            which the two groups differ (the seed aside).
        failure_threshold: the confident-failure threshold of the verdict: the one the
            reference's runs recorded (else the other group's); when none did, the analysis
            threshold closest to the callback's default 0.8 (``failure_threshold_recorded``
            False).
        *_p_holm, *_family: Holm-adjusted p-values and their family sizes (set by
            :func:`compare_groups`): the accuracy comparisons with one reference are one family, the
            clean-set comparisons with it another.
        verdict: what the comparison may claim (set by :func:`compare_groups`).
    """

    reference: GroupResult
    other: GroupResult
    paired: PairedTest
    transitions: dict[int, Transitions]
    pooled: Transitions | None
    per_class_delta: np.ndarray
    crossed: CrossedTest | None = None
    plan: SeedPlan | None = None
    paired_clean: PairedTest | None = None
    crossed_clean: CrossedTest | None = None
    differences: dict[str, tuple[object, object]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failure_threshold: float = DEFAULT_FAILURE_THRESHOLD
    failure_threshold_recorded: bool = False
    crossed_p_holm: float | None = None
    paired_p_holm: float | None = None
    family: int = 1
    clean_p_holm: float | None = None
    paired_clean_p_holm: float | None = None
    clean_family: int = 1
    verdict: Verdict | None = None

    @property
    def share_better(self) -> float | None:
        """The share of shared seeds on which the group beats the reference (ties half)."""
        return share_better(self.paired.differences)

    @property
    def unconstrained_keys(self) -> list[str]:
        """Differing keys outside augmentation and loss: if any, the comparison is not of one
        constrained improvement against its reference."""
        return other_keys(list(self.differences))

    @property
    def constrained(self) -> bool:
        """Whether the groups differ only in augmentation and loss keys."""
        return not self.unconstrained_keys

    @property
    def changed_keys(self) -> list[str]:
        """Differing augmentation and loss keys."""
        return improvement_keys(list(self.differences))

    @property
    def delta_mean(self) -> float:
        """Difference of the groups' mean accuracies (over all their seeds)."""
        return self.other.accuracy.mean - self.reference.accuracy.mean


@dataclass
class Analysis:
    """Everything the plots and the report show."""

    groups: list[GroupResult]
    comparisons: list[Comparison]
    thresholds: tuple[float, ...]
    reference: str
    reference_keys: set[GroupKey]
    skipped: list[SkippedRun]
    notes: list[str] = field(default_factory=list)

    @property
    def failure_threshold(self) -> tuple[float, bool]:
        """``(threshold, recorded)``: the confident-failure threshold most analysed runs
        recorded (the smaller on a tie), else the analysis threshold closest to the callback's
        default 0.8 and ``False``."""
        recorded = most_recorded_threshold(self.runs)
        if recorded is not None:
            return recorded, True
        return closest_to_default(self.thresholds), False

    def comparison_for(self, key: GroupKey) -> Comparison | None:
        """The comparison of group ``key`` against its reference, if any."""
        return next((c for c in self.comparisons if c.other.key == key), None)

    def is_reference(self, key: GroupKey) -> bool:
        """Whether ``key`` is the reference group of its setting."""
        return key in self.reference_keys

    @property
    def runs(self) -> list[Run]:
        """Every analysed run, group by group."""
        return [r for g in self.groups for r in g.runs]

    @property
    def settings(self) -> list[tuple[str, str]]:
        """The distinct (dataset, model) settings, sorted."""
        return sorted({g.key.setting for g in self.groups})


def group_result(key: GroupKey, runs: Sequence[Run], thresholds: Sequence[float]) -> GroupResult:
    """Per-seed and aggregated numbers of one group's ``runs``."""
    runs = sorted(runs, key=lambda r: r.seed)
    num_classes = max(r.probs.shape[1] for r in runs)
    per_class = np.stack([per_class_accuracy(r.probs, r.target, num_classes) for r in runs])
    with warnings.catch_warnings():  # a class absent from every run's test set stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        per_class_mean = np.nanmean(per_class, axis=0)
    return GroupResult(
        key=key,
        runs=list(runs),
        accuracy_by_seed={r.seed: r.accuracy for r in runs},
        ece_by_seed={r.seed: expected_calibration_error(r.probs, r.target) for r in runs},
        high_conf=np.stack([high_conf_errors(r.probs, r.target, thresholds) for r in runs]),
        per_class=per_class_mean,
        **label_error_numbers(runs, thresholds),
    )


def label_error_numbers(runs: Sequence[Run], thresholds: Sequence[float]) -> dict[str, Any]:
    """Clean and corrected accuracies and label-error counts among the high-confidence errors,
    per seed; empty when any run lacks official indices or a known list."""
    if not runs or any(r.label_errors is None for r in runs):
        return {}
    clean, corrected, counts = {}, {}, []
    for run in runs:
        result = run.label_errors.clean_accuracy(run.index, run.target, run.pred)
        clean[run.seed], corrected[run.seed] = result.acc_clean, result.acc_corrected
        errors = run.is_label_error
        counts.append(high_conf_errors(run.probs[errors], run.target[errors], thresholds))
    return {
        "clean_by_seed": clean,
        "corrected_by_seed": corrected,
        "high_conf_label_errors": np.stack(counts),
    }


def compare(reference: GroupResult, other: GroupResult) -> Comparison:
    """Compare ``other`` with ``reference`` (same dataset and model) seed by seed."""
    if reference.key.setting != other.key.setting:
        raise ValueError(f"cannot compare {other.key.label} with {reference.key.label}")
    notes = []
    tables: dict[int, Transitions] = {}
    for seed in sorted(set(reference.seeds) & set(other.seeds)):
        ref_run, other_run = reference.run(seed), other.run(seed)
        same_images = np.array_equal(ref_run.index, other_run.index) and np.array_equal(
            ref_run.target, other_run.target
        )
        if not same_images:
            notes.append(f"seed {seed}: the two runs were tested on different images; no table")
            continue
        tables[seed] = transitions(ref_run.correct, other_run.correct, ref_run.is_label_error)
    if not tables:
        notes.append("no seed shared with the reference on the same test images: no transitions")
    crossed = crossed_clean = paired_clean = None
    seeds = list(tables)
    if seeds and all(
        np.array_equal(reference.run(s).index, reference.run(seeds[0]).index) for s in seeds
    ):
        crossed = crossed_test(
            np.stack([reference.run(s).correct for s in seeds]),
            np.stack([other.run(s).correct for s in seeds]),
        )
    elif seeds:
        notes.append("the seeds were tested on different images: no test over seeds and images")
    if crossed is not None and reference.has_label_errors and other.has_label_errors:
        paired_clean = paired_test(reference.clean_by_seed, other.clean_by_seed)
        keep = ~reference.run(seeds[0]).is_label_error
        crossed_clean = crossed_test(
            np.stack([reference.run(s).correct[keep] for s in seeds]),
            np.stack([other.run(s).correct[keep] for s in seeds]),
        )
    return Comparison(
        reference=reference,
        other=other,
        paired=paired_test(reference.accuracy_by_seed, other.accuracy_by_seed),
        transitions=tables,
        pooled=pool_transitions(list(tables.values())) if tables else None,
        per_class_delta=other.per_class - reference.per_class,
        crossed=crossed,
        plan=None if crossed is None else seed_plan(crossed),
        paired_clean=paired_clean,
        crossed_clean=crossed_clean,
        differences=differences(reference.identity, other.identity),
        notes=notes,
    )


def _threshold_text(threshold: float) -> str:
    return f"{threshold:g}"


def set_failure_threshold(c: Comparison, thresholds: Sequence[float]) -> None:
    """Pick the verdict's confident-failure threshold of ``c`` (see :class:`Comparison`) and
    warn in ``c.notes`` when its groups recorded different ones."""
    recorded_one = c.reference.failure_threshold
    if recorded_one is None:
        recorded_one = c.other.failure_threshold
    c.failure_threshold_recorded = recorded_one is not None
    chosen = closest_to_default(thresholds) if recorded_one is None else recorded_one
    c.failure_threshold = chosen
    recorded = {g.key.name: g.recorded_thresholds for g in (c.reference, c.other)}
    if len({t for ts in recorded.values() for t in ts}) > 1:
        listed = "; ".join(
            f"{name}: {', '.join(map(_threshold_text, ts)) or 'none'}"
            for name, ts in recorded.items()
        )
        c.notes.append(
            f"the runs recorded different confident-failure thresholds ({listed}): the verdict "
            f"counts both groups at >= {_threshold_text(chosen)}"
        )


def _holm_family(comparisons: Sequence[Comparison]) -> None:
    """Holm-adjust the p-values of the comparisons with one reference and decide each verdict.

    Families: the crossed tests of the whole test set; the paired t-tests; the crossed tests of
    the clean test set; the clean paired t-tests.
    """

    def p(test: CrossedTest | PairedTest | None) -> float | None:
        return None if test is None else test.pvalue

    crossed = holm([p(c.crossed) for c in comparisons])
    paired = holm([p(c.paired) for c in comparisons])
    clean = holm([p(c.crossed_clean) for c in comparisons])
    paired_clean = holm([p(c.paired_clean) for c in comparisons])
    family = sum(x is not None for x in crossed)
    clean_family = sum(x is not None for x in clean)
    for i, c in enumerate(comparisons):
        c.crossed_p_holm, c.paired_p_holm, c.family = crossed[i], paired[i], family
        c.clean_p_holm, c.paired_clean_p_holm = clean[i], paired_clean[i]
        c.clean_family = clean_family
        clean_judgement = None
        if c.crossed_clean is not None:
            clean_judgement = judge(c.crossed_clean, c.clean_p_holm, clean_family)
        c.verdict = decide(
            judge(c.crossed, c.crossed_p_holm, family),
            c.paired,
            c.paired_p_holm,
            c.plan,
            clean_judgement,
        )


# Splits "a=1, b=[x, y]" into its key=value items (a comma inside a value is not a split).
_ITEM_SPLIT = re.compile(r", (?=[\w.+~-]+=)")


def _name_parts(name: str) -> tuple[str, set[str]]:
    """``"baseline [k=v, k2=v2]"`` -> ``("baseline", {"k=v", "k2=v2"})``."""
    base, _, rest = name.partition(" [")
    items = rest.removesuffix("]")
    return base.split(" #", 1)[0], set(_ITEM_SPLIT.split(items)) if items else set()


def _matches(group: GroupResult, reference: str) -> bool:
    """Whether ``reference`` names ``group``: its full label, its name, its name without the
    ``[key=value, ...]`` part that tells same-named groups apart, or its name with some of
    those items (``'baseline [trainer.precision=32-true]'``)."""
    name = group.key.name
    if reference in (group.key.label, name):
        return True
    base, items = _name_parts(name)
    wanted_base, wanted = _name_parts(reference)
    return wanted_base == base and wanted <= items


def _closest(group: GroupResult, candidates: Sequence[GroupResult]) -> GroupResult:
    """The reference candidate ``group`` differs from in the fewest keys outside augmentation
    and loss (then in the fewest keys at all; then by label)."""

    def distance(candidate: GroupResult) -> tuple[int, int, str]:
        keys = list(differences(candidate.identity, group.identity))
        return (len(other_keys(keys)), len(keys), candidate.key.label)

    return min(candidates, key=distance)


def compare_groups(
    collection: RunCollection, reference: str = "baseline", thresholds: Sequence[float] = (0.5,)
) -> Analysis:
    """Group the runs by what they ran (:mod:`cnnstress.analysis.groups`) and compare each group
    with a reference group of its (dataset, model) setting.

    ``thresholds`` are the confident-failure thresholds counted; every threshold a run
    recorded (its failures callback's) is added, so the verdict can use it.
    ``reference`` is a group name (``baseline``, ``augmentation=[]``) or a full group label
    ``dataset/model/name``. When several groups of a setting match it, each other group is
    compared with the one it differs from least. A comparison whose groups also differ outside
    augmentation and loss is kept but marked unconstrained (:attr:`Comparison.constrained`).

    Raises:
        ConfigError: ``reference`` names no group while some setting has groups to compare.
    """
    recorded = {t for r in collection.runs if (t := recorded_threshold(r)) is not None}
    thresholds = tuple(sorted({float(t) for t in thresholds} | recorded))
    groups = [group_result(k, runs, thresholds) for k, runs in group_runs(collection.runs).items()]
    candidates = [g for g in groups if _matches(g, reference)]
    settings = sorted({g.key.setting for g in groups})
    if not candidates and any(sum(g.key.setting == s for g in groups) > 1 for s in settings):
        names = ", ".join(sorted({g.key.name for g in groups}))
        raise ConfigError(
            f"reference={reference} matches no group; give a group name ({names}), "
            "a group label dataset/model/name, or a name with some of its [key=value] items"
        )
    is_reference = {g.key for g in candidates}
    # Within a setting the reference(s) come first, then the other groups by name.
    groups.sort(key=lambda g: (g.key.setting, g.key not in is_reference, g.key.name))
    notes: list[str] = []
    comparisons = []
    for setting in settings:
        members = [g for g in groups if g.key.setting == setting]
        refs = [g for g in members if g.key in is_reference]
        if not refs:
            if len(members) > 1:
                notes.append(
                    f"{'/'.join(setting)} has no reference group ({reference}): "
                    "its groups are summarised but not compared"
                )
            continue
        if len(refs) > 1:
            notes.append(
                f"{len(refs)} groups of {'/'.join(setting)} match reference={reference} "
                f"({', '.join(g.key.name for g in refs)}): each other group is compared with "
                "the one it differs from least"
            )
        for group in members:
            if group.key in is_reference:
                continue
            comparison = compare(_closest(group, refs), group)
            comparisons.append(comparison)
            if not comparison.constrained:
                notes.append(
                    f"{group.key.label} vs {comparison.reference.key.name}: unconstrained "
                    f"comparison, the groups also differ in "
                    f"{describe(comparison.differences, keys=comparison.unconstrained_keys)}"
                )
    for c in comparisons:
        set_failure_threshold(c, thresholds)
    for ref_key in {c.reference.key for c in comparisons}:
        _holm_family([c for c in comparisons if c.reference.key == ref_key])
    return Analysis(
        groups=groups,
        comparisons=comparisons,
        thresholds=thresholds,
        reference=reference,
        reference_keys=is_reference,
        skipped=list(collection.skipped),
        notes=notes,
    )
