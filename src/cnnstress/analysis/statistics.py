"""Pure statistics of the analysis: seed aggregates, paired tests, Holm, McNemar, and the test of
an accuracy difference in the crossed images x seeds design with its power and seeds needed.

Nothing here knows about runs or groups (numpy, scipy and statsmodels only), so every function
can be checked on planted numbers.

The crossed design
------------------
Seed ``s`` of the reference and seed ``s`` of the other group are both evaluated on the same
``N`` test images. Their per-image difference ``D[s, i] = other[s, i] - reference[s, i]`` (in
{-1, 0, 1}) is modelled as a two-way random-effects layout (Owen 2007, "The pigeonhole
bootstrap", Ann. Appl. Stat. 1(2))::

    D[s, i] = mu + a[s] + b[i] + e[s, i]

``a``: the seed effect (what a new pair of training runs changes), ``b``: the test-image effect
(what a new test set from the same distribution changes, e.g. an improvement that helps some
images and hurts others), ``e``: their interaction (per-image churn between two runs, most of
CIFAR's run-to-run variance). The grand mean ``mean(D)`` estimates ``mu``, the accuracy
difference for a new training run on a new test set, with variance
``sigma_a^2/S + sigma_b^2/N + sigma_e^2/(S N)``, each component counted once. From the ANOVA
mean squares ``MS_seed`` (S-1 df), ``MS_image`` (N-1 df) and ``MS_resid`` ((S-1)(N-1) df)::

    SE^2 = (MS_seed + max(0, MS_image - MS_resid)) / (S N)

is Owen's unbiased variance ``(MS_seed + MS_image - MS_resid)/(S N)`` with the image component
truncated at zero (its REML estimate; a negative estimate is noise, and leaving it negative makes
the test too strict when there is no image effect and too lax when there is one: checked by
``bench/verdict_calibration.py``). ``MS_seed`` itself (not truncated) carries the seed part: it
is unbiased for ``sigma_e^2 + N sigma_a^2`` whatever the split between seed effect and churn.

With 2-5 seeds ``MS_seed`` has 1-4 degrees of freedom, and Satterthwaite's moment-matched t
(the usual small-sample reference) is then too lax when the image component is large and too
strict when it is absent. The statistic ``t = mean(D) / SE`` is instead referred to its exact
distribution under the normal random-effects model (Welch 1938/1947's approach to a studentised
mean whose variance adds a few-df part to a well-known one)::

    T = Z / sqrt(a W + b),   W ~ chi2(S-1)/(S-1),   a = theta/(theta + C),   b = 1 - a

where ``C = max(0, MS_image - MS_resid)`` (N-1 and (S-1)(N-1) df: treated as known) and
``theta`` is the seed-level variance ``E[MS_seed]``, a nuisance plugged in at its one-sided 80%
upper confidence limit and never below ``MS_resid`` (``theta >= sigma_e^2``): a seed mean
square that came out small by chance must not also make the reference distribution lighter.
Without an image component (``C = 0``) the test is exactly the paired t-test on the per-seed
mean differences. The expectation over ``W`` is a one-dimensional integral (scipy.integrate);
no resampling.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, special, stats
from statsmodels.stats.contingency_tables import mcnemar as _statsmodels_mcnemar

ALPHA = 0.05
POWER = 0.8
# Below this many discordant pairs McNemar's test uses the exact binomial distribution; from
# it on, the chi-square approximation with continuity correction (Edwards 1948). 25 is the
# usual rule of thumb (the approximation is poor for few discordant pairs).
MCNEMAR_EXACT_BELOW = 25
# The seed-level variance plugged into the crossed test's reference distribution: its one-sided
# upper confidence limit at this level (see the module docstring). Chosen by simulation: over
# mixtures of seed and image effects (normal model) the false-positive rate stays within
# 3.7-6.2% at 3 seeds, where the point estimate (level 0.5 or none) reaches 8.5-9.4%;
# bench/verdict_calibration.py: 3.7-6.5% from 3 seeds on.
SEED_VARIANCE_BOUND = 0.8
# Differences that agree to rounding error have no spread.
NO_SPREAD = 1e-12
# Upper end of the search for the seeds needed.
MAX_SEEDS = 1_000_000


# -- seed aggregates and the paired t-test --------------------------------------------------
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
class PairedTest:
    """A difference (other - reference) over the seeds both groups have.

    ``delta`` aggregates the per-seed differences; ``t`` and ``pvalue`` come from a paired
    t-test (:func:`scipy.stats.ttest_rel`) and are ``None`` with fewer than two shared seeds
    or when the differences have no spread (:attr:`identical`).
    """

    seeds: tuple[int, ...]
    delta: Estimate
    t: float | None
    pvalue: float | None
    differences: tuple[float, ...] = ()

    @property
    def identical(self) -> bool:
        """Two or more shared seeds whose differences are all the same: no test possible."""
        return len(self.differences) >= 2 and float(np.ptp(self.differences)) <= NO_SPREAD


def paired_test(reference: Mapping[int, float], other: Mapping[int, float]) -> PairedTest:
    """Pair per-seed values by seed and test whether their mean difference is zero."""
    seeds = tuple(sorted(set(reference) & set(other)))
    ref = np.array([reference[s] for s in seeds], dtype=np.float64)
    oth = np.array([other[s] for s in seeds], dtype=np.float64)
    delta = estimate(oth - ref)
    t = p = None
    # Differences that agree to rounding error have no spread to test (t would be noise).
    if len(seeds) >= 2 and np.ptp(oth - ref) > NO_SPREAD:
        result = stats.ttest_rel(oth, ref)
        t, p = float(result.statistic), float(result.pvalue)
    return PairedTest(seeds, delta, t, p, tuple(float(x) for x in oth - ref))


def share_better(differences: Sequence[float], tolerance: float = NO_SPREAD) -> float | None:
    """The share of seeds on which the difference is positive (a tie counts half): the chance
    that the improvement beats the reference on a random seed. ``None`` without seeds."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        return None
    return float(((d > tolerance).sum() + 0.5 * (np.abs(d) <= tolerance).sum()) / d.size)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values of one family of tests (``None`` entries stay ``None``).

    Holm's step-down: the i-th smallest of m p-values times (m - i + 1), made non-decreasing,
    at most 1; the same numbers as statsmodels' ``multipletests(method="holm")`` (tested), which
    is not called because it runs ``gc.collect()`` on every call: about 0.5 s in an analysis
    process holding the runs' arrays, once per family.
    """
    present = [i for i, p in enumerate(pvalues) if p is not None]
    adjusted: list[float | None] = [None] * len(pvalues)
    if present:
        values = np.array([pvalues[i] for i in present], dtype=np.float64)
        order = np.argsort(values, kind="stable")
        scaled = values[order] * np.arange(len(values), 0, -1)
        stepped = np.minimum(np.maximum.accumulate(scaled), 1.0)
        for rank, position in enumerate(order):
            adjusted[present[position]] = float(stepped[rank])
    return adjusted


# -- McNemar ----------------------------------------------------------------------------------
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
    """McNemar's test (statsmodels): exact when ``corrected + worsened < exact_below``, else
    chi-square with continuity correction."""
    b, c = int(corrected), int(worsened)
    exact = b + c < exact_below
    if b + c == 0:  # no discordant pair: nothing against equal error rates
        return McNemar(b, c, "exact", 0.0, 1.0)
    result = _statsmodels_mcnemar([[0, b], [c, 0]], exact=exact, correction=True)
    method = "exact" if exact else "chi2-cc"
    return McNemar(b, c, method, float(result.statistic), float(result.pvalue))


# -- the crossed images x seeds test --------------------------------------------------------
@dataclass(frozen=True)
class VarianceComponents:
    """The two-way ANOVA of the per-image differences and the variance components it estimates.

    Attributes:
        ms_seed, ms_image, ms_resid: mean squares with S-1, N-1 and (S-1)(N-1) degrees of
            freedom (``ms_seed`` and ``ms_resid`` are ``None`` with one seed).
        seed: ``sigma_a^2``, the seed effect (a new pair of training runs), ``(ms_seed -
            ms_resid) / N``; image: ``sigma_b^2``, the test-image effect (a new test set),
            ``(ms_image - ms_resid) / S``; interaction: ``sigma_e^2``, ``ms_resid``. A negative
            estimate is set to 0 and named in ``negative``. ``None`` where not estimable.
    """

    ms_seed: float | None
    ms_image: float
    ms_resid: float | None
    seed: float | None
    image: float | None
    interaction: float | None
    negative: tuple[str, ...] = ()


@dataclass(frozen=True)
class CrossedTest:
    """The accuracy difference (other - reference) over seeds and test images (module docstring).

    Attributes:
        delta: the mean over seeds and images of the per-image difference (= the mean over
            seeds of the per-seed accuracy differences).
        se: its standard error, counting seed, image and interaction variance once each.
        df: degrees of freedom of the Student t with the same 97.5% quantile as the reference
            distribution (for reading: from S-1, as the paired t-test, up to inf).
        ci_low, ci_high: the 95% (``confidence``) interval, ``delta -/+ quantile * se``.
        pvalue: two-sided, unadjusted.
        reason: why there is no interval (``se`` etc. ``None``): one seed, identical
            per-seed differences, fewer than two images.
    """

    delta: float
    se: float | None
    df: float | None
    ci_low: float | None
    ci_high: float | None
    pvalue: float | None
    seeds: int
    images: int
    components: VarianceComponents
    confidence: float = 0.95
    reason: str = ""

    @property
    def tested(self) -> bool:
        """Whether there is an interval and a p-value."""
        return self.pvalue is not None

    @property
    def identical(self) -> bool:
        """No test because the per-seed differences (or all differences) are identical."""
        return self.reason.startswith("identical")

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below 0."""
        return self.tested and (self.ci_low > 0 or self.ci_high < 0)


def two_way_mean_squares(diff: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(mean, MS_seed, MS_image, MS_resid)`` of ``(..., S, N)`` differences, each ``(...)``;
    O(S N). ``MS_seed`` and ``MS_resid`` are NaN for S = 1, ``MS_image`` for N = 1."""
    d = np.asarray(diff, dtype=np.float64)
    n_seeds, n_images = d.shape[-2:]
    grand = d.mean(axis=(-2, -1))
    seed_means = d.mean(axis=-1)
    image_means = d.mean(axis=-2)
    ss_seed = n_images * ((seed_means - grand[..., None]) ** 2).sum(-1)
    ss_image = n_seeds * ((image_means - grand[..., None]) ** 2).sum(-1)
    ss_total = ((d - grand[..., None, None]) ** 2).sum(axis=(-2, -1))
    ss_resid = np.maximum(ss_total - ss_seed - ss_image, 0.0)  # rounding can go below 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return (
            grand,
            ss_seed / (n_seeds - 1),
            ss_image / (n_images - 1),
            ss_resid / ((n_seeds - 1) * (n_images - 1)),
        )


def _chi2_mean(func: Callable[[float], float], k: float, knee: float = 1.0) -> float:
    """``E[func(W)]`` for ``W ~ chi2(k)/k``, by adaptive quadrature (QUADPACK).

    Integrated over ``s = sqrt(W)``, whose density ``exp(c + (k-1) log s - k s^2 / 2)`` has no
    singularity at 0 (that of ``W`` has one for k = 1); the mass of ``s`` lies within about
    ``1/sqrt(2k)`` of 1, so the range is cut 40 of those on either side. ``knee``: where
    ``func`` changes fast (a far tail lives at small ``s``), an extra break for the quadrature.
    """
    c = math.log(2) + k / 2 * math.log(k / 2) - math.lgamma(k / 2)
    spread = 1 / math.sqrt(2 * k)
    low, high = max(0.0, 1 - 40 * spread), 1 + 40 * spread
    breaks = sorted({low, 1.0, high, *(x for x in (knee, knee / 10) if low < x < 1)})

    def integrand(s: float) -> float:
        if s <= 0:
            return 0.0 if k > 1 else func(0.0) * math.exp(c)
        return func(s * s) * math.exp(c + (k - 1) * math.log(s) - k * s * s / 2)

    total = 0.0
    for start, stop in itertools.pairwise(breaks):
        value, _ = integrate.quad(integrand, start, stop, epsabs=0.0, epsrel=1e-9, limit=200)
        total += value
    return total


def _reference_weights(
    ms_seed: np.ndarray, image_part: np.ndarray, ms_resid: np.ndarray, k: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` of the reference distribution ``T = Z / sqrt(a W + b)``."""
    theta = np.maximum(k * ms_seed / stats.chi2.ppf(1 - SEED_VARIANCE_BOUND, k), ms_resid)
    total = theta + image_part
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(total > 0, theta / total, 1.0)
    return a, 1.0 - a


def reference_sf(t: float, a: float, b: float, k: float) -> float:
    """Two-sided tail ``P(|T| >= |t|)`` of ``T = Z / sqrt(a W + b)``, ``W ~ chi2(k)/k``
    (``a = 1, b = 0``: Student's t with k df)."""
    t = abs(float(t))
    if b >= 1 - 1e-12:
        return float(2 * special.ndtr(-t))
    if b <= 1e-12:
        return float(2 * stats.t.sf(t * math.sqrt(a), k))
    knee = 3 / (t * math.sqrt(a)) if t > 0 else 1.0  # below it the normal tail is not small

    def tail(w: float) -> float:
        return float(2 * special.ndtr(-t * math.sqrt(a * w + b)))

    return min(1.0, max(0.0, _chi2_mean(tail, k, knee)))


def reference_quantile(level: float, a: float, b: float, k: float) -> float:
    """The ``q`` with ``P(|T| >= q) = level`` (the two-sided critical value)."""
    if b >= 1 - 1e-12:  # no seed part: normal
        return float(special.ndtri(1 - level / 2))

    def excess(q: float) -> float:
        return reference_sf(q, a, b, k) - level

    z = float(special.ndtri(1 - level / 2))
    high = max(float(stats.t.ppf(1 - level / 2, k)), z) / math.sqrt(max(a, 1e-12)) + 1.0
    return float(optimize.brentq(excess, z * 0.5, high, xtol=1e-10))


def _equivalent_df(quantile: float, level: float, k: float) -> float:
    """The Student-t degrees of freedom whose two-sided ``level`` quantile is ``quantile``."""
    if quantile <= float(special.ndtri(1 - level / 2)) + 1e-9:
        return math.inf

    def gap(log_df: float) -> float:
        return float(stats.t.ppf(1 - level / 2, math.exp(log_df))) - quantile

    low = math.log(max(k, 1.0) * 0.5)
    if gap(low) < 0:
        return float(k)
    if gap(math.log(1e7)) > 0:
        return math.inf
    return float(math.exp(optimize.brentq(gap, low, math.log(1e7), xtol=1e-8)))


def crossed_pvalues(diff: np.ndarray) -> np.ndarray:
    """Two-sided p-values of the crossed test for a batch of ``(R, S, N)`` differences (``(R,)``;
    NaN where :func:`crossed_test` has no test). For simulation; see :func:`crossed_test`."""
    mean, ms_seed, ms_image, ms_resid = two_way_mean_squares(diff)
    n_seeds, n_images = np.shape(diff)[-2:]
    if n_seeds < 2 or n_images < 2:
        return np.full(mean.shape, np.nan)
    image_part = np.maximum(ms_image - ms_resid, 0.0)
    se = np.sqrt((ms_seed + image_part) / (n_seeds * n_images))
    a, b = _reference_weights(ms_seed, image_part, ms_resid, n_seeds - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(se > 0, mean / np.where(se > 0, se, 1.0), np.nan)
    tested = (ms_seed > NO_SPREAD**2) & (se > 0)
    rows = np.stack(np.broadcast_arrays(t, a, b, tested), axis=-1).reshape(-1, 4)
    p = [reference_sf(t_, a_, b_, n_seeds - 1) if ok else math.nan for t_, a_, b_, ok in rows]
    return np.array(p, dtype=np.float64).reshape(mean.shape)


def crossed_test(
    reference_correct: np.ndarray, other_correct: np.ndarray, confidence: float = 0.95
) -> CrossedTest:
    """Test the accuracy difference of two groups in the crossed images x seeds design.

    Args:
        reference_correct, other_correct: ``(S, N)`` bool, seed ``s`` of both groups on the
            same ``N`` images.

    The interval generalises over new training runs (seeds) and new test sets from the same
    distribution (images), each variance component counted once (module docstring). Edge
    cases, each with ``reason`` and no interval or p-value:

    - one seed (S = 1): the seed-to-seed variance cannot be estimated;
    - identical per-seed differences (``MS_seed = 0``, which includes identical differences on
      every image): their spread is unknown, not zero;
    - fewer than two images.

    Negative variance estimates: the image component is truncated at 0 (named in
    ``components.negative``); the seed component enters the standard error through
    ``MS_seed`` itself, which is never negative (its estimate ``sigma_a^2`` is reported
    truncated at 0).
    """
    ref = np.asarray(reference_correct, dtype=np.float64)
    oth = np.asarray(other_correct, dtype=np.float64)
    if ref.shape != oth.shape or ref.ndim != 2 or ref.size == 0:
        raise ValueError(f"need two (S, N) arrays of one shape, got {ref.shape}, {oth.shape}")
    diff = oth - ref
    n_seeds, n_images = diff.shape
    mean, ms_seed, ms_image, ms_resid = (float(x) for x in two_way_mean_squares(diff))

    def untested(reason: str, components: VarianceComponents) -> CrossedTest:
        return CrossedTest(mean, None, None, None, None, None, n_seeds, n_images, components,
                           confidence, reason)  # fmt: skip

    if n_images < 2:
        return untested("fewer than two images", VarianceComponents(None, math.nan, None,
                                                                    None, None, None))  # fmt: skip
    if n_seeds < 2:
        components = VarianceComponents(None, ms_image, None, None, None, None)
        return untested("one seed: the seed-to-seed variance cannot be estimated", components)
    raw_seed, raw_image = (ms_seed - ms_resid) / n_images, (ms_image - ms_resid) / n_seeds
    negative = tuple(name for name, v in (("seed", raw_seed), ("image", raw_image)) if v < 0)
    components = VarianceComponents(
        ms_seed, ms_image, ms_resid, max(raw_seed, 0.0), max(raw_image, 0.0), ms_resid, negative
    )
    if ms_seed <= NO_SPREAD**2:
        return untested("identical per-seed differences: their spread is unknown", components)
    image_part = max(ms_image - ms_resid, 0.0)
    se = math.sqrt((ms_seed + image_part) / (n_seeds * n_images))
    k = n_seeds - 1
    a, b = (float(x) for x in _reference_weights(ms_seed, image_part, ms_resid, k))
    pvalue = reference_sf(mean / se, a, b, k)
    level = 1 - confidence
    quantile = reference_quantile(level, a, b, k)
    return CrossedTest(
        delta=mean,
        se=se,
        df=_equivalent_df(quantile, level, k),
        ci_low=mean - quantile * se,
        ci_high=mean + quantile * se,
        pvalue=pvalue,
        seeds=n_seeds,
        images=n_images,
        components=components,
        confidence=confidence,
    )


# -- power and seeds needed -------------------------------------------------------------------
@dataclass(frozen=True)
class SeedPlan:
    """Power of the crossed test at the observed difference, and the seeds it needs.

    The plan keeps the test set (its ``N`` images) and adds seeds: more seeds shrink the seed
    and interaction parts of the variance, never the test-image part ``sigma_b^2 / N``. Power is
    two-sided at ``alpha``, unadjusted for multiplicity, from the estimated components (seed
    level ``max(MS_seed, MS_resid)``, image ``sigma_b^2``) taken as true.

    Attributes:
        seeds: the seeds the test used.
        power: at the observed difference with those seeds (``None`` without a test).
        detectable: the smallest absolute difference those seeds detect with ``target`` power.
        needed: the fewest seeds (more than ``seeds``) that reach ``target`` power at the
            observed difference; ``None`` when they already do, when none do, or without a
            test.
        limit_power: the power with unlimited seeds on this test set (the image part alone).
        target: the power asked for (0.8).
    """

    seeds: int
    power: float | None
    detectable: float | None
    needed: int | None
    limit_power: float | None
    target: float = POWER

    @property
    def suffice(self) -> bool:
        """Whether the current seeds have the target power at the observed difference."""
        return self.power is not None and self.power >= self.target

    @property
    def unreachable(self) -> bool:
        """No number of seeds reaches the target power on this test set."""
        return self.limit_power is not None and self.limit_power < self.target


def _design(seed_level: float, image: float, n_images: int, n_seeds: int) -> tuple[float, ...]:
    """``(se, a, b)`` of the crossed test with ``n_seeds`` seeds, components taken as known."""
    image_part = n_seeds * image
    se = math.sqrt((seed_level + image_part) / (n_seeds * n_images))
    a = seed_level / (seed_level + image_part) if seed_level + image_part > 0 else 1.0
    return se, a, 1.0 - a


def crossed_power(
    delta: float, seed_level: float, image: float, n_images: int, n_seeds: int,
    alpha: float = ALPHA,
) -> float:  # fmt: skip
    """Power of the two-sided crossed test at true difference ``delta``.

    ``seed_level`` = ``sigma_e^2 + N sigma_a^2`` (the expected ``MS_seed``), ``image`` =
    ``sigma_b^2``. Without an image part this is the power of the paired t-test with
    ``n_seeds - 1`` df (the noncentral t; :func:`scipy.stats.nct` gives the same).
    """
    se, a, b = _design(seed_level, image, n_images, n_seeds)
    if se <= 0:
        return 1.0 if delta != 0 else alpha
    k = n_seeds - 1
    quantile = reference_quantile(alpha, a, b, k)
    shift = delta / se  # T = (Z + shift) / sqrt(a W + b)

    def reject(w: float) -> float:
        scale = quantile * math.sqrt(a * w + b)
        return float(special.ndtr(shift - scale) + special.ndtr(-shift - scale))

    if b >= 1 - 1e-12:
        return reject(1.0)
    return min(1.0, max(0.0, _chi2_mean(reject, k)))


def seed_plan(
    test: CrossedTest, alpha: float = ALPHA, target: float = POWER, max_seeds: int = MAX_SEEDS
) -> SeedPlan:
    """Power at the observed difference and the seeds needed for ``target`` power, by an upward
    search (doubling, then bisection) over the seed count; never NaN."""
    if not test.tested:
        return SeedPlan(test.seeds, None, None, None, None, target)
    c = test.components
    seed_level = max(c.ms_seed, c.ms_resid)
    image, n_images, delta = c.image, test.images, abs(test.delta)

    def power(seeds: int, difference: float = delta) -> float:
        return crossed_power(difference, seed_level, image, n_images, seeds, alpha)

    now = power(test.seeds)
    limit_se = math.sqrt(image / n_images)
    z = float(special.ndtri(1 - alpha / 2))
    if limit_se > 0:
        shift = delta / limit_se
        limit = float(special.ndtr(shift - z) + special.ndtr(-shift - z))
    else:
        limit = 1.0 if delta > 0 else alpha
    detectable = _detectable(lambda d: power(test.seeds, d), test.se, target)
    needed = None
    if now < target <= limit:
        needed = _first_reaching(power, test.seeds, target, max_seeds)
    return SeedPlan(test.seeds, now, detectable, needed, limit, target)


def _detectable(power: Callable[[float], float], se: float, target: float) -> float | None:
    """The smallest difference with ``target`` power (``power`` increases with it)."""
    high = se
    while power(high) < target:
        high *= 2
        if high > 1e6 * max(se, 1e-12):
            return None
    return float(optimize.brentq(lambda d: power(d) - target, 0.0, high, xtol=se * 1e-6))


def _first_reaching(power: Callable[[int], float], seeds: int, target: float, cap: int) -> int:
    """The fewest seeds above ``seeds`` with ``power >= target`` (power grows with seeds)."""
    low, high = seeds, seeds + 1
    while power(high) < target:
        low, high = high, min(2 * high, cap)
        if low == cap:
            return cap
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if power(middle) >= target else (middle, high)
    return high
