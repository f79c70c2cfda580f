"""Statistics over run groups: seed aggregates, paired tests, transitions, McNemar, calibration.

Every number here is computed from ``predictions.npz`` (not copied from ``metrics.json``), so
all groups are measured the same way. Groups are only compared within one (dataset, model)
setting; seeds are paired by their value.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from cnnstress.analysis.groups import group_runs, improvement_keys, other_keys
from cnnstress.analysis.runs import GroupKey, Run, RunCollection, SkippedRun
from cnnstress.errors import ConfigError
from cnnstress.identity import describe, differences
from cnnstress.metrics import (
    expected_calibration_error,
    high_conf_errors,
    per_class_accuracy,
)

# Below this many discordant pairs McNemar's test uses the exact binomial distribution; from
# it on, the chi-square approximation with continuity correction (Edwards 1948). 25 is the
# usual rule of thumb (the approximation is poor for few discordant pairs).
MCNEMAR_EXACT_BELOW = 25
BOOTSTRAP_RESAMPLES = 2000
ALPHA = 0.05
POWER = 0.8


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
    :func:`bootstrap_difference`)."""
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


@dataclass(frozen=True)
class BootstrapTest:
    """Accuracy difference (other - reference) over seeds and images, resampled together.

    Attributes:
        delta: observed mean over seeds of the per-seed accuracy difference.
        ci_low, ci_high: percentile interval of the resampled differences.
        pvalue: two-sided bootstrap p-value, ``2 * min(P*(delta <= 0), P*(delta >= 0))`` with
            the add-one correction (never 0).
        resamples, seeds, images: sizes.
    """

    delta: float
    ci_low: float
    ci_high: float
    pvalue: float
    resamples: int
    seeds: int
    images: int


def bootstrap_difference(
    reference_correct: np.ndarray,
    other_correct: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapTest:
    """Two-way bootstrap of the accuracy difference, respecting the pairing across seeds.

    Each resample draws the seeds and the test images with replacement, *the same images for
    every seed* (an image is one unit whatever the seed), and takes the mean over the drawn
    seeds of each seed's accuracy difference on the drawn images. Written by hand: scipy's
    ``stats.bootstrap`` resamples along one axis only.

    Args:
        reference_correct, other_correct: ``(S, N)`` bool, seed ``s`` of both groups on the same
            ``N`` images.
    """
    ref = np.asarray(reference_correct, dtype=np.float64)
    oth = np.asarray(other_correct, dtype=np.float64)
    if ref.shape != oth.shape or ref.ndim != 2 or ref.size == 0:
        raise ValueError(f"need two (S, N) arrays of one shape, got {ref.shape}, {oth.shape}")
    diff = oth - ref  # (S, N) in {-1, 0, 1}
    n_seeds, n_images = diff.shape
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(n_images * n_seeds, 1))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        images = rng.integers(0, n_images, (size, n_images))
        seeds = rng.integers(0, n_seeds, (size, n_seeds))
        per_seed = diff[:, images].mean(axis=2)  # (S, size): each seed on the drawn images
        out[start : start + size] = np.take_along_axis(per_seed.T, seeds, axis=1).mean(1)
    alpha = 1 - confidence
    low, high = np.quantile(out, [alpha / 2, 1 - alpha / 2])
    tail = min(int((out <= 0).sum()), int((out >= 0).sum()))
    pvalue = min(1.0, 2 * (tail + 1) / (resamples + 1))
    return BootstrapTest(
        float(diff.mean()), float(low), float(high), pvalue, resamples, n_seeds, n_images
    )


def share_better(differences: Sequence[float], tolerance: float = 1e-12) -> float | None:
    """The share of seeds on which the difference is positive (a tie counts half): the chance
    that the improvement beats the reference on a random seed. ``None`` without seeds."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        return None
    return float(((d > tolerance).sum() + 0.5 * (np.abs(d) <= tolerance).sum()) / d.size)


@dataclass(frozen=True)
class SeedPower:
    """How many seeds a paired comparison needs (paired t-test, two-sided alpha 0.05, 80% power).

    Attributes:
        spread: sample standard deviation (ddof=1) of the per-seed differences.
        detectable: the smallest absolute mean difference the current seeds detect.
        needed: the seeds needed to detect the observed mean difference (``None`` when it is
            zero, or the spread is unknown).
    """

    seeds: int
    spread: float | None
    detectable: float | None
    needed: int | None


def seed_power(
    differences: Sequence[float], alpha: float = ALPHA, power: float = POWER
) -> SeedPower:
    """Power analysis of the paired t-test from the seed-to-seed spread of the differences
    (statsmodels ``TTestPower``: a paired test is a one-sample test on the differences)."""
    d = np.asarray(differences, dtype=np.float64)
    n = int(d.size)
    if n < 2 or np.ptp(d) <= 1e-12:
        return SeedPower(n, None, None, None)
    spread = float(d.std(ddof=1))
    analysis = TTestPower()
    effect = float(analysis.solve_power(nobs=n, alpha=alpha, power=power))
    observed = abs(float(d.mean())) / spread
    needed = None
    if observed > 1e-9:
        with warnings.catch_warnings():  # tiny effects: the solver warns and still converges
            warnings.simplefilter("ignore")
            raw = float(analysis.solve_power(effect_size=observed, alpha=alpha, power=power))
        needed = max(2, math.ceil(raw)) if math.isfinite(raw) else None
    return SeedPower(n, spread, effect * spread, needed)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values of one family of tests (``None`` entries stay ``None``)."""
    present = [i for i, p in enumerate(pvalues) if p is not None]
    adjusted: list[float | None] = [None] * len(pvalues)
    if present:
        values = multipletests([pvalues[i] for i in present], method="holm")[1]
        for i, value in zip(present, values, strict=True):
            adjusted[i] = float(value)
    return adjusted


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
    differences: tuple[float, ...] = ()


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
    return PairedTest(seeds, delta, t, p, tuple(float(x) for x in oth - ref))


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

    def run(self, seed: int) -> Run:
        """The run of ``seed``."""
        return next(r for r in self.runs if r.seed == seed)


@dataclass
class Comparison:
    """One group against its setting's reference group.

    Attributes:
        transitions: seed -> 2x2 table for every seed both groups have and evaluated on the
            same test images; ``pooled`` sums them (``None`` without any).
        bootstrap: the pooled test over those seeds (:func:`bootstrap_difference`).
        power: how many seeds the paired comparison needs (:func:`seed_power`).
        per_class_delta: ``(C,)`` seed-averaged per-class accuracy, other minus reference.
        differences: ``{key: (reference value, other value)}`` for every identity key in
            which the two groups differ (the seed aside).
    """

    reference: GroupResult
    other: GroupResult
    paired: PairedTest
    transitions: dict[int, Transitions]
    pooled: Transitions | None
    per_class_delta: np.ndarray
    bootstrap: BootstrapTest | None = None
    power: SeedPower | None = None
    # the same on the clean test set (known label errors left out), when known
    paired_clean: PairedTest | None = None
    bootstrap_clean: BootstrapTest | None = None
    differences: dict[str, tuple[object, object]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Holm-adjusted over the comparisons against the same reference (set by ``analyse``).
    paired_p_holm: float | None = None
    bootstrap_p_holm: float | None = None

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
    boot = None
    seeds = list(tables)
    if seeds and all(
        np.array_equal(reference.run(s).index, reference.run(seeds[0]).index) for s in seeds
    ):
        boot = bootstrap_difference(
            np.stack([reference.run(s).correct for s in seeds]),
            np.stack([other.run(s).correct for s in seeds]),
        )
    elif seeds:
        notes.append("the seeds were tested on different images: no bootstrap over seeds")
    clean_paired = clean_boot = None
    if boot is not None and reference.has_label_errors and other.has_label_errors:
        clean_paired = paired_test(reference.clean_by_seed, other.clean_by_seed)
        keep = ~reference.run(seeds[0]).is_label_error
        clean_boot = bootstrap_difference(
            np.stack([reference.run(s).correct[keep] for s in seeds]),
            np.stack([other.run(s).correct[keep] for s in seeds]),
        )
    paired = paired_test(reference.accuracy_by_seed, other.accuracy_by_seed)
    return Comparison(
        reference=reference,
        other=other,
        paired=paired,
        transitions=tables,
        pooled=pool_transitions(list(tables.values())) if tables else None,
        per_class_delta=other.per_class - reference.per_class,
        bootstrap=boot,
        power=seed_power(paired.differences),
        paired_clean=clean_paired,
        bootstrap_clean=clean_boot,
        differences=differences(reference.identity, other.identity),
        notes=notes,
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


def analyse(
    collection: RunCollection, reference: str = "baseline", thresholds: Sequence[float] = (0.5,)
) -> Analysis:
    """Group the runs by what they ran (:mod:`cnnstress.analysis.groups`) and compare each group
    with a reference group of its (dataset, model) setting.

    ``reference`` is a group name (``baseline``, ``augmentation=[]``) or a full group label
    ``dataset/model/name``. When several groups of a setting match it, each other group is
    compared with the one it differs from least. A comparison whose groups also differ outside
    augmentation and loss is kept but marked unconstrained (:attr:`Comparison.constrained`).

    Raises:
        ConfigError: ``reference`` names no group while some setting has groups to compare.
    """
    thresholds = tuple(float(t) for t in thresholds)
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
    for ref_key in {c.reference.key for c in comparisons}:
        family = [c for c in comparisons if c.reference.key == ref_key]
        paired_p = holm([c.paired.pvalue for c in family])
        boot_p = holm([None if c.bootstrap is None else c.bootstrap.pvalue for c in family])
        for c, p, q in zip(family, paired_p, boot_p, strict=True):
            c.paired_p_holm, c.bootstrap_p_holm = p, q
    return Analysis(
        groups=groups,
        comparisons=comparisons,
        thresholds=thresholds,
        reference=reference,
        reference_keys=is_reference,
        skipped=list(collection.skipped),
        notes=notes,
    )
