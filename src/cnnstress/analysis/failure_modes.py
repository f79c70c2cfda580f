"""Failure modes across seeds and improvements, and how far one seed's Grad-CAM can be trusted.

Pure functions over the per-run failure modes (:class:`cnnstress.core.failure_modes.FailureModes`,
each run's ``failure_modes.json``) and predictions; results are dataclasses the report renders.

* :func:`match_across_seeds`: the modes of one group's seeds are matched by the overlap of their
  image sets. Two modes of two seeds *match* when the Jaccard index of their members
  (``|A & B| / |A | B|``) is at least ``threshold`` (default :data:`MATCH_THRESHOLD`), one to one
  per pair of seeds (Hungarian assignment maximising the total overlap,
  :func:`scipy.optimize.linear_sum_assignment`). Matched modes are joined into *families*
  (connected components over all seed pairs). A family found in more than half of the group's
  seeds (at least two) is **stable**; the others are **seed-specific**. Each family gets the
  median overlap of its matches.
* :func:`fixes`: for every stable family of the reference, the share of its images each
  improvement gets right, per seed (the reference's mode in seed ``s`` against the improvement's
  run with seed ``s``), against the share that *another seed of the reference* gets right (the
  same errors are not all repeated by a re-run: selecting a seed's errors and re-testing them
  regresses to the mean), with the paired t-test and t-interval over seeds of the difference
  (:func:`cnnstress.analysis.statistics.paired_test` / ``estimate``); and the stable families of
  the improvement that match no mode of the reference in most of their seeds (what it breaks).
* :func:`cam_agreement`: for the reference's confident failures, the Spearman correlation of
  the CAMs of the same image under different seeds (each pair of seeds), per CAM method, with a
  judgement of whether a single-seed Grad-CAM story is reliable (:data:`RELIABLE`,
  :data:`UNRELIABLE`). :func:`cam_maps` computes the maps from the runs' checkpoints.

Why Jaccard with 0.2: the modes are pure in their confusion pair, so two modes of different
pairs never overlap, and a re-run repeats only part of a seed's errors (about half for the
models measured, bench/RESULTS.md): a mode repeated in full by another seed would have a
Jaccard of about 1/3 if half its members churn. 0.2 keeps such a mode matched and leaves
sub-modes that share a fifth of their images unmatched.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from cnnstress.analysis.runs import Run
from cnnstress.analysis.statistics import Estimate, PairedTest, estimate, paired_test
from cnnstress.core.cam import SALIENCY, compute_heatmaps, resolve_layer, run_cam_settings
from cnnstress.core.checkpoints import load_backbone
from cnnstress.core.data import load_split
from cnnstress.core.data.normalize import Normalize
from cnnstress.core.errors import ConfigError, DataError, UserError
from cnnstress.core.failure_modes.modes import FailureMode, FailureModes
from cnnstress.core.failure_modes.run import failure_modes_of_run, read_failure_modes
from cnnstress.core.metrics import find_failures
from cnnstress.core.run_dir import run_threshold

MATCH_THRESHOLD = 0.2
# Median Spearman correlation of two seeds' CAMs of the same image from which one seed's CAM
# is taken to tell the story of the setting, and below which it does not.
RELIABLE = 0.7
UNRELIABLE = 0.4


def jaccard(a: frozenset[int] | set[int], b: frozenset[int] | set[int]) -> float:
    """``|a & b| / |a | b|`` (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def jaccard_matrix(a: Sequence[frozenset[int]], b: Sequence[frozenset[int]]) -> np.ndarray:
    """``(len(a), len(b))`` Jaccard index of every pair of sets (:func:`jaccard`), from one
    sparse product of their indicator matrices over the images of ``a`` (an intersection holds
    nothing else)."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    column = {i: k for k, i in enumerate(frozenset().union(*a))}

    def indicator(sets: Sequence[frozenset[int]]) -> sparse.csr_matrix:
        kept = [[column[i] for i in x if i in column] for x in sets]
        rows = np.repeat(np.arange(len(sets)), [len(x) for x in kept])
        cols = np.fromiter((c for x in kept for c in x), np.int64, rows.size)
        return sparse.csr_matrix((np.ones(rows.size), (rows, cols)), (len(sets), len(column)))

    inter = (indicator(a) @ indicator(b).T).toarray()
    sizes_a = np.array([len(x) for x in a], np.float64)[:, None]
    sizes_b = np.array([len(x) for x in b], np.float64)[None, :]
    union = sizes_a + sizes_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# -- across seeds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedMode:
    """One mode of one seed's run: ``members`` are its test indices."""

    seed: int
    mode_id: int
    true: int
    predicted: int
    description: str
    members: frozenset[int]

    @classmethod
    def of(cls, seed: int, mode: FailureMode) -> SeedMode:
        return cls(
            seed, mode.id, mode.true, mode.predicted, mode.description, frozenset(mode.members)
        )


@dataclass(frozen=True)
class ModeFamily:
    """A mode matched across seeds.

    Attributes:
        id: 0.. in the order of :class:`SeedMatching.families` (stable first, then by size).
        modes: its modes, by seed then mode id (normally one per seed).
        seeds: the seeds it was found in. num_seeds: the group's seeds.
        stable: found in more than half of the group's seeds (and in at least two).
        overlaps: the Jaccard index of every match joining it; ``median_overlap`` their median
            (None for a mode found in one seed).
        description: the description of its largest mode (the first seed's on ties).
        true, predicted: the dominant pair of that mode.
    """

    id: int
    modes: tuple[SeedMode, ...]
    seeds: tuple[int, ...]
    num_seeds: int
    stable: bool
    overlaps: tuple[float, ...]
    median_overlap: float | None
    description: str
    true: int
    predicted: int

    def members(self, seed: int) -> frozenset[int]:
        """Test indices of its mode(s) in ``seed`` (empty where it was not found)."""
        found = [m.members for m in self.modes if m.seed == seed]
        return frozenset().union(*found) if found else frozenset()

    @property
    def mean_size(self) -> float:
        """Mean number of images per seed it was found in."""
        return sum(len(m.members) for m in self.modes) / max(len(self.seeds), 1)


@dataclass(frozen=True)
class SeedMatching:
    """The modes of one group (one grouping: ``errors`` or ``confident``) matched across its
    seeds with the Jaccard index ``>= threshold``."""

    grouping: str
    seeds: tuple[int, ...]
    threshold: float
    families: tuple[ModeFamily, ...]
    classes: tuple[str, ...]

    @property
    def stable(self) -> list[ModeFamily]:
        """The families found in most seeds."""
        return [f for f in self.families if f.stable]

    @property
    def seed_specific(self) -> list[ModeFamily]:
        """The families found in too few seeds."""
        return [f for f in self.families if not f.stable]


def _union_find(n: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(n)]


def match_pair(
    a: Sequence[SeedMode], b: Sequence[SeedMode], threshold: float = MATCH_THRESHOLD
) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(i, j, jaccard)`` between the modes ``a`` and ``b`` of two seeds:
    the assignment with the largest total overlap, keeping pairs with Jaccard ``>= threshold``."""
    if not a or not b:
        return []
    overlap = jaccard_matrix([x.members for x in a], [y.members for y in b])
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    return [
        (int(i), int(j), float(overlap[i, j]))
        for i, j in zip(rows, cols, strict=True)
        if overlap[i, j] >= threshold and overlap[i, j] > 0
    ]


def match_across_seeds(
    runs: Mapping[int, FailureModes],
    grouping: str = "errors",
    threshold: float = MATCH_THRESHOLD,
) -> SeedMatching:
    """Match the modes of one group's runs (``{seed: FailureModes}``) across seeds (see the
    module docstring). Deterministic: seeds and modes are visited in order."""
    seeds = tuple(sorted(runs))
    modes = [SeedMode.of(s, m) for s in seeds for m in runs[s].grouping(grouping).modes]
    by_seed = {s: [k for k, m in enumerate(modes) if m.seed == s] for s in seeds}
    edges: list[tuple[int, int]] = []
    weight: dict[tuple[int, int], float] = {}
    for i, s in enumerate(seeds):
        for t in seeds[i + 1 :]:
            a, b = by_seed[s], by_seed[t]
            for x, y, value in match_pair([modes[k] for k in a], [modes[k] for k in b], threshold):
                edges.append((a[x], b[y]))
                weight[(a[x], b[y])] = value
    roots = _union_find(len(modes), edges)
    groups: dict[int, list[int]] = {}
    for k, r in enumerate(roots):
        groups.setdefault(r, []).append(k)
    majority = len(seeds) // 2 + 1
    families = []
    for members in groups.values():
        fam_modes = tuple(modes[k] for k in members)
        fam_seeds = tuple(sorted({m.seed for m in fam_modes}))
        overlaps = tuple(v for (x, y), v in weight.items() if x in members and y in members)
        largest = max(fam_modes, key=lambda m: (len(m.members), -m.seed, -m.mode_id))
        families.append(
            ModeFamily(
                id=-1,
                modes=fam_modes,
                seeds=fam_seeds,
                num_seeds=len(seeds),
                stable=len(seeds) >= 2 and len(fam_seeds) >= max(2, majority),
                overlaps=overlaps,
                median_overlap=float(np.median(overlaps)) if overlaps else None,
                description=largest.description,
                true=largest.true,
                predicted=largest.predicted,
            )
        )
    families.sort(
        key=lambda f: (
            not f.stable,
            -len(f.seeds),
            -f.mean_size,
            f.modes[0].seed,
            f.modes[0].mode_id,
        )
    )
    families = [_with_id(f, k) for k, f in enumerate(families)]
    classes = runs[seeds[0]].classes if seeds else ()
    return SeedMatching(grouping, seeds, threshold, tuple(families), tuple(classes))


def _with_id(family: ModeFamily, k: int) -> ModeFamily:
    return replace(family, id=k)


# -- across improvements --------------------------------------------------------------------


@dataclass(frozen=True)
class Correctness:
    """Which test images one run gets right: ``index`` ``(N,)`` and ``correct`` ``(N,)`` bool.
    An analysis :class:`~cnnstress.analysis.runs.Run` has both and serves as well."""

    index: np.ndarray
    correct: np.ndarray


def share_right(run: Correctness | Run, images: frozenset[int]) -> float:
    """Share of ``images`` (test indices) that ``run`` gets right (NaN for none).

    Raises:
        DataError: an image the run was not tested on.
    """
    if not images:
        return math.nan
    wanted = np.fromiter(images, np.int64)
    found = np.isin(run.index, wanted)
    if int(found.sum()) != wanted.size:
        raise DataError("a failure mode names test images that a run was not tested on")
    return float(np.asarray(run.correct)[found].mean())


@dataclass(frozen=True)
class ModeFix:
    """What one improvement does to one stable mode of the reference.

    Attributes:
        family: the reference's mode. improvement: the improvement's group label.
        fixed: ``{seed: share}`` of the reference mode's images (in that seed) the improvement's
            run with the same seed gets right.
        reseed: ``{seed: share}`` of the same images the reference's *other* seeds get right
            (their mean): what a re-run without the improvement already fixes.
        fixed_estimate: mean of ``fixed`` over seeds with its t-interval.
        test: the paired t-test of ``fixed`` against ``reseed`` over seeds (difference
            ``fixed - reseed``, its t-interval and p-value).
        seeds_better: seeds where the improvement fixes more than a re-run does.
        persists: seeds where the improvement still has a mode matching it (Jaccard
            ``>= threshold``, same grouping).
    """

    family: ModeFamily
    improvement: str
    fixed: dict[int, float]
    reseed: dict[int, float]
    fixed_estimate: Estimate
    test: PairedTest
    seeds_better: int
    persists: tuple[int, ...]


@dataclass(frozen=True)
class IntroducedMode:
    """A stable mode of an improvement that matches no mode of the reference in most of its
    seeds (what the improvement breaks); ``reference_right``: ``{seed: share}`` of its images
    the reference's run with that seed got right."""

    family: ModeFamily
    improvement: str
    reference_right: dict[int, float]
    reference_right_estimate: Estimate


@dataclass(frozen=True)
class ImprovementModes:
    """One improvement against the reference, for one grouping."""

    improvement: str
    reference: str
    grouping: str
    fixes: tuple[ModeFix, ...]
    introduced: tuple[IntroducedMode, ...]


def _matches_in_seed(
    members: frozenset[int], modes: FailureModes, grouping: str, threshold: float
) -> bool:
    others = [frozenset(m.members) for m in modes.grouping(grouping).modes]
    return bool(others) and float(jaccard_matrix([members], others).max()) >= threshold


def fixes(
    reference: SeedMatching,
    reference_modes: Mapping[int, FailureModes],
    reference_runs: Mapping[int, Correctness | Run],
    improvement: SeedMatching,
    improvement_modes: Mapping[int, FailureModes],
    improvement_runs: Mapping[int, Correctness | Run],
    *,
    reference_name: str = "reference",
    improvement_name: str = "improvement",
) -> ImprovementModes:
    """What an improvement fixes among the reference's stable modes, and what it introduces
    (see the module docstring). ``*_modes``/``*_runs``: per seed, the run's failure modes and
    its correctness; seeds pair by value."""
    grouping, threshold = reference.grouping, reference.threshold
    # correctness once per run (a Run computes it from its probabilities on every access)
    reference_runs = {
        s: Correctness(np.asarray(r.index), np.asarray(r.correct))
        for s, r in reference_runs.items()
    }
    improvement_runs = {
        s: Correctness(np.asarray(r.index), np.asarray(r.correct))
        for s, r in improvement_runs.items()
    }
    found = []
    for family in reference.stable:
        fixed, reseed, persists = {}, {}, []
        for seed in family.seeds:
            if seed not in improvement_runs:
                continue
            images = family.members(seed)
            fixed[seed] = share_right(improvement_runs[seed], images)
            others = [share_right(reference_runs[s], images) for s in reference_runs if s != seed]
            reseed[seed] = float(np.mean(others)) if others else math.nan
            if seed in improvement_modes and _matches_in_seed(
                images, improvement_modes[seed], grouping, threshold
            ):
                persists.append(seed)
        with_reseed = {s: v for s, v in reseed.items() if math.isfinite(v)}
        test = paired_test(with_reseed, {s: fixed[s] for s in with_reseed})
        found.append(
            ModeFix(
                family=family,
                improvement=improvement_name,
                fixed=fixed,
                reseed=reseed,
                fixed_estimate=estimate(list(fixed.values())),
                test=test,
                seeds_better=sum(fixed[s] > with_reseed[s] for s in with_reseed),
                persists=tuple(persists),
            )
        )
    introduced = []
    for family in improvement.stable:
        unmatched = [
            s
            for s in family.seeds
            if s not in reference_modes
            or not _matches_in_seed(family.members(s), reference_modes[s], grouping, threshold)
        ]
        if len(unmatched) * 2 <= len(family.seeds):
            continue
        right = {
            s: share_right(reference_runs[s], family.members(s))
            for s in family.seeds
            if s in reference_runs
        }
        introduced.append(
            IntroducedMode(family, improvement_name, right, estimate(list(right.values())))
        )
    return ImprovementModes(
        improvement_name, reference_name, grouping, tuple(found), tuple(introduced)
    )


# -- Grad-CAM agreement across seeds ---------------------------------------------------------


@dataclass(frozen=True)
class CamAgreement:
    """How much the CAMs of the same images agree across seeds, for one CAM method.

    Attributes:
        method, layer: the CAM settings. index: ``(N,)`` the test images (the reference's
            confident failures). seeds: the seeds compared.
        per_image: ``(N,)`` mean over seed pairs of the Spearman correlation of the two maps.
        per_pair: ``{(seed_a, seed_b): (N,)}`` correlations.
        median, q25, q75: over all image x seed-pair correlations.
        judgement: ``reliable`` (median >= :data:`RELIABLE`), ``unreliable`` (median <
            :data:`UNRELIABLE`) or ``partly``.
    """

    method: str
    layer: str | None
    index: np.ndarray
    seeds: tuple[int, ...]
    per_image: np.ndarray
    per_pair: dict[tuple[int, int], np.ndarray]
    median: float
    q25: float
    q75: float
    judgement: str


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each pair of maps: ``(N, H, W)`` x ``(N, H, W)`` -> ``(N,)``
    (average ranks for ties; NaN for a constant map)."""
    ra = rankdata(a.reshape(a.shape[0], -1), axis=1)
    rb = rankdata(b.reshape(b.shape[0], -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denom = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(1) / denom, np.nan)


def judge(median: float) -> str:
    """``reliable``, ``partly`` or ``unreliable`` (see :class:`CamAgreement`)."""
    if not math.isfinite(median):
        return "unknown"
    if median >= RELIABLE:
        return "reliable"
    return "unreliable" if median < UNRELIABLE else "partly"


def cam_agreement(
    maps: Mapping[int, np.ndarray], index: np.ndarray, method: str, layer: str | None = None
) -> CamAgreement:
    """Agreement of ``{seed: maps (N, H, W)}`` (the same ``N`` images ``index``, each seed's
    model explaining the same class) across every pair of seeds."""
    seeds = tuple(sorted(maps))
    per_pair = {
        (s, t): spearman_rows(np.asarray(maps[s]), np.asarray(maps[t]))
        for i, s in enumerate(seeds)
        for t in seeds[i + 1 :]
    }
    values = np.concatenate(list(per_pair.values())) if per_pair else np.zeros(0)
    finite = values[np.isfinite(values)]
    stacked = np.stack(list(per_pair.values())) if per_pair else np.zeros((0, len(index)))
    with warnings.catch_warnings():  # an image whose maps are all constant: NaN, said so
        warnings.simplefilter("ignore", RuntimeWarning)
        per_image = np.nanmean(stacked, 0) if stacked.size else np.full(len(index), np.nan)
    median = float(np.median(finite)) if finite.size else math.nan
    q25, q75 = (
        (float(np.quantile(finite, 0.25)), float(np.quantile(finite, 0.75)))
        if finite.size
        else (math.nan, math.nan)
    )
    return CamAgreement(
        method,
        layer,
        np.asarray(index),
        seeds,
        per_image,
        per_pair,
        median,
        q25,
        q75,
        judge(median),
    )


def cam_maps(
    runs: Mapping[int, Run],
    index: np.ndarray,
    explained: np.ndarray,
    methods: Sequence[str],
    layer: str | None,
    device: str = "cpu",
) -> dict[str, dict[int, np.ndarray]]:
    """``{method: {seed: (N, H, W)}}`` CAMs of the test images ``index`` for the classes
    ``explained`` ``(N,)``, from each run's backbone (rebuilt by :func:`load_backbone`, weights
    only; loaded once for all methods)."""
    out: dict[str, dict[int, np.ndarray]] = {m: {} for m in methods}
    images = None
    for seed in sorted(runs):
        run = runs[seed]
        net, cfg = load_backbone(run.path, device=device)
        if images is None:
            split = load_split(str(cfg.dataset.root), str(cfg.dataset.name), "test")
            if not bool(split.contains(index).all()):
                raise DataError(f"{run.path}: the CAM images are not in its test split")
            images = split.images[split.rows(index)]
        x = Normalize.of(cfg.dataset)(images).to(device)
        for method in methods:
            module = None if method == SALIENCY else resolve_layer(net, layer, "CAM layer")
            maps = compute_heatmaps(net, x, torch.as_tensor(explained), method, module)
            out[method][seed] = maps.numpy()
    return out


def second_method(method: str) -> str:
    """The CAM method compared alongside ``method``: layercam (element-wise gradients x
    activations at the same layer), or gradcam when ``method`` is layercam."""
    return "gradcam" if method == "layercam" else "layercam"


def reference_failures(
    runs: Mapping[int, Run], threshold: float, top_n: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """The images whose CAMs are compared: the ``top_n`` most confident failures (wrong with
    confidence ``>= threshold``) of the reference's smallest seed, ``(index, explained)``: test
    indices and the class that seed predicted (each model explains that class)."""
    first = runs[min(runs)]
    rows = find_failures(first.index, first.target, first.probs, threshold)[:top_n]
    return first.index[rows], first.pred[rows]


def group_cam_agreement(
    runs: Mapping[int, Run],
    index: np.ndarray,
    explained: np.ndarray,
    methods: Sequence[str] | None = None,
    layer: str | None = None,
    device: str = "cpu",
) -> list[CamAgreement]:
    """CAM agreement across the seeds of one group (``{seed: run}``) on the images ``index``,
    each model explaining the classes ``explained`` (:func:`reference_failures`), under
    ``methods`` (default: the runs' CAM method and :func:`second_method`) at ``layer``
    (default: the runs')."""
    method, found_layer = run_cam_settings(runs[min(runs)].config)
    layer = layer or found_layer
    methods = list(methods) if methods else [method, second_method(method)]
    if len(runs) < 2 or len(index) == 0:
        return [cam_agreement({}, index, m, layer) for m in methods]
    maps = cam_maps(runs, index, explained, methods, layer, device)
    return [cam_agreement(maps[m], index, m, layer) for m in methods]


# -- per-run modes for the analysis ----------------------------------------------------------


def run_failure_modes(
    run: Run, compute_missing: bool = True, device: str = "cpu"
) -> FailureModes | None:
    """A run's failure modes: its ``failure_modes.json``, else (``compute_missing``) computed
    from its checkpoint with the run's own settings (runs trained before the callback existed),
    else None."""
    found = read_failure_modes(run.path)
    if found is not None or not compute_missing:
        return found
    return failure_modes_of_run(run.path, device=device)[0]


# -- one setting: the reference and its improvements ------------------------------------------


@dataclass(frozen=True)
class GroupModes:
    """One group's failure modes across its seeds.

    ``matching``: per grouping (``errors``, ``confident``); ``cam``: CAM agreement per method
    (empty when skipped); ``computed``: seeds whose modes were computed from the checkpoint
    because the run had no ``failure_modes.json``; ``skipped``: ``{seed: reason}`` of the runs
    left out (no ``failure_modes.json`` and not computed, or one that is malformed: run
    directories are untrusted input); ``cam_skipped``: why no CAM agreement was measured.
    """

    name: str
    seeds: tuple[int, ...]
    matching: dict[str, SeedMatching]
    cam: tuple[CamAgreement, ...]
    computed: tuple[int, ...]
    skipped: dict[int, str] = field(default_factory=dict)
    cam_skipped: str | None = None


@dataclass(frozen=True)
class FailureModeAnalysis:
    """The failure modes of one (dataset, model) setting: every group across its seeds, and
    each improvement against the reference (``improvements[name][grouping]``); ``classes``: the
    setting's class names (for the report's wording)."""

    reference: str
    groups: dict[str, GroupModes]
    improvements: dict[str, dict[str, ImprovementModes]]
    classes: tuple[str, ...] = ()


def analyse_failure_modes(
    groups: Mapping[str, Mapping[int, Run]],
    reference: str,
    *,
    threshold: float = MATCH_THRESHOLD,
    cam_top_n: int = 16,
    cam_methods: Sequence[str] | None = None,
    compute_missing: bool = True,
    device: str = "cpu",
) -> FailureModeAnalysis:
    """Failure modes of every group (``{name: {seed: run}}``, one setting) across its seeds,
    and of every other group against ``reference``. CAM agreement (``cam_top_n`` > 0): every
    group's seeds on the reference's ``cam_top_n`` most confident failures (its smallest seed's,
    at its ``confidence_threshold``), loading every checkpoint. Runs without
    ``failure_modes.json`` get their modes computed from their checkpoints
    (``compute_missing``) or are left out; so are runs whose file is malformed or whose
    checkpoint cannot be read, each with its reason (:attr:`GroupModes.skipped`).

    Raises:
        ConfigError: ``reference`` is not one of ``groups``.
    """
    if reference not in groups:
        raise ConfigError(f"reference={reference} is not one of the groups: {', '.join(groups)}")
    modes: dict[str, dict[int, FailureModes]] = {}
    results: dict[str, GroupModes] = {}
    first = groups[reference][min(groups[reference])]
    threshold_of = run_threshold(OmegaConf.to_container(first.config))
    cam_index, cam_classes = reference_failures(groups[reference], threshold_of, cam_top_n)
    classes: tuple[str, ...] = ()
    for name, runs in groups.items():
        found, computed, skipped = {}, [], {}
        for seed, run in sorted(runs.items()):
            try:
                result = read_failure_modes(run.path)
                if result is None and compute_missing:
                    result = failure_modes_of_run(run.path, device=device)[0]
                    computed.append(seed)
            except UserError as err:  # a malformed file, a missing checkpoint: say so, go on
                skipped[seed] = str(err)
                continue
            if result is None:
                skipped[seed] = "no failure_modes.json (failure_modes.compute_missing=true "
                skipped[seed] += "computes it from the checkpoint)"
                continue
            found[seed] = result
            classes = classes or tuple(result.classes)
        modes[name] = found
        matching = {g: match_across_seeds(found, g, threshold) for g in ("errors", "confident")}
        cam: list[CamAgreement] = []
        cam_skipped = None
        if cam_top_n > 0 and found:
            try:
                cam = group_cam_agreement(
                    {s: runs[s] for s in found}, cam_index, cam_classes, cam_methods, device=device
                )
            except UserError as err:  # a moved dataset or an unreadable checkpoint
                cam_skipped = str(err)
        elif cam_top_n == 0:
            cam_skipped = "switched off (failure_modes.cam_top_n=0)"
        results[name] = GroupModes(
            name, tuple(sorted(found)), matching, tuple(cam), tuple(computed), skipped, cam_skipped
        )
    improvements: dict[str, dict[str, ImprovementModes]] = {}
    ref = results[reference]
    for name in groups:
        if name == reference:
            continue
        improvements[name] = {}
        for grouping in ("errors", "confident"):
            improvements[name][grouping] = fixes(
                ref.matching[grouping],
                modes[reference],
                groups[reference],
                results[name].matching[grouping],
                modes[name],
                groups[name],
                reference_name=reference,
                improvement_name=name,
            )
    return FailureModeAnalysis(reference, results, improvements, classes)
