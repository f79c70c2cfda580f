"""A run's failure modes: its errors grouped by its own embeddings, each described in numbers
and in one line.

:func:`find_failure_modes` is the one entry point (compute only, no model, no files): from the
per-image predictions of a test split, the penultimate embeddings of the errors
(:mod:`~cnnstress.core.failure_modes.embeddings`), the images (for their attributes,
:mod:`~cnnstress.core.failure_modes.attributes`) and optionally each error's CAM mass outside the
centre, it groups the errors, and separately the confident errors (wrong with confidence
``>= threshold``), into modes (:mod:`~cnnstress.core.failure_modes.clustering`: by confusion pair,
then by the embeddings within a pair) and describes each:

* ``size``; ``composition``: its true -> predicted pairs, most frequent first; the dominant
  pair names the mode;
* ``class_share``: its images of the dominant true class over all test images of that class;
* ``mean_confidence``; ``label_errors``: how many members are known label errors
  (:mod:`cnnstress.core.data.label_errors`), where the indices are official;
* ``attributes``: per attribute, the mean over the members of the dominant true class, the
  mean and standard deviation over the *rest of that class* (its other test images), and the
  standardised difference ``z = (mode - rest) / sd(rest)``;
* ``traits``: the attributes that stand out: ``|z| >= TRAIT_Z`` *and* the difference at least
  ``TRAIT_SE`` standard errors (``|z| * sqrt(m) >= TRAIT_SE`` for ``m`` members of the class),
  strongest first, at most ``MAX_TRAITS``; a quantity that stands out in the same direction in
  the centre and the surround is said once ("low-saturation centre and surround"), and the
  words about one region together ("bright, low-saturation surround");
* ``cam_outside``: the mean share of CAM mass outside the centre over the mode's
  ``cam_per_mode`` most typical members (a flat map gives the surround's share of the area,
  0.75 for a 16-of-32 centre);
* ``description``: one line from the above, e.g. ``ship -> airplane, 41 images (4.1% of class
  ship): bright, low-saturation surround; fine texture; CAM 0.81 outside the centre``;
* ``members``: the official test indices, most typical first (highest posterior probability
  of the mode, then nearest its mean).

Everything is deterministic for the same inputs (:func:`cluster_embeddings` seeds the mixture).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from cnnstress.core.data.label_errors import LabelErrors
from cnnstress.core.errors import DataError
from cnnstress.core.failure_modes.attributes import (
    ATTRIBUTES,
    DEFINITIONS,
    REGIONS,
    WORDS,
    image_attributes,
)
from cnnstress.core.failure_modes.clustering import PairFit, cluster_errors
from cnnstress.core.failure_modes.settings import FailureModeSettings
from cnnstress.core.metrics import confident_wrong

SCHEMA_VERSION = 1
METHOD = "pair_pca_gmm_icl"
GROUPINGS = ("errors", "confident")
TRAIT_Z = 0.5  # a medium standardised difference (Cohen's d)
TRAIT_SE = 3.0  # ... at least three standard errors from the rest of the class (12 attributes)
MAX_TRAITS = 4
# The dominant pair names a mode alone from this share of its members on.
PURE = 0.8


@dataclass(frozen=True)
class PairCount:
    """``count`` members of a mode whose true class is ``true`` and prediction ``predicted``."""

    true: int
    predicted: int
    count: int


@dataclass(frozen=True)
class AttributeContrast:
    """One attribute of a mode against the rest of its dominant true class.

    ``mode``: mean over the members of that class; ``rest``, ``rest_sd``: mean and standard
    deviation over the class's other test images; ``z = (mode - rest) / rest_sd`` (NaN when
    the rest has no spread or no image).
    """

    name: str
    mode: float
    rest: float
    rest_sd: float
    z: float


CONTRAST_KEYS = ("mode", "rest", "rest_sd", "z")


@dataclass(frozen=True)
class FailureMode:
    """One mode of a run's errors (see the module docstring for every field).

    ``true``/``predicted``: the dominant pair; ``purity``: its share of the members;
    ``members``: official test indices (positions in the split where unofficial), most
    typical first; ``typicality``: each member's posterior probability of the mode.
    ``label_errors`` is None when unknown; ``cam_outside`` None without CAMs (``cam_images``
    members had one).
    """

    id: int
    size: int
    true: int
    predicted: int
    purity: float
    composition: tuple[PairCount, ...]
    class_share: float
    mean_confidence: float
    label_errors: int | None
    attributes: tuple[AttributeContrast, ...]
    traits: tuple[str, ...]
    cam_outside: float | None
    cam_images: int
    description: str
    members: tuple[int, ...]
    typicality: tuple[float, ...]

    @property
    def label_error_share(self) -> float | None:
        """Share of the members that are known label errors (None when unknown)."""
        return None if self.label_errors is None else self.label_errors / self.size

    @property
    def pair(self) -> str:
        """``"<true> -> <predicted>"`` by class ids (names live in :class:`FailureModes`)."""
        return f"{self.true} -> {self.predicted}"


@dataclass(frozen=True)
class ModeGrouping:
    """The modes of one set of errors: all errors, or the confident ones.

    ``num_errors``: errors grouped; ``unassigned``: errors in no mode (their confusion pair had
    fewer than ``min_size``), sorted; ``pairs``: how each confusion pair was split.
    """

    name: str
    num_errors: int
    modes: tuple[FailureMode, ...]
    unassigned: tuple[int, ...]
    pairs: tuple[PairFit, ...] = ()

    def mode_of(self) -> dict[int, int]:
        """``{test index: mode id}`` for every member of every mode."""
        return {i: m.id for m in self.modes for i in m.members}


@dataclass(frozen=True)
class FailureModes:
    """Everything :func:`find_failure_modes` found for one run (``failure_modes.json``)."""

    classes: tuple[str, ...]
    threshold: float
    num_images: int
    official_index: bool
    embedding_layer: str
    embedding_dim: int
    centre_size: int
    cam_method: str | None
    cam_layer: str | None
    settings: dict[str, Any]
    errors: ModeGrouping
    confident: ModeGrouping
    method: str = METHOD
    version: int = SCHEMA_VERSION
    definitions: dict[str, str] = field(default_factory=dict)

    def grouping(self, name: str) -> ModeGrouping:
        """``errors`` or ``confident``."""
        if name not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {name!r}")
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as null; :func:`from_json` reads it back)."""
        return _finite(asdict(self))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _grouping_from_json(data: Mapping[str, Any]) -> ModeGrouping:
    modes = []
    for m in data["modes"]:
        opt_cam = m["cam_outside"]
        modes.append(
            FailureMode(
                id=int(m["id"]),
                size=int(m["size"]),
                true=int(m["true"]),
                predicted=int(m["predicted"]),
                purity=float(m["purity"]),
                composition=tuple(
                    PairCount(int(p["true"]), int(p["predicted"]), int(p["count"]))
                    for p in m["composition"]
                ),
                class_share=_num(m["class_share"]),
                mean_confidence=float(m["mean_confidence"]),
                label_errors=None if m["label_errors"] is None else int(m["label_errors"]),
                attributes=tuple(
                    AttributeContrast(str(a["name"]), *(_num(a[k]) for k in CONTRAST_KEYS))
                    for a in m["attributes"]
                ),
                traits=tuple(str(t) for t in m["traits"]),
                cam_outside=None if opt_cam is None else float(opt_cam),
                cam_images=int(m["cam_images"]),
                description=str(m["description"]),
                members=tuple(map(int, m["members"])),
                typicality=tuple(map(float, m["typicality"])),
            )
        )
    return ModeGrouping(
        name=str(data["name"]),
        num_errors=int(data["num_errors"]),
        modes=tuple(modes),
        unassigned=tuple(map(int, data["unassigned"])),
        pairs=tuple(
            PairFit(
                int(p["true"]),
                int(p["predicted"]),
                int(p["count"]),
                int(p["components"]),
                {int(k): float(v) for k, v in p["icl"].items()},
            )
            for p in data["pairs"]
        ),
    )


def from_json(data: Any, where: str = "failure_modes.json") -> FailureModes:
    """Read :meth:`FailureModes.to_json`'s output back (e.g. a run's ``failure_modes.json``).

    Raises:
        DataError: not a failure-modes record of this schema version, or malformed.
    """
    try:
        if int(data["version"]) != SCHEMA_VERSION:
            raise DataError(
                f"{where}: schema version {data['version']}, this cnnstress reads {SCHEMA_VERSION}"
            )
        return FailureModes(
            classes=tuple(str(c) for c in data["classes"]),
            threshold=float(data["threshold"]),
            num_images=int(data["num_images"]),
            official_index=bool(data["official_index"]),
            embedding_layer=str(data["embedding_layer"]),
            embedding_dim=int(data["embedding_dim"]),
            centre_size=int(data["centre_size"]),
            cam_method=None if data["cam_method"] is None else str(data["cam_method"]),
            cam_layer=None if data["cam_layer"] is None else str(data["cam_layer"]),
            settings=dict(data["settings"]),
            errors=_grouping_from_json(data["errors"]),
            confident=_grouping_from_json(data["confident"]),
            method=str(data["method"]),
            version=int(data["version"]),
            definitions={str(k): str(v) for k, v in dict(data["definitions"]).items()},
        )
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{where} is malformed: {type(err).__name__}: {err}") from None


# -- description ----------------------------------------------------------------------------


def _contrast(
    name: str, values: np.ndarray, members: np.ndarray, rest: np.ndarray
) -> AttributeContrast:
    m = values[members]
    r = values[rest]
    mode = float(m.mean()) if m.size else math.nan
    rest_mean = float(r.mean()) if r.size else math.nan
    rest_sd = float(r.std(ddof=1)) if r.size > 1 else math.nan
    z = (mode - rest_mean) / rest_sd if rest_sd and math.isfinite(rest_sd) else math.nan
    return AttributeContrast(name, mode, rest_mean, rest_sd, z)


def standing_out(contrasts: Sequence[AttributeContrast], members: int) -> list[str]:
    """Phrases for the attributes that stand out (see the module docstring), strongest first:
    at most ``MAX_TRAITS`` attributes, a quantity that stands out alike in the centre and the
    surround counted once ("low-saturation centre and surround"), and words about one region
    said together ("bright, low-saturation surround")."""
    salient = [
        c
        for c in contrasts
        if math.isfinite(c.z) and abs(c.z) >= TRAIT_Z and abs(c.z) * math.sqrt(members) >= TRAIT_SE
    ]
    salient.sort(key=lambda c: -abs(c.z))
    direction = {c.name: c.z > 0 for c in salient}
    items: list[tuple[str, str | None]] = []  # (word, region)
    used: set[str] = set()
    for c in salient:
        if c.name in used or len(items) == MAX_TRAITS:
            continue
        high, low, region = WORDS[c.name]
        word = high if direction[c.name] else low
        used.add(c.name)
        if region is not None:
            twin = c.name.removesuffix(region) + next(r for r in REGIONS if r != region)
            if direction.get(twin) == direction[c.name]:
                region = "centre and surround"
                used.add(twin)
        items.append((word, region))
    phrases: list[str] = []
    regions: list[str] = []
    for word, region in items:
        if region is None:
            phrases.append(word)
        elif region not in regions:
            regions.append(region)
            phrases.append(region)  # a placeholder, filled below in order of first mention
    for region in regions:
        words = ", ".join(w for w, r in items if r == region)
        phrases[phrases.index(region)] = f"{words} {region}"
    return phrases


def describe(mode: FailureMode, classes: Sequence[str], traits: Sequence[str] | None = None) -> str:
    """One line: the dominant pair (and the others when it covers under 80%), the size, the
    share of the true class, the traits and the CAM mass outside the centre."""
    true, pred = classes[mode.true], classes[mode.predicted]
    head = f"{true} -> {pred}"
    if mode.purity < PURE:
        others = [f"{classes[p.true]} -> {classes[p.predicted]}" for p in mode.composition[1:3]]
        head += f" ({mode.purity:.0%}; also {', '.join(others)})"
    text = f"{head}, {mode.size} images ({mode.class_share:.1%} of class {true})"
    traits = mode.traits if traits is None else traits
    text += ": " + ("; ".join(traits) if traits else "no measured attribute stands out")
    if mode.cam_outside is not None:
        text += f"; CAM {mode.cam_outside:.2f} outside the centre"
    return text


# -- finding the modes ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Split:
    """What :func:`find_failure_modes` knows of every image of the split, row-aligned."""

    index: np.ndarray
    target: np.ndarray
    pred: np.ndarray
    confidence: np.ndarray
    attributes: Mapping[str, np.ndarray]
    is_label_error: np.ndarray | None
    classes: Sequence[str]


def _describe_mode(
    split: _Split, mode_id: int, rows: np.ndarray, typicality: np.ndarray, cams: np.ndarray
) -> FailureMode:
    """The :class:`FailureMode` of the errors at ``rows`` (most typical first) with their
    posterior ``typicality`` and CAM outside-shares ``cams`` (NaN where not measured)."""
    c = len(split.classes)
    target, pred = split.target, split.pred
    pairs, counts = np.unique(target[rows] * c + pred[rows], return_counts=True)
    ranked = np.lexsort((pairs, -counts))
    composition = tuple(
        PairCount(int(pairs[i] // c), int(pairs[i] % c), int(counts[i])) for i in ranked
    )
    top = composition[0]
    of_class = rows[target[rows] == top.true]
    in_mode = np.zeros(target.shape[0], bool)
    in_mode[rows] = True
    rest = np.flatnonzero((target == top.true) & ~in_mode)
    class_size = int((target == top.true).sum())
    contrasts = tuple(
        _contrast(name, split.attributes[name], of_class, rest) for name in ATTRIBUTES
    )
    measured = cams[np.isfinite(cams)]
    mode = FailureMode(
        id=mode_id,
        size=int(rows.size),
        true=top.true,
        predicted=top.predicted,
        purity=top.count / rows.size,
        composition=composition,
        class_share=of_class.size / class_size if class_size else math.nan,
        mean_confidence=float(split.confidence[rows].mean()),
        label_errors=None
        if split.is_label_error is None
        else int(split.is_label_error[rows].sum()),
        attributes=contrasts,
        traits=tuple(standing_out(contrasts, of_class.size)),
        cam_outside=float(measured.mean()) if measured.size else None,
        cam_images=int(measured.size),
        description="",
        members=tuple(int(i) for i in split.index[rows]),
        typicality=tuple(float(p) for p in typicality),
    )
    return replace(mode, description=describe(mode, split.classes))


def _cluster(
    split: _Split, rows: np.ndarray, embeddings: np.ndarray, settings: FailureModeSettings
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, tuple[PairFit, ...]]:
    """Rows of each mode (most typical first), their posteriors, the unassigned rows and the
    pair fits, for the errors at ``rows`` (``embeddings`` row-aligned with them)."""
    fit = cluster_errors(embeddings, split.target[rows], split.pred[rows], **settings.clustering())
    members, typicality = [], []
    for k in range(fit.num_modes):
        at = np.flatnonzero(fit.labels == k)
        order = np.lexsort((split.index[rows[at]], fit.distance[at], -fit.probability[at]))
        members.append(rows[at[order]])
        typicality.append(fit.probability[at[order]])
    return members, typicality, rows[fit.labels < 0], fit.pairs


def find_failure_modes(
    index: np.ndarray,
    target: np.ndarray,
    probs: np.ndarray,
    images: torch.Tensor,
    embeddings: np.ndarray,
    embedded_rows: np.ndarray | None = None,
    *,
    classes: Sequence[str],
    settings: FailureModeSettings,
    label_errors: LabelErrors | None = None,
    official_index: bool = True,
    cam_outside: Callable[[np.ndarray], np.ndarray] | np.ndarray | None = None,
    embedding_layer: str = "head",
    cam_method: str | None = None,
    cam_layer: str | None = None,
) -> FailureModes:
    """Group the errors of one test split into modes and describe them.

    Args:
        index: ``(N,)`` test indices (official where ``official_index``). target: ``(N,)``
            true classes. probs: ``(N, C)`` softmax probabilities (the run's predictions).
        images: uint8 ``(N, 3, H, W)``, row-aligned with ``index`` (their attributes, and the
            rest of each class to compare a mode with).
        embeddings: ``(M, D)`` embeddings of the rows ``embedded_rows`` ``(M,)`` (default: all
            ``N`` rows); every error must be among them.
        classes: class names (official order). settings: the knobs.
        label_errors: known label errors of the split's official indices, or None.
        cam_outside: the CAM mass outside the centre: a function from rows ``(K,)`` to their
            shares ``(K,)``, called once with the ``cam_per_mode`` most typical members of
            every mode, or an array ``(N,)`` (NaN where not measured), or None (no CAM).
        embedding_layer, cam_method, cam_layer: recorded as given (what produced the inputs).

    Returns:
        :class:`FailureModes` with both groupings (all errors; confident errors).
    """
    s = settings
    index, target = np.asarray(index, np.int64), np.asarray(target, np.int64)
    probs = np.asarray(probs)
    n = index.shape[0]
    if images.shape[0] != n or target.shape != (n,) or probs.shape[0] != n:
        raise ValueError(
            f"index {index.shape}, target {target.shape}, probs {probs.shape} and images "
            f"{tuple(images.shape)} must have one row per image"
        )
    embedded = np.arange(n) if embedded_rows is None else np.asarray(embedded_rows, np.int64)
    position = np.full(n, -1, np.int64)
    position[embedded] = np.arange(embedded.size)
    pred = probs.argmax(1)
    error_rows = np.flatnonzero(pred != target)
    if (position[error_rows] < 0).any():
        raise ValueError("every error needs an embedding: embedded_rows misses some errors")
    split = _Split(
        index=index,
        target=target,
        pred=pred,
        confidence=probs.max(1),
        attributes=image_attributes(images, s.centre_size),
        is_label_error=(
            label_errors.is_error(index) if label_errors is not None and official_index else None
        ),
        classes=tuple(classes),
    )
    sets = {
        "errors": error_rows,
        "confident": np.flatnonzero(confident_wrong(probs, target, s.threshold)),
    }
    found = {
        name: _cluster(split, rows, embeddings[position[rows]], s) for name, rows in sets.items()
    }
    cams = np.full(n, np.nan)
    if callable(cam_outside):
        wanted = [m[: s.cam_per_mode] for members, *_ in found.values() for m in members]
        rows = np.unique(np.concatenate(wanted)) if wanted else np.zeros(0, np.int64)
        if rows.size:
            cams[rows] = cam_outside(rows)
    elif cam_outside is not None:
        cams = np.asarray(cam_outside, np.float64)
    groupings = {}
    for name, (members, typicality, unassigned, pairs) in found.items():
        modes = tuple(
            _describe_mode(split, k, rows, prob, cams[rows[: s.cam_per_mode]])
            for k, (rows, prob) in enumerate(zip(members, typicality, strict=True))
        )
        groupings[name] = ModeGrouping(
            name=name,
            num_errors=int(sets[name].size),
            modes=modes,
            unassigned=tuple(int(i) for i in np.sort(index[unassigned])),
            pairs=pairs,
        )
    has_cam = cam_outside is not None
    return FailureModes(
        classes=tuple(classes),
        threshold=s.threshold,
        num_images=n,
        official_index=official_index,
        embedding_layer=embedding_layer,
        embedding_dim=int(embeddings.shape[1]) if embeddings.ndim == 2 else 0,
        centre_size=s.centre_size,
        cam_method=cam_method if has_cam else None,
        cam_layer=cam_layer if has_cam else None,
        settings={f.name: getattr(s, f.name) for f in fields(FailureModeSettings)},
        errors=groupings["errors"],
        confident=groupings["confident"],
        definitions=dict(DEFINITIONS),
    )
