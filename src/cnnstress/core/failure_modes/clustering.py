"""Group errors into modes: by confusion pair, then by the model's embeddings within each pair.

scikit-learn does the statistics (:class:`~sklearn.decomposition.PCA`,
:class:`~sklearn.mixture.GaussianMixture`); only the ICL, two lines, is written here (scikit-learn
offers the BIC and AIC). The method was chosen on a planted benchmark (``bench/failure_modes.py``;
bench/RESULTS.md, "Failure modes (issue 25)") against grouping by confusion pair alone, against
one mixture over all errors, and against Domino's error-aware mixture (Eyuboglu et al., ICLR
2022), which also keeps a slice to one kind of error.

For the errors of one set (all errors, or the confident ones), with true classes ``true``,
predictions ``pred`` and embeddings ``(N, D)``:

1. every row is scaled to unit length (backbones differ in feature scale) and, above 64
   columns, projected on the errors' first 64 principal components (:func:`unit_rows`);
2. the errors are split by their confusion pair ``true -> pred``; a pair with fewer than
   ``min_size`` errors forms no mode (its errors are *unassigned*: scattered errors), a pair
   with fewer than ``2 * min_size`` forms one;
3. within a larger pair, PCA to ``pca_dim`` dimensions (at most ``n - 1``), scaled so that the
   first has unit variance, and a full-covariance Gaussian mixture for every ``K`` in
   ``1..max_modes_per_pair`` (fewer when ``n / K`` drops below ``min_size``), or exactly
   ``modes_per_pair``; the lowest ICL wins: the integrated completed likelihood of Biernacki,
   Celeux & Govaert (IEEE TPAMI 2000), the BIC plus twice the entropy of the assignments. A
   component with fewer than ``min_size`` members hands them to the most probable kept one;
4. modes are numbered by decreasing size (ties by pair).

Why the ICL: the BIC splits a coherent but non-Gaussian slice into overlapping components (on
the benchmark, a planted slice came out in two to four pieces); the entropy term penalises
exactly such overlapping splits and kept the planted slice whole. A low ``pca_dim`` and full
covariances help the same way; more dimensions or diagonal covariances split it too.

Deterministic for the same inputs: the PCAs and the mixtures' k-means initialisation draw from
``seed``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

# Added to the mixture's variances, in units of the first principal component's variance:
# keeps a tight component from collapsing onto a few points.
REG_COVAR = 1e-3
# Columns the unit-length embeddings keep before the pairs' PCA (:func:`unit_rows`).
PRE_DIM = 64


@dataclass(frozen=True)
class PairFit:
    """How the errors of one confusion pair were grouped.

    ``count``: its errors; ``components``: its modes (0: too few errors for a mode, 1 without
    a mixture below ``2 * min_size``); ``icl``: ``{K: ICL}`` of every mixture fitted.
    """

    true: int
    predicted: int
    count: int
    components: int
    icl: dict[int, float]


@dataclass(frozen=True)
class Clustering:
    """The modes found among ``N`` errors.

    Attributes:
        labels: ``(N,)`` int64 mode of each error, numbered 0.. by decreasing size; -1 for an
            unassigned error (its pair had fewer than ``min_size``).
        probability: ``(N,)`` posterior probability of the error's own component (1 in a pair
            of one component; 0 when unassigned).
        distance: ``(N,)`` Mahalanobis distance to its component's mean (Euclidean in a pair
            without a mixture): with ``probability``, how typical it is of its mode.
        pairs: one :class:`PairFit` per confusion pair present, by (true, predicted).
    """

    labels: np.ndarray
    probability: np.ndarray
    distance: np.ndarray
    pairs: tuple[PairFit, ...]

    @property
    def num_modes(self) -> int:
        """Number of modes (labels >= 0)."""
        return int(self.labels.max()) + 1 if self.labels.size and self.labels.max() >= 0 else 0


def unit_rows(embeddings: np.ndarray, max_dim: int = PRE_DIM, seed: int = 0) -> np.ndarray:
    """Rows scaled to unit length, then, when there are more than ``max_dim`` rows and columns,
    projected on their first ``max_dim`` principal components, which keeps their distances
    nearly intact and makes each pair's PCA cheap: ``(N, D)`` -> ``(N, <= max(D, max_dim))``
    float64."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    if x.shape[0] <= max_dim or x.shape[1] <= max_dim:
        return x
    return PCA(max_dim, svd_solver="randomized", random_state=seed).fit_transform(x)


def reduce(x: np.ndarray, pca_dim: int, seed: int = 0) -> np.ndarray:
    """PCA of the rows ``(n, D)`` to ``min(pca_dim, n - 1, D)`` dimensions, scaled so that the
    first has unit variance: ``(n, d)`` float64 (``n >= 2``)."""
    dim = max(1, min(pca_dim, x.shape[0] - 1, x.shape[1]))
    z = PCA(dim, svd_solver="full", random_state=seed).fit_transform(x)
    scale = z[:, 0].std()
    return z / scale if scale > 0 else z


CRITERIA = ("icl", "bic")


def _fit_pair(
    x: np.ndarray, candidates: list[int], min_size: int, seed: int, criterion: str = "icl"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, float]]:
    """Component ``(n,)``, posterior of it ``(n,)``, Mahalanobis distance ``(n,)`` of the
    lowest-ICL (or BIC, ``criterion``) mixture over ``candidates`` (small components folded
    into kept ones), and the criterion of every candidate."""
    best: GaussianMixture | None = None
    icl: dict[int, float] = {}
    for k in candidates:
        mixture = GaussianMixture(
            k, covariance_type="full", reg_covar=REG_COVAR, n_init=1, random_state=seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture.fit(x)
        icl[k] = float(mixture.bic(x))
        if criterion == "icl":  # ICL = BIC + 2 * entropy of the assignments
            posterior = mixture.predict_proba(x)
            icl[k] -= 2 * float(xlogy(posterior, posterior).sum())
        if best is None or icl[k] < icl[best.n_components]:
            best = mixture
    assert best is not None
    posterior = best.predict_proba(x)
    sizes = np.bincount(posterior.argmax(1), minlength=best.n_components)
    kept = sizes >= min_size
    if not kept.any():  # cannot happen with n // K >= min_size candidates; keep the largest
        kept[sizes.argmax()] = True
    restricted = np.where(kept, posterior, -1.0)
    component = restricted.argmax(1)
    rows = np.arange(x.shape[0])
    diff = x - best.means_[component]
    precision = best.precisions_[component]  # (n, d, d)
    distance = np.sqrt(np.einsum("ni,nij,nj->n", diff, precision, diff).clip(0))
    return component, posterior[rows, component], distance, icl


def cluster_errors(
    embeddings: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    *,
    max_modes_per_pair: int = 4,
    modes_per_pair: int | None = None,
    min_size: int = 5,
    pca_dim: int = 4,
    seed: int = 0,
    criterion: str = "icl",
) -> Clustering:
    """Modes of ``N`` errors with embeddings ``(N, D)``, true classes ``(N,)`` and predictions
    ``(N,)`` (see the module docstring; ``criterion="bic"`` for the benchmark's comparison)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    # Many small fits: one BLAS thread each is faster, and many threads on a busy machine
    # spin-wait (measured: 3 s single-threaded, 60-150 s with default threads under load).
    with threadpool_limits(limits=1):
        return _cluster_errors(
            embeddings,
            true,
            pred,
            max_modes_per_pair,
            modes_per_pair,
            min_size,
            pca_dim,
            seed,
            criterion,
        )


def _cluster_errors(
    embeddings: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    max_modes_per_pair: int,
    modes_per_pair: int | None,
    min_size: int,
    pca_dim: int,
    seed: int,
    criterion: str,
) -> Clustering:
    true, pred = np.asarray(true, np.int64), np.asarray(pred, np.int64)
    n = int(true.shape[0])
    if n:
        embeddings = unit_rows(embeddings, seed=seed)
    component_of = np.full(n, -1, np.int64)  # global component id, before numbering by size
    probability, distance = np.zeros(n), np.zeros(n)
    fits: list[PairFit] = []
    next_id = 0
    num_classes = int(max(true.max(initial=0), pred.max(initial=0))) + 1
    cells = true * num_classes + pred
    for cell in np.unique(cells):
        rows = np.flatnonzero(cells == cell)
        t, p = int(cell // num_classes), int(cell % num_classes)
        if rows.size < min_size:
            fits.append(PairFit(t, p, int(rows.size), 0, {}))
            continue
        x = reduce(embeddings[rows], pca_dim, seed)
        if rows.size < 2 * min_size:
            component_of[rows] = next_id
            probability[rows] = 1.0
            distance[rows] = np.linalg.norm(x - x.mean(0), axis=1)
            fits.append(PairFit(t, p, int(rows.size), 1, {}))
            next_id += 1
            continue
        if modes_per_pair is not None:
            candidates = [max(1, min(modes_per_pair, rows.size // min_size))]
        else:
            candidates = list(range(1, min(max_modes_per_pair, rows.size // min_size) + 1))
        component, prob, dist, icl = _fit_pair(x, candidates, min_size, seed, criterion)
        used, local = np.unique(component, return_inverse=True)
        component_of[rows] = next_id + local
        probability[rows], distance[rows] = prob, dist
        fits.append(PairFit(t, p, int(rows.size), int(used.size), icl))
        next_id += int(used.size)
    sizes = np.bincount(component_of[component_of >= 0], minlength=next_id)
    # by decreasing size; ties by the component id, which follows the pairs' order
    order = np.lexsort((np.arange(next_id), -sizes))
    number = np.empty(next_id, np.int64)
    number[order] = np.arange(next_id)
    labels = np.full(n, -1, np.int64)
    assigned = component_of >= 0
    labels[assigned] = number[component_of[assigned]]
    return Clustering(labels, probability, distance, tuple(fits))
