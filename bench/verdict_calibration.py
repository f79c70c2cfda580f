"""Does the verdict keep its 5%? False-positive rate and power of the accuracy comparison on
planted data, where the right answer is known.

Each replication plants per-image correctness of a reference and an improved group, S seeds
each, on N test images drawn afresh (a new test set every time), and runs the tests the
verdict could use on it:

- ``crossed``: :func:`cnnstress.analysis.statistics.crossed_test` (seeds x images, the
  verdict's test; its 95% interval excludes 0 exactly when p < 0.05);
- ``t``: the paired t-test over seeds (scipy ``ttest_rel`` on the per-seed accuracies);
- ``boot``: the previous ``bootstrap_difference`` (seeds and images resampled independently,
  the same images for every seed; percentile interval), a private copy kept here for the
  comparison.

and the verdict's rules for "clear gain / clear loss": ``new`` (the crossed test, Holm-adjusted
over the comparisons with one reference: here one comparison, so its p itself) and ``old``
(bootstrap interval excludes 0 and paired t-test p < 0.05). A false positive is a "clear gain" or
"clear loss" under a planted null; power is the rate of "clear gain" at a planted gain.

Regimes (difficulty of image i: p_i ~ Beta(0.346, 0.038), mean 0.90: most images almost always
right, some almost always wrong, so two runs of one config disagree on 5% of the images, as
CIFAR-10 runs at 90% accuracy do):

- (i) churn: every run draws each image's correctness independently with p_i, no seed effect;
- (ii) seed: plus a per-run shift of every image's logit, N(0, 0.3^2): a seed effect that
  dominates the churn (seed-to-seed accuracy sd about 0.6 pp per group);
- (iii) image: the improved group redraws the difficulty of 20% of the images (an effect that
  helps some images and hurts others, zero on average over the image distribution);
- (iv) seed + image: (ii) and (iii) together.

A planted gain shifts every image's logit in the improved group by the amount that raises the
expected accuracy (over images and seeds) by exactly 0.5, 1 or 2 pp.

    python bench/verdict_calibration.py          # 3000 replications per null, 1000 per gain
    python bench/verdict_calibration.py --quick  # 200 replications, N = 2,000 only

Prints the CPU model, the settings and two Markdown tables (false-positive rate, power), with
the Monte-Carlo standard error of a rate. Everything is seeded (``--seed``).
"""

from __future__ import annotations

import argparse
import functools
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize, special, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnstress.analysis.statistics import crossed_pvalues

# mean mu = 0.9 and churn E[2 p (1 - p)] = 2 (mu (1 - mu) - Var p) = 0.05: Var p = 0.065,
# a + b = mu (1 - mu) / Var p - 1
BETA = (0.9 * (0.09 / 0.065 - 1), 0.1 * (0.09 / 0.065 - 1))
SEED_SD = 0.3  # logit shift per run in regimes (ii) and (iv)
REDRAWN = 0.2  # share of images whose difficulty the improvement redraws in (iii) and (iv)
REGIMES = {
    "i": "(i) churn only",
    "ii": "(ii) dominant seed effect",
    "iii": "(iii) image-dependent effect, mean 0",
    "iv": "(iv) seed effect + image-dependent effect",
}
GAINS = (0.005, 0.01, 0.02)
ALPHA = 0.05
CLIP = 1e-12


@dataclass(frozen=True)
class Regime:
    """A data-generating process: which of the two effects it has."""

    name: str
    seed_effect: bool
    image_effect: bool


def regime(name: str) -> Regime:
    """The regime called ``name`` (``i`` to ``iv``)."""
    return Regime(name, name in ("ii", "iv"), name in ("iii", "iv"))


def _logits(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return special.logit(np.clip(rng.beta(*BETA, shape), CLIP, 1 - CLIP))


def plant(
    rng: np.random.Generator, spec: Regime, seeds: int, images: int, reps: int, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(reference, other)`` correctness, each ``(reps, seeds, images)`` bool; ``shift`` is the
    improved group's logit shift (0: a null)."""
    base = _logits(rng, (reps, 1, images))
    improved = base
    if spec.image_effect:
        redraw = rng.random((reps, 1, images)) < REDRAWN
        improved = np.where(redraw, _logits(rng, (reps, 1, images)), base)
    ref_run = other_run = 0.0
    if spec.seed_effect:
        ref_run = rng.normal(0.0, SEED_SD, (reps, seeds, 1))
        other_run = rng.normal(0.0, SEED_SD, (reps, seeds, 1))
    p_ref = special.expit(base + ref_run)
    p_other = special.expit(improved + shift + other_run)
    reference = rng.random((reps, seeds, images)) < p_ref
    other = rng.random((reps, seeds, images)) < p_other
    return reference, other


@functools.lru_cache
def logit_shift(spec: Regime, gain: float, samples: int = 1_000_000, seed: int = 12345) -> float:
    """The improved group's logit shift whose expected accuracy gain is ``gain``."""
    if gain == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    base = _logits(rng, (samples,))
    improved = base
    if spec.image_effect:
        improved = np.where(rng.random(samples) < REDRAWN, _logits(rng, (samples,)), base)
    ref_run = other_run = 0.0
    if spec.seed_effect:
        ref_run, other_run = rng.normal(0, SEED_SD, samples), rng.normal(0, SEED_SD, samples)
    reference = special.expit(base + ref_run).mean()
    return float(
        optimize.brentq(
            lambda s: special.expit(improved + s + other_run).mean() - reference - gain, -5, 5
        )
    )


def paired_t_pvalues(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``(R,)`` p-values of the paired t-test on the per-seed accuracies (NaN: no spread)."""
    diff = other.mean(-1) - reference.mean(-1)  # (R, S)
    n = diff.shape[1]
    sd = diff.std(axis=1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = diff.mean(1) / (sd / np.sqrt(n))
    return np.where(sd > 1e-12, 2 * stats.t.sf(np.abs(t), n - 1), np.nan)


def bootstrap_intervals(
    rng: np.random.Generator, reference: np.ndarray, other: np.ndarray, resamples: int
) -> tuple[np.ndarray, np.ndarray]:
    """The previous ``compare.bootstrap_difference`` (95% percentile interval) for every
    replication: ``(low, high)``, each ``(R,)``.

    One resample draws the images (the same for every seed) and the seeds with replacement; the
    statistic is the mean over the drawn seeds of each seed's accuracy difference on the drawn
    images. Vectorised as weights: image counts ``(B, N)`` and seed counts ``(B, S)`` are drawn
    once per call and shared by the replications of the call (each replication's bootstrap is
    still a valid one; only their Monte-Carlo noise is shared).
    """
    diff = other.astype(np.float32) - reference.astype(np.float32)  # (R, S, N)
    _, seeds, images = diff.shape
    picks = rng.integers(0, images, (resamples, images))
    offsets = (np.arange(resamples) * images)[:, None]
    image_counts = np.bincount((picks + offsets).ravel(), minlength=resamples * images)
    image_counts = image_counts.reshape(resamples, images).astype(np.float32)
    seed_picks = rng.integers(0, seeds, (resamples, seeds))
    seed_counts = np.stack([np.bincount(row, minlength=seeds) for row in seed_picks])
    reps = diff.shape[0]
    weights = np.ascontiguousarray(image_counts.T)  # (N, B): one BLAS call for all replications
    per_seed = (diff.reshape(reps * seeds, images) @ weights).reshape(reps, seeds, resamples)
    per_seed /= images
    stat = np.einsum("rsb,bs->rb", per_seed, seed_counts.astype(np.float32)) / seeds
    low, high = np.quantile(stat, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
    return low, high


@dataclass
class Cell:
    """Decisions of every method in one (regime, S, N, gain) cell: +1 clear gain, -1 clear
    loss, 0 unclear, per replication."""

    crossed: np.ndarray
    t: np.ndarray
    boot: np.ndarray
    old_rule: np.ndarray


def _decide(pvalue: np.ndarray, delta: np.ndarray) -> np.ndarray:
    return np.where(np.nan_to_num(pvalue, nan=1.0) < ALPHA, np.sign(delta), 0).astype(int)


def run_cell(
    rng: np.random.Generator, spec: Regime, seeds: int, images: int, reps: int, gain: float,
    boot_reps: int, resamples: int, chunk: int = 25,
) -> Cell:  # fmt: skip
    """Plant ``reps`` replications and decide with every method (the bootstrap on the first
    ``boot_reps`` only: it is the slow one)."""
    shift = logit_shift(spec, gain)
    crossed, t, boot, old = [], [], [], []
    done = 0
    while done < reps:
        size = min(chunk, reps - done)
        reference, other = plant(rng, spec, seeds, images, size, shift)
        delta = other.mean((1, 2)) - reference.mean((1, 2))
        crossed.append(_decide(crossed_pvalues(other.astype(np.int8) - reference), delta))
        t_decision = _decide(paired_t_pvalues(reference, other), delta)
        t.append(t_decision)
        if done < boot_reps:
            low, high = bootstrap_intervals(rng, reference, other, resamples)
            b = np.where(low > 0, 1, np.where(high < 0, -1, 0))
            boot.append(b)
            old.append(np.where(b == t_decision, b, 0))
        done += size
    return Cell(*(np.concatenate(x) if x else np.zeros(0, int) for x in (crossed, t, boot, old)))


def describe_regime(spec: Regime, rng: np.random.Generator) -> str:
    """Measured churn and seed spread of a regime (10 runs of 10,000 images per group)."""
    reference, other = plant(rng, spec, 10, 10_000, 1)
    churn = (reference[0, 0] != reference[0, 1]).mean()
    acc_sd = reference[0].mean(1).std(ddof=1)
    between = (reference[0, 0] != other[0, 0]).mean()
    return (
        f"{REGIMES[spec.name]}: reference accuracy {reference.mean():.3f}; two reference runs "
        f"disagree on {churn:.1%} of images, reference vs improved on {between:.1%}; "
        f"seed-to-seed sd of a group's accuracy {acc_sd * 100:.2f} pp (N = 10,000)"
    )


def cpu_model() -> str:
    """The CPU model (``lscpu``), or the platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def _rate(decisions: np.ndarray, gain: float) -> float:
    if decisions.size == 0:
        return float("nan")  # --boot-reps 0
    return float((decisions == 1).mean() if gain > 0 else (decisions != 0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000, help="replications per gain cell")
    parser.add_argument("--null-reps", type=int, default=3000, help="replications per null cell")
    parser.add_argument("--boot-reps", type=int, default=400, help="of which bootstrapped")
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--quick", action="store_true", help="200 replications, N = 2,000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.null_reps, args.boot_reps, args.images = 200, 200, 200, [2000]
    rng = np.random.default_rng(args.seed)
    print(f"CPU: {cpu_model()}")
    boot = min(args.boot_reps, args.reps)
    print(
        f"replications: {args.null_reps} per null cell, {args.reps} per gain cell (the old "
        f"bootstrap on the first {boot} of each, {args.resamples} resamples); Monte-Carlo se "
        f"of a 5% rate: {np.sqrt(0.05 * 0.95 / args.null_reps):.2%} "
        f"({np.sqrt(0.05 * 0.95 / max(boot, 1)):.2%} for the old bootstrap and rule)"
    )
    for name in args.regimes:
        print(f"- {describe_regime(regime(name), rng)}")
    start = time.perf_counter()
    fpr_rows, power_rows = [], []
    for name in args.regimes:
        spec = regime(name)
        for seeds in args.seeds:
            for images in args.images:
                label = f"| {name} | {seeds} | {images:,} |"
                null = run_cell(rng, spec, seeds, images, args.null_reps, 0.0, args.boot_reps,
                                args.resamples)  # fmt: skip
                fpr = [_rate(getattr(null, m), 0.0) for m in ("crossed", "t", "boot", "old_rule")]
                fpr_rows.append(label + "".join(f" {x:.1%} |" for x in fpr))
                cells = []
                for gain in GAINS:
                    cell = run_cell(rng, spec, seeds, images, args.reps, gain, args.boot_reps,
                                    args.resamples)  # fmt: skip
                    cells += [_rate(getattr(cell, m), gain) for m in ("crossed", "t", "boot")]
                power_rows.append(label + "".join(f" {x:.0%} |" for x in cells))
                print(f"  done {name} S={seeds} N={images} "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)  # fmt: skip
    print("\nFalse-positive rate (planted null; 'clear gain' or 'clear loss'; nominal 5%):\n")
    print("| regime | S | N | crossed 95% CI | paired t | old bootstrap CI | old rule |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(fpr_rows))
    print("\nPower ('clear gain' at a planted gain; crossed = the new rule with one comparison):\n")
    heads = " | ".join(f"{m} {g * 100:g} pp" for g in GAINS for m in ("crossed", "t", "boot"))
    print(f"| regime | S | N | {heads} |")
    print("|---|---|---|" + "---|" * 3 * len(GAINS))
    print("\n".join(power_rows))
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
