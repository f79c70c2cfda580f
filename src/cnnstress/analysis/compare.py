"""Statistics over run groups: seed aggregates, paired tests, transitions, McNemar, calibration.

Every number here is computed from ``predictions.npz`` (not copied from ``metrics.json``), so
all groups are measured the same way. Groups are only compared within one (dataset, model)
setting; seeds are paired by their value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from torchmetrics.functional.classification import multiclass_calibration_error

from cnnstress.analysis.runs import GroupKey, Run, RunCollection, SkippedRun, config_differences
from cnnstress.errors import ConfigError

# Below this many discordant pairs McNemar's test uses the exact binomial distribution; from
# it on, the chi-square approximation with continuity correction (Edwards 1948). 25 is the
# usual rule of thumb (the approximation is poor for few discordant pairs).
MCNEMAR_EXACT_BELOW = 25
ECE_BINS = 15


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with the sample standard deviation (ddof=1) and a 95% t-interval.

    ``std``, ``ci_low`` and ``ci_high`` are ``None`` when fewer than two values exist: one
    seed says nothing about seed-to-seed spread.
    """

    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


def estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Aggregate per-seed ``values`` into an :class:`Estimate`."""
    data = np.asarray(values, dtype=np.float64)
    n = int(data.size)
    if n == 0:
        return Estimate(math.nan, None, None, None, 0)
    mean = float(data.mean())
    if n < 2:
        return Estimate(mean, None, None, None, n)
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return Estimate(mean, std, mean - half, mean + half, n)


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on the discordant pairs of two classifiers on the same images.

    Attributes:
        corrected: images the reference got wrong and the other model right (b).
        worsened: images the reference got right and the other model wrong (c).
        method: ``"exact"`` (two-sided binomial test of b ~ Bin(b + c, 1/2); ``statistic`` is
            min(b, c)) or ``"chi2-cc"`` (chi-square with continuity correction, 1 dof;
            ``statistic`` is (|b - c| - 1)^2 / (b + c)).
    """

    corrected: int
    worsened: int
    method: str
    statistic: float
    pvalue: float


def mcnemar(corrected: int, worsened: int, exact_below: int = MCNEMAR_EXACT_BELOW) -> McNemar:
    """McNemar's test: exact when ``corrected + worsened < exact_below``, else chi-square (cc)."""
    b, c = int(corrected), int(worsened)
    n = b + c
    if n < exact_below:
        pvalue = 1.0 if n == 0 else float(stats.binomtest(b, n, 0.5).pvalue)
        return McNemar(b, c, "exact", float(min(b, c)), pvalue)
    statistic = (abs(b - c) - 1) ** 2 / n
    return McNemar(b, c, "chi2-cc", float(statistic), float(stats.chi2.sf(statistic, df=1)))


@dataclass(frozen=True)
class Transitions:
    """How the test images moved from the reference model to another one (one 2x2 table)."""

    corrected: int
    worsened: int
    both_wrong: int
    both_right: int
    mcnemar: McNemar

    @property
    def total(self) -> int:
        """Number of images counted."""
        return self.corrected + self.worsened + self.both_wrong + self.both_right


def transitions(reference_correct: np.ndarray, other_correct: np.ndarray) -> Transitions:
    """Count corrected / worsened / both wrong / both right from two ``(N,)`` bool arrays."""
    ref, other = np.asarray(reference_correct, bool), np.asarray(other_correct, bool)
    corrected = int((~ref & other).sum())
    worsened = int((ref & ~other).sum())
    return Transitions(
        corrected=corrected,
        worsened=worsened,
        both_wrong=int((~ref & ~other).sum()),
        both_right=int((ref & other).sum()),
        mcnemar=mcnemar(corrected, worsened),
    )


def pool_transitions(tables: Sequence[Transitions]) -> Transitions:
    """Sum per-seed tables; McNemar's test on the sum treats image x seed pairs as independent."""
    corrected = sum(t.corrected for t in tables)
    worsened = sum(t.worsened for t in tables)
    return Transitions(
        corrected=corrected,
        worsened=worsened,
        both_wrong=sum(t.both_wrong for t in tables),
        both_right=sum(t.both_right for t in tables),
        mcnemar=mcnemar(corrected, worsened),
    )


@dataclass(frozen=True)
class PairedTest:
    """Accuracy difference (other - reference) over the seeds both groups have.

    ``delta`` aggregates the per-seed differences; ``t`` and ``pvalue`` come from a paired
    t-test (:func:`scipy.stats.ttest_rel`) and are ``None`` with fewer than two shared seeds
    or when the differences have no spread.
    """

    seeds: tuple[int, ...]
    delta: Estimate
    t: float | None
    pvalue: float | None


def paired_test(reference: Mapping[int, float], other: Mapping[int, float]) -> PairedTest:
    """Pair per-seed values by seed and test whether their mean difference is zero."""
    seeds = tuple(sorted(set(reference) & set(other)))
    ref = np.array([reference[s] for s in seeds], dtype=np.float64)
    oth = np.array([other[s] for s in seeds], dtype=np.float64)
    delta = estimate(oth - ref)
    t = p = None
    # Differences that agree to rounding error have no spread to test (t would be noise).
    if len(seeds) >= 2 and np.ptp(oth - ref) > 1e-12:
        result = stats.ttest_rel(oth, ref)
        t, p = float(result.statistic), float(result.pvalue)
    return PairedTest(seeds, delta, t, p)


def high_conf_errors(
    probs: np.ndarray, target: np.ndarray, thresholds: Sequence[float]
) -> np.ndarray:
    """``(T,)`` int: wrong top-1 predictions with confidence >= each threshold.

    Args:
        probs: ``(N, C)`` probabilities. target: ``(N,)`` classes.
    """
    confidence, wrong = probs.max(1), probs.argmax(1) != target
    return np.array([int((wrong & (confidence >= t)).sum()) for t in thresholds], dtype=np.int64)


def per_class_accuracy(probs: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C,)`` accuracy per true class (NaN for a class with no test image)."""
    correct = (probs.argmax(1) == target).astype(np.float64)
    hits = np.bincount(target, weights=correct, minlength=num_classes)
    counts = np.bincount(target, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def expected_calibration_error(
    probs: np.ndarray, target: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Top-1 ECE (L1, ``n_bins`` equal-width bins), as torchmetrics and the callbacks compute it."""
    return float(
        multiclass_calibration_error(
            torch.from_numpy(probs).float(),
            torch.from_numpy(target).long(),
            num_classes=probs.shape[1],
            n_bins=n_bins,
            norm="l1",
        )
    )


@dataclass
class GroupResult:
    """One group's runs (sorted by seed) and their per-seed and aggregated numbers.

    Attributes:
        accuracy_by_seed / ece_by_seed: seed -> value.
        high_conf: ``(S, T)`` high-confidence error counts, one row per seed, one column per
            threshold.
        per_class: ``(C,)`` per-class accuracy averaged over seeds.
        config_diff: config keys that differ between its runs (should be empty).
    """

    key: GroupKey
    runs: list[Run]
    accuracy_by_seed: dict[int, float]
    ece_by_seed: dict[int, float]
    high_conf: np.ndarray
    per_class: np.ndarray
    config_diff: list[str]

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

    def run(self, seed: int) -> Run:
        """The run of ``seed``."""
        return next(r for r in self.runs if r.seed == seed)


@dataclass
class Comparison:
    """One group against its setting's reference group.

    Attributes:
        transitions: seed -> 2x2 table for every seed both groups have and evaluated on the
            same test images; ``pooled`` sums them (``None`` without any).
        per_class_delta: ``(C,)`` seed-averaged per-class accuracy, other minus reference.
    """

    reference: GroupResult
    other: GroupResult
    paired: PairedTest
    transitions: dict[int, Transitions]
    pooled: Transitions | None
    per_class_delta: np.ndarray
    notes: list[str] = field(default_factory=list)

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

    def comparison_for(self, key: GroupKey) -> Comparison | None:
        """The comparison of group ``key`` against its reference, if any."""
        return next((c for c in self.comparisons if c.other.key == key), None)

    def is_reference(self, key: GroupKey) -> bool:
        """Whether ``key`` is the reference group of its setting."""
        return key in self.reference_keys

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
        config_diff=config_differences(runs),
    )


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
        tables[seed] = transitions(ref_run.correct, other_run.correct)
    if not tables:
        notes.append("no seed shared with the reference on the same test images: no transitions")
    return Comparison(
        reference=reference,
        other=other,
        paired=paired_test(reference.accuracy_by_seed, other.accuracy_by_seed),
        transitions=tables,
        pooled=pool_transitions(list(tables.values())) if tables else None,
        per_class_delta=other.per_class - reference.per_class,
        notes=notes,
    )


def _reference_groups(groups: Sequence[GroupResult], reference: str) -> list[GroupResult]:
    if "/" in reference:
        chosen = [g for g in groups if g.key.label == reference]
        if not chosen:
            labels = ", ".join(g.key.label for g in groups)
            raise ConfigError(f"reference={reference} is not a group; groups: {labels}")
        return chosen
    chosen = [g for g in groups if g.key.improvement == reference]
    settings = {g.key.setting for g in groups}
    several = any(sum(g.key.setting == s for g in groups) > 1 for s in settings)
    if not chosen and several:
        names = ", ".join(sorted({g.key.improvement for g in groups}))
        raise ConfigError(
            f"reference={reference} matches no group; give an improvement ({names}) "
            "or a group label dataset/model/improvement"
        )
    return chosen


def analyse(
    collection: RunCollection, reference: str = "baseline", thresholds: Sequence[float] = (0.5,)
) -> Analysis:
    """Group the runs by (dataset, model, improvement) and compare each group with its reference.

    ``reference`` is an improvement name (the reference of every setting that has it) or a
    group label ``dataset/model/improvement`` (the reference of that setting only).

    Raises:
        ConfigError: ``reference`` names no group while some setting has groups to compare.
    """
    thresholds = tuple(float(t) for t in thresholds)
    by_key: dict[GroupKey, list[Run]] = {}
    for run in collection.runs:
        by_key.setdefault(run.key, []).append(run)
    groups = [group_result(k, by_key[k], thresholds) for k in sorted(by_key)]
    references = _reference_groups(groups, reference)
    ref_of = {g.key.setting: g for g in references}

    # Within a setting the reference comes first, then the other improvements by name.
    def order(g: GroupResult) -> tuple:
        return (g.key.setting, g is not ref_of.get(g.key.setting), g.key.improvement)

    groups.sort(key=order)
    notes = []
    for g in groups:
        if g.config_diff:
            notes.append(
                f"{g.key.label} pools runs whose configs differ in: {', '.join(g.config_diff)}"
            )
    comparisons = []
    for setting in sorted({g.key.setting for g in groups}):
        members = [g for g in groups if g.key.setting == setting]
        ref = ref_of.get(setting)
        if ref is None:
            if len(members) > 1:
                notes.append(
                    f"{'/'.join(setting)} has no reference group ({reference}): "
                    "its groups are summarised but not compared"
                )
            continue
        comparisons.extend(compare(ref, g) for g in members if g is not ref)
    return Analysis(
        groups=groups,
        comparisons=comparisons,
        thresholds=thresholds,
        reference=reference,
        reference_keys={g.key for g in references},
        skipped=list(collection.skipped),
        notes=notes,
    )
