"""Background reliance: does the model classify the object or what surrounds it?

After Xiao et al., "Noise or Signal: The Role of Image Backgrounds in Object Recognition"
(ICLR 2021), who swap real foreground masks on ImageNet-9. CIFAR has no masks, but its objects
sit near the image centre, so a centred square of side ``centre_size`` pixels stands in for the
object and the rest of the image, the *surround*, for the background (default 16 of 32: rows
and columns 8-23, a quarter of the area). It is a proxy: large objects spill into the surround,
small or off-centre ones leave background in the centre.

Images: the test split, or a fixed random subset of ``max_images`` (``seed``). Partners and the
CAM subset depend only on the test labels and ``seed``, so every run of a comparison sees the
same images and pairs. Each image ``A`` (class ``y_A``) is fed to the model in five versions:

* ``only_centre``: the surround replaced by ``fill``; ``only_surround``: the centre replaced.
  ``fill``: ``mean`` = the image's own mean colour (per channel) over the region that stays
  visible, so the filled image carries nothing of the removed region; ``dataset_mean`` = the
  dataset's normalisation mean (a zero input after normalisation); or a grey level in [0, 1].
* ``conflict`` (cue conflict): the centre of ``A`` on the surround of a partner ``B`` of another
  class (the class drawn uniformly from the other classes present, then the image uniformly
  within it).
* ``mixed_same``: the centre of ``A`` on the surround of another image of ``A``'s class
  (``A`` itself only when its class has no other image in the set).
* ``mixed_rand``: the centre of ``A`` on the surround of an image of a random class (uniform
  over the classes present, ``A``'s included, as Xiao et al.'s Mixed-Rand), then a random image
  of it.

Measurements (an accuracy compares the prediction with ``y_A``, the class of the centre):

* ``clean_acc``: the unchanged images; ``chance`` (headline): ``1 / classes``.
* ``acc`` at ``image=<only_centre|only_surround|mixed_same|mixed_rand>`` (headline). An
  ``only_surround`` accuracy far above chance is a model that classifies from the background.
* ``share`` at ``follows=<centre|surround|neither>``: fractions of cue-conflict predictions
  equal to ``y_A``, equal to ``y_B``, or neither (they sum to 1); ``surround_share``
  (headline) ``= follows surround / (follows centre + follows surround)`` (undefined when no
  prediction follows either): 0 = always the object, 1 = always the background.
* ``bg_gap`` (headline) ``= acc(mixed_same) - acc(mixed_rand)`` (Xiao et al.'s BG-gap).
* CAM (``compute_heatmaps`` of the clean image's predicted class, the run's method and target
  layer unless set here) on a fixed subset of ``cam_images`` of the images: the share of the
  map's mass outside the centre, ``sum(map * surround) / sum(map)`` per image (a map scaled to
  [0, 1]), averaged: ``cam_outside`` at ``images=correct`` (correct predictions, headline),
  ``images=confident_failures`` (wrong with softmax confidence >= ``threshold``, headline),
  ``images=all``, and ``images=uniform`` (what a flat map gives: the surround's share of the
  area, 0.75 by default). Constant maps (no mass) are left out and counted in
  ``cam_undefined``.
* Per class ``<name>`` (official names), at ``class=<name>``: ``only_surround_acc`` (accuracy
  on the images of that class), ``surround_share`` (cue conflicts whose *surround* comes from
  that class: how often that class's background wins), ``cam_outside`` (mean outside-share
  over the CAM images of that class, any prediction).

Info: ``num_images``, ``num_unpaired`` (images used as their own ``mixed_same`` partner),
``centre_size``, ``fill``, ``cam_method``, ``cam_target_layer``, ``cam_threshold``,
``cam_num_images``, ``cam_num_correct``, ``cam_num_confident_failures``. Arrays (for the
report's per-run figures): ``class_names`` and the examples (:func:`example_arrays`).

Cost: one forward pass of the images per version, plus the clean logits (shared with the other
stresses), plus the CAMs of the subset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import numpy as np
import torch

from cnnstress.core.cam import METHODS, compute_heatmaps, resolve_layer, run_cam_settings
from cnnstress.core.data.classes import class_names
from cnnstress.core.data.normalize import Normalize
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.plots.canvas import to_hwc
from cnnstress.core.regions import centre_mask, outside_share
from cnnstress.core.rules import Either, Integer, Number, OneOf, Probability, Text, check
from cnnstress.core.run_dir import run_threshold
from cnnstress.stress.context import StressContext, seeded_subset, to_unit
from cnnstress.stress.results import Measurement, Scalar, StressResult, measure

FILLS = ("mean", "dataset_mean")
FILL_RULE = Either((OneOf(FILLS), Number(0.0, 1.0)))
# The versions of each image fed to the model, in the order of the examples figure.
VARIANTS = ("only_centre", "only_surround", "conflict", "mixed_same", "mixed_rand")
PARTNERS = ("conflict", "mixed_same", "mixed_rand")


@dataclasses.dataclass
class BackgroundSettings:
    """Knobs of ``stress.background`` (conf/stress/background.yaml)."""

    # side in pixels of the centred square standing in for the object
    centre_size: Annotated[int, Integer(1)] = 16
    # what replaces the removed region: mean, dataset_mean, or a grey level in [0, 1]
    fill: Annotated[Any, FILL_RULE] = "mean"
    # a fixed random subset of the test split; null: all of it
    max_images: Annotated[int | None, Integer(1, optional=True)] = None
    # images whose CAM is measured (a fixed subset of the evaluated images)
    cam_images: Annotated[int, Integer(0)] = 1000
    # confident failures: wrong with softmax confidence >= threshold; null: the run's own
    # confidence_threshold
    threshold: Annotated[float | None, Probability(optional=True)] = None
    # null: the run's callbacks.gradcam.method, else gradcam
    method: Annotated[str | None, OneOf(METHODS, optional=True, casefold=True)] = None
    # null: the run's callbacks.gradcam.target_layer, else model.target_layer
    target_layer: Annotated[str | None, Text(optional=True)] = None
    # rows of the examples figure (the report draws it from the result's arrays)
    examples: Annotated[int, Integer(1)] = 8
    batch_size: Annotated[int, Integer(1)] = 500
    # subset, partners and CAM images (fixed across runs)
    seed: Annotated[int, Integer(0)] = 0


def parse_fill(value: Any, key: str = "fill") -> str | float:
    """``mean``, ``dataset_mean``, or a grey level in [0, 1] (:data:`FILL_RULE`); else one
    :class:`ConfigError` line."""
    return check(FILL_RULE, value, key)


def keep_region(
    images: torch.Tensor, keep: torch.Tensor, fill: str | float, dataset_mean: Sequence[float]
) -> torch.Tensor:
    """``images`` with every pixel outside ``keep`` replaced by the fill colour.

    Args:
        images: float ``(N, 3, H, W)`` in [0, 1].
        keep: bool ``(H, W)``, the region left visible.
        fill: ``"mean"`` (each image's mean colour over ``keep``), ``"dataset_mean"``
            (``dataset_mean``), or a grey level.

    Returns:
        float ``(N, 3, H, W)``.
    """
    if fill == "mean":
        weights = keep.to(images.dtype)
        colour = (images * weights).sum((2, 3), keepdim=True) / weights.sum()
    elif fill == "dataset_mean":
        colour = torch.as_tensor(dataset_mean, dtype=images.dtype, device=images.device)
        colour = colour.view(1, -1, 1, 1)
    else:
        colour = torch.full((1, 1, 1, 1), float(fill), dtype=images.dtype, device=images.device)
    return torch.where(keep, images, colour)


def paste_centre(
    centres: torch.Tensor, surrounds: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The centre of each of ``centres`` on the surround of the matching one of ``surrounds``.

    ``centres``, ``surrounds``: ``(N, 3, H, W)`` of one dtype; ``mask``: bool ``(H, W)``, the
    centre. Returns ``(N, 3, H, W)``.
    """
    return torch.where(mask, centres, surrounds)


def draw_partners(labels: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Partner positions ``(N,)`` int64 for every image, drawn from a generator seeded by ``seed``.

    ``conflict``: an image of another class (class uniform over the other classes present,
    image uniform within it); ``mixed_same``: another image of the same class (the image itself
    when its class has no other); ``mixed_rand``: class uniform over the classes present, image
    uniform within it. Depends only on ``labels`` ``(N,)`` and ``seed``.

    Raises:
        DataError: fewer than two classes among ``labels`` (no cue conflict possible).
    """
    labels = labels.cpu()
    n = labels.numel()
    generator = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise DataError("the background stress needs images of at least two classes")
    order = torch.argsort(labels, stable=True)  # positions grouped by class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.searchsorted(classes, labels)  # index of each image's class among `classes`
    within = torch.empty(n, dtype=torch.long)
    within[order] = torch.arange(n) - starts[rank[order]]

    def uniform(high: torch.Tensor) -> torch.Tensor:  # an integer in [0, high) per entry
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.minimum((u * high).long(), high - 1)

    def image_of(class_rank: torch.Tensor) -> torch.Tensor:
        return order[starts[class_rank] + uniform(counts[class_rank])]

    own = counts[rank]
    step = 1 + uniform((own - 1).clamp_min(1))  # 1 .. own-1: never the image itself
    same = order[starts[rank] + (within + step) % own]
    other = (rank + 1 + uniform(torch.full((n,), len(classes) - 1))) % len(classes)
    conflict = image_of(other)
    random_class = uniform(torch.full((n,), len(classes)))
    return {"conflict": conflict, "mixed_same": same, "mixed_rand": image_of(random_class)}


def make_variants(
    images: torch.Tensor,
    positions: torch.Tensor,
    partners: Mapping[str, torch.Tensor],
    mask: torch.Tensor,
    fill: str | float,
    dataset_mean: Sequence[float],
) -> dict[str, torch.Tensor]:
    """The versions of ``images[positions]`` fed to the model, float ``(B, 3, H, W)`` in [0, 1].

    Args:
        images: all evaluated images, uint8 ``(N, 3, H, W)`` (partners index into them).
        positions: ``(B,)`` the images ``A`` of this batch.
        partners: from :func:`draw_partners`, ``(N,)`` each.
        mask: bool ``(H, W)``, the centre.

    Returns:
        ``{name: images}`` for every name of :data:`VARIANTS`.
    """
    a = to_unit(images[positions])
    out = {
        "only_centre": keep_region(a, mask, fill, dataset_mean),
        "only_surround": keep_region(a, ~mask, fill, dataset_mean),
    }
    for name in PARTNERS:
        b = to_unit(images[partners[name][positions]])
        out[name] = paste_centre(a, b, mask)
    return out


def _mean(values: torch.Tensor) -> float:
    values = values[torch.isfinite(values)]
    return float(values.mean()) if values.numel() else float("nan")


def _share(surround: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    total = surround + centre
    return torch.where(total > 0, surround / total.clamp_min(1), torch.nan)


def _class_mean(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of finite ``values`` per class of ``labels``; NaN for a class with none."""
    finite = torch.isfinite(values)
    sums = torch.bincount(labels[finite], values[finite].double(), minlength=num_classes)
    counts = torch.bincount(labels[finite], minlength=num_classes).double()
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)


def _predict(
    ctx: StressContext,
    s: BackgroundSettings,
    images: torch.Tensor,
    partners: Mapping[str, torch.Tensor],
    mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Predicted classes ``(N,)`` on the CPU of every variant, batch by batch on the device."""
    model = ctx.model.eval()
    dataset_mean = list(ctx.cfg.dataset.mean)
    n = images.shape[0]
    preds = {name: torch.empty(n, dtype=torch.long, device=ctx.device) for name in VARIANTS}
    with torch.no_grad():
        for start in range(0, n, s.batch_size):
            positions = torch.arange(start, min(start + s.batch_size, n), device=ctx.device)
            batches = make_variants(images, positions, partners, mask, s.fill, dataset_mean)
            for name, batch in batches.items():
                preds[name][positions] = model(batch).argmax(1)
    return {name: p.cpu() for name, p in preds.items()}


def _cam_settings(ctx: StressContext, s: BackgroundSettings) -> tuple[str, str | None]:
    """The CAM method and target layer (the run's unless set), checked against the model."""
    key = "stress.background"
    method, layer = run_cam_settings(ctx.cfg, s.method, s.target_layer, key=f"{key}.method")
    if layer is None and method != "saliency":
        raise ConfigError(f"no CAM target layer: set {key}.target_layer")
    if layer is not None:
        resolve_layer(ctx.net, layer, f"{key}.target_layer")
    return method, layer


def _cam_outside(
    ctx: StressContext,
    s: BackgroundSettings,
    images: torch.Tensor,
    predicted: torch.Tensor,
    mask: torch.Tensor,
    method: str,
    layer: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``(M,)`` of the CAM subset of ``images`` and their outside-shares ``(M,)``,
    explaining the clean ``predicted`` class."""
    positions = seeded_subset(images.shape[0], s.cam_images, s.seed)
    if not len(positions):
        return positions, torch.zeros(0, dtype=torch.float64)
    normalised = Normalize.of(ctx.cfg.dataset)(images[positions.to(ctx.device)])
    maps = compute_heatmaps(
        ctx.net.eval(), normalised, predicted[positions], method, layer, batch_size=s.batch_size
    )
    return positions, outside_share(maps, mask.cpu())


def evaluate(ctx: StressContext, settings: BackgroundSettings | None = None) -> StressResult:
    """Run every background test on a run (measurements: see the module docstring)."""
    s = settings or BackgroundSettings()
    method, layer = _cam_settings(ctx, s)  # setting errors before any work
    height, width = ctx.test.images.shape[2:]
    mask = centre_mask(height, width, s.centre_size, ctx.device)
    subset = seeded_subset(len(ctx.test), s.max_images, s.seed)
    labels = ctx.test.labels[subset]
    images = ctx.test.images[subset].to(ctx.device)
    partners = draw_partners(labels, s.seed)
    on_device = {name: p.to(ctx.device) for name, p in partners.items()}
    preds = _predict(ctx, s, images, on_device, mask)
    logits = ctx.clean_logits()[subset]
    confidence, predicted = logits.softmax(1).max(1)
    c = ctx.num_classes
    y_b = labels[partners["conflict"]]
    follows_centre = preds["conflict"] == labels
    follows_surround = preds["conflict"] == y_b

    def acc(name: str) -> float:
        return float((preds[name] == labels).double().mean())

    n = len(labels)
    fc, fs = follows_centre.double().sum(), follows_surround.double().sum()
    rows: list[Measurement] = [
        measure("chance", 1 / c, headline=True),
        measure("clean_acc", (predicted == labels).double().mean()),
        *(measure("acc", acc(name), headline=True, image=name)
          for name in ("only_centre", "only_surround", "mixed_same", "mixed_rand")),
        measure("share", fc / n, follows="centre"),
        measure("share", fs / n, follows="surround"),
        measure("share", 1 - (fc + fs) / n, follows="neither"),
        measure("surround_share", _share(fs, fc), headline=True),
        measure("bg_gap", acc("mixed_same") - acc("mixed_rand"), headline=True),
    ]  # fmt: skip
    info: dict[str, Scalar] = {
        "num_images": n,
        "num_unpaired": int((partners["mixed_same"] == torch.arange(n)).sum()),
        "centre_size": s.centre_size,
        "fill": str(s.fill),
    }

    cam_positions, shares = _cam_outside(ctx, s, images, predicted, mask, method, layer)
    cam_correct = predicted[cam_positions] == labels[cam_positions]
    threshold = s.threshold if s.threshold is not None else run_threshold(ctx.cfg)
    cam_failure = ~cam_correct & (confidence[cam_positions] >= threshold)
    info.update({
        "cam_method": method,
        "cam_target_layer": layer,
        "cam_threshold": threshold,
        "cam_num_images": len(cam_positions),
        "cam_num_correct": int(cam_correct.sum()),
        "cam_num_confident_failures": int(cam_failure.sum()),
    })  # fmt: skip
    rows += [
        measure("cam_outside", _mean(shares), images="all"),
        measure("cam_outside", _mean(shares[cam_correct]), headline=True, images="correct"),
        measure("cam_outside", _mean(shares[cam_failure]), headline=True,
                images="confident_failures"),
        measure("cam_outside", 1 - mask.double().mean(), images="uniform"),
        measure("cam_undefined", (~torch.isfinite(shares)).sum()),
    ]  # fmt: skip

    per_class = {
        "only_surround_acc": _class_mean((preds["only_surround"] == labels).double(), labels, c),
        "surround_share": _share(
            torch.bincount(y_b, follows_surround.double(), minlength=c),
            torch.bincount(y_b, follows_centre.double(), minlength=c),
        ),
        "cam_outside": _class_mean(shares, labels[cam_positions], c),
    }
    names = class_names(ctx.dataset_name)
    for i, name in enumerate(names):
        for metric, values in per_class.items():
            rows.append(measure(metric, values[i], **{"class": name}))

    arrays = {
        "class_names": list(names),
        **example_arrays(ctx, s, images, labels, partners, preds, predicted, mask),
    }
    return StressResult(rows, info, arrays)


def example_positions(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Up to ``count`` positions: the first image of each class in class order, then the
    second of each, and so on (a varied, fixed choice)."""
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique(labels, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(len(labels)) - torch.repeat_interleave(starts, counts)
    # sort by (rank within class, class): round-robin over the classes
    key = within * (int(labels.max()) + 1 if len(labels) else 1) + labels[order]
    return order[torch.argsort(key)][:count]


def example_arrays(
    ctx: StressContext,
    s: BackgroundSettings,
    images: torch.Tensor,
    labels: torch.Tensor,
    partners: Mapping[str, torch.Tensor],
    preds: Mapping[str, torch.Tensor],
    predicted: torch.Tensor,
    mask: torch.Tensor,
) -> dict[str, Any]:
    """What the examples figure shows, for ``s.examples`` images (:func:`example_positions`):

    * ``examples``: uint8 ``(E, 1 + len(VARIANTS), H, W, 3)``: the original, then each of
      :data:`VARIANTS` as fed to the model;
    * ``example_labels``, ``example_predicted``: int64 ``(E,)``, the class and the clean
      prediction of each original;
    * ``example_partner_labels``: ``{name: (E,)}`` the partner's class, for :data:`PARTNERS`;
    * ``example_predictions``: ``{name: (E,)}`` the prediction on each of :data:`VARIANTS`.
    """
    positions = example_positions(labels, s.examples)
    on_device = {name: p.to(ctx.device) for name, p in partners.items()}
    variants = make_variants(
        images, positions.to(ctx.device), on_device, mask, s.fill, list(ctx.cfg.dataset.mean)
    )
    columns = [images[positions.to(ctx.device)]] + [
        (variants[name] * 255).round().to(torch.uint8) for name in VARIANTS
    ]
    return {
        "examples": np.stack([to_hwc(col) for col in columns], axis=1),
        "example_labels": labels[positions].numpy(),
        "example_predicted": predicted[positions].numpy(),
        "example_partner_labels": {
            name: labels[partners[name][positions]].numpy() for name in PARTNERS
        },
        "example_predictions": {name: preds[name][positions].numpy() for name in VARIANTS},
    }
