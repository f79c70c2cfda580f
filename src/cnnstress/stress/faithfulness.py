"""Are the run's CAM explanations faithful to the model?

Two checks, with the CAM settings the run used (``callbacks.gradcam.method`` and
``.target_layer``, else ``model.target_layer`` and Grad-CAM), both with pytorch-grad-cam:

* ROAD (Rong et al. 2022, pytorch-grad-cam ``metrics.road``) on the top failures (wrong test
  predictions, most confident first), explaining the predicted class: remove (impute by noisy
  linear interpolation) the most relevant pixels first (MoRF) or the least relevant first
  (LeRF) at several percentiles, and measure the change of the predicted class's softmax
  probability. A faithful map makes MoRF hurt and LeRF not: ``combined = (LeRF - MoRF) / 2``
  (``ROADCombined``) is higher for more faithful maps.
* Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency
  Maps"): re-initialise the backbone's blocks cumulatively from the output down to the block
  of the CAM's target layer, one block per step (:func:`cascade_units`: the classifier head,
  then e.g. ``layer4.1``, ``layer4.0``, ``layer3.1``, ``layer3.0`` for a ResNet-18 explained
  at ``layer3``), and after each step compare the CAMs of the same images and classes with
  the trained model's by Spearman rank correlation (``scipy.stats.spearmanr`` per image,
  averaged). An explanation that depends on the learned weights must change: the correlation
  should fall along the cascade; one that stays near 1 fails the sanity check.

Keys written: ``faithfulness/road/morf``, ``faithfulness/road/lerf``,
``faithfulness/road/combined`` (means over the failures), ``faithfulness/num_failures``,
``faithfulness/cascade/<k>/<block>/spearman`` for step ``k`` (``01``, ``02``, ...; ``<block>``
the block re-initialised at that step, on top of the earlier ones),
``faithfulness/cascade/<k>/<block>/undefined`` (fraction of images whose randomised map is
constant, so rank correlation is undefined and left out of the mean),
``faithfulness/randomization_spearman`` (the whole cascade), ``faithfulness/cascade_steps``,
``faithfulness/num_images``, and the strings ``faithfulness/method`` and
``faithfulness/target_layer``; the curve is drawn in ``stress_faithfulness.png``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import (
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirstAverage,
)
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
)
from scipy.stats import spearmanr
from torch import nn

from cnnstress.core.cam import METHODS, compute_heatmaps, resolve_layer, run_cam_settings
from cnnstress.core.data.normalize import Normalize
from cnnstress.core.errors import ConfigError
from cnnstress.core.metrics import find_failures
from cnnstress.core.rules import Integer, ListOf, Number, OneOf, Text
from cnnstress.report.figures.stress import plot_cascade
from cnnstress.stress.context import StressContext, seeded_subset

PLOT_FILE = "stress_faithfulness.png"


@dataclasses.dataclass
class FaithfulnessSettings:
    """Knobs of ``stress.faithfulness`` (conf/stress/faithfulness.yaml)."""

    # null: the run's callbacks.gradcam.method, else gradcam
    method: Annotated[str | None, OneOf(METHODS, optional=True, casefold=True)] = None
    # null: the run's callbacks.gradcam.target_layer, else model.target_layer
    target_layer: Annotated[str | None, Text(optional=True)] = None
    # ROAD on this many top failures
    num_failures: Annotated[int, Integer(0)] = 32
    road_percentiles: Annotated[
        list[int], ListOf(Number(0, 100, low_open=True, high_open=True), 1)
    ] = dataclasses.field(default_factory=lambda: [20, 40, 60, 80])
    # the randomisation cascade runs from the output down to the block of this module
    # (null: the CAM's target layer)
    randomize_to: Annotated[str | None, Text(optional=True)] = None
    # randomisation check on a fixed random subset of the test split of this size
    num_images: Annotated[int, Integer(0)] = 64
    batch_size: Annotated[int, Integer(1)] = 64
    seed: Annotated[int, Integer(0)] = 0


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def cascade_units(net: nn.Module, image_size: int = 32) -> list[str]:
    """The backbone's blocks in forward order: every top-level child with parameters, split into
    its children when it is a container of blocks (a ``Sequential`` or ``ModuleList`` whose
    parameterised children all have children of their own, e.g. a ResNet stage). A stage of
    layers (conv, BN, ReLU) is one block. The order is taken from one forward pass."""
    candidates: list[tuple[str, nn.Module]] = []
    for name, child in net.named_children():
        if not _has_parameters(child):
            continue
        kids = [(f"{name}.{n}", k) for n, k in child.named_children() if _has_parameters(k)]
        blocks = isinstance(child, nn.Sequential | nn.ModuleList) and kids
        if blocks and all(any(True for _ in k.children()) for _, k in kids):
            candidates += kids
        else:
            candidates.append((name, child))
    order: list[str] = []
    hooks = [
        module.register_forward_pre_hook(lambda _m, _a, n=name: order.append(n))
        for name, module in candidates
    ]
    param = next(net.parameters())
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return list(dict.fromkeys(order))  # first call of each, in forward order


def cascade(net: nn.Module, randomize_to: str, key: str = "randomize_to") -> list[str]:
    """The blocks re-initialised step by step: from the last block in forward order down to
    (and including) every block inside, or containing, the module ``randomize_to``."""
    resolve_layer(net, randomize_to, key)
    units = cascade_units(net)

    def related(unit: str) -> bool:
        return (
            unit == randomize_to
            or unit.startswith(f"{randomize_to}.")
            or (randomize_to.startswith(f"{unit}."))
        )

    inside = [i for i, unit in enumerate(units) if related(unit)]
    if not inside:
        raise ConfigError(f"{key}={randomize_to!r} is in no block of the model ({units})")
    return units[min(inside) :][::-1]


def heatmaps(
    model: nn.Module,
    images: torch.Tensor,
    classes: Sequence[int],
    method: str,
    layer: str,
    batch_size: int,
) -> np.ndarray:
    """``(N, H, W)`` float32 maps in [0, 1] from :func:`cnnstress.core.cam.compute_heatmaps`."""
    maps = compute_heatmaps(model, images, classes, method, layer, batch_size=batch_size)
    return maps.numpy()


def road_scores(
    model: nn.Module,
    images: torch.Tensor,
    cams: np.ndarray,
    classes: Sequence[int],
    percentiles: Sequence[int],
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-image ROAD ``morf``, ``lerf`` and ``combined = (lerf - morf) / 2`` (``(N,)`` each)
    for the softmax probability of ``classes``. ``images``: normalised ``(N, 3, H, W)``."""
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    # The imputer adds noise with torch's global generator: fork it for reproducibility.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        morf = ROADMostRelevantFirstAverage(list(percentiles))(images, cams, targets, model)
        lerf = ROADLeastRelevantFirstAverage(list(percentiles))(images, cams, targets, model)
    return {"morf": morf, "lerf": lerf, "combined": (lerf - morf) / 2}


def randomized_copy(net: nn.Module, paths: Sequence[str], seed: int = 0) -> nn.Module:
    """A copy of ``net`` whose modules at ``paths`` (and all their submodules) are
    re-initialised with their own ``reset_parameters`` (BatchNorm: running statistics too)."""
    copy_ = copy.deepcopy(net)
    device = next(net.parameters()).device
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # initialisers draw on the parameters' device
        torch.manual_seed(seed)
        for path in paths:
            for module in copy_.get_submodule(path).modules():
                if hasattr(module, "reset_running_stats"):
                    module.reset_running_stats()
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return copy_.eval()


def rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation per image between maps ``a`` and ``b`` ``(N, H, W)``; NaN where
    either map is constant (undefined)."""
    out = np.full(a.shape[0], np.nan)
    for i in range(a.shape[0]):
        x, y = a[i].ravel(), b[i].ravel()
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            out[i] = spearmanr(x, y).statistic
    return out


def _run_cam_settings(ctx: StressContext, s: FaithfulnessSettings) -> tuple[str, str]:
    key = "stress.faithfulness"
    method, layer = run_cam_settings(ctx.cfg, s.method, s.target_layer, key=f"{key}.method")
    if not layer:  # the cascade stops at the target layer's block, also for saliency
        raise ConfigError(f"no CAM target layer: set {key}.target_layer")
    return method, layer


def evaluate(ctx: StressContext, settings: FaithfulnessSettings | None = None) -> dict[str, Any]:
    """ROAD on the top failures and the randomisation sanity check."""
    key = "stress.faithfulness"
    s = settings or FaithfulnessSettings()
    method, layer_path = _run_cam_settings(ctx, s)
    net = ctx.net.eval()
    resolve_layer(net, layer_path, f"{key}.target_layer")
    normalize = Normalize.of(ctx.cfg.dataset)

    def normalised(indices: torch.Tensor) -> torch.Tensor:
        return normalize(ctx.test.images[indices]).to(ctx.device)

    logits, labels = ctx.clean_logits(), ctx.test.labels
    predicted = logits.argmax(1)
    out: dict[str, Any] = {"faithfulness/method": method, "faithfulness/target_layer": layer_path}

    # ROAD on the most confident failures (ties by index), explaining the predicted class.
    probs = logits.softmax(1).numpy()
    rows = find_failures(np.arange(len(labels)), labels.numpy(), probs)[: s.num_failures]
    failures = torch.from_numpy(rows)
    out["faithfulness/num_failures"] = len(failures)
    if len(failures):
        images = normalised(failures)
        classes = predicted[failures].tolist()
        cams = heatmaps(net, images, classes, method, layer_path, s.batch_size)
        scores = road_scores(net, images, cams, classes, s.road_percentiles, s.seed)
        for name, values in scores.items():
            out[f"faithfulness/road/{name}"] = float(np.mean(values))

    # Cascading model-parameter randomisation, same images and classes.
    subset = seeded_subset(len(labels), s.num_images, s.seed)
    images = normalised(subset)
    classes = predicted[subset].tolist()
    trained = heatmaps(net, images, classes, method, layer_path, s.batch_size)
    steps = cascade(net, s.randomize_to or layer_path, f"{key}.randomize_to")
    out["faithfulness/num_images"] = len(subset)
    out["faithfulness/cascade_steps"] = len(steps)
    curve = []
    for k, block in enumerate(steps, start=1):
        randomized = randomized_copy(net, steps[:k], s.seed)
        cams = heatmaps(randomized, images, classes, method, layer_path, s.batch_size)
        rho = rank_correlations(trained, cams)
        defined = np.isfinite(rho)
        name = f"faithfulness/cascade/{k:02d}/{block}"
        out[f"{name}/spearman"] = float(rho[defined].mean()) if defined.any() else float("nan")
        out[f"{name}/undefined"] = float(1 - defined.mean()) if len(rho) else 0.0
        curve.append((block, out[f"{name}/spearman"]))
    out["faithfulness/randomization_spearman"] = curve[-1][1]
    plot_cascade(curve, ctx.run_dir / PLOT_FILE, f"{method} at {layer_path}")
    return out
