"""Are the run's CAM explanations faithful to the model?

Two checks, with the CAM settings the run used (``callbacks.gradcam.method`` and
``.target_layer``, else ``model.target_layer`` and Grad-CAM), both with pytorch-grad-cam:

* ROAD (Rong et al. 2022, pytorch-grad-cam ``metrics.road``) on the top failures (wrong test
  predictions, most confident first), explaining the predicted class: remove (impute by noisy
  linear interpolation) the most relevant pixels first (MoRF) or the least relevant first
  (LeRF) at several percentiles, and measure the change of the predicted class's softmax
  probability. A faithful map makes MoRF hurt and LeRF not: ``combined = (LeRF - MoRF) / 2``
  (``ROADCombined``) is higher for more faithful maps.
* Model-parameter randomisation (Adebayo et al. 2018): re-initialise the top layers in a
  cascade (first the classifier head, then also the target layer's block) and compare the CAMs
  of the same images and classes with the trained model's by Spearman rank correlation
  (``scipy.stats.spearmanr`` per image, averaged). An explanation that depends on the learned
  weights must change: a correlation near 1 fails the sanity check.

Keys written: ``faithfulness/road/morf``, ``faithfulness/road/lerf``,
``faithfulness/road/combined`` (means over the failures), ``faithfulness/num_failures``,
``faithfulness/randomize/<layers>/spearman`` (``<layers>`` the re-initialised modules joined
by ``+``, e.g. ``fc`` then ``fc+block3``), ``faithfulness/randomize/<layers>/undefined``
(fraction of images whose randomised map is constant, so rank correlation is undefined and
left out of the mean), ``faithfulness/randomization_spearman`` (the full cascade),
``faithfulness/num_images``, and the strings ``faithfulness/method`` and
``faithfulness/target_layer``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from pytorch_grad_cam.metrics.road import (
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirstAverage,
)
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
)
from scipy.stats import spearmanr
from torch import nn

from cnnstress.cam import check_method, compute_heatmaps, resolve_layer
from cnnstress.errors import ConfigError
from cnnstress.stress.context import StressContext, check_int, parse_settings, seeded_subset

HEAD = "head"  # in `randomize`: the last nn.Linear of the backbone
TARGET = "target_layer"  # in `randomize`: the CAM's target layer


@dataclasses.dataclass
class FaithfulnessSettings:
    """Knobs of ``stress.faithfulness`` (conf/stress/faithfulness.yaml)."""

    # null: the run's callbacks.gradcam.method, else gradcam
    method: str | None = None
    # null: the run's callbacks.gradcam.target_layer, else model.target_layer
    target_layer: str | None = None
    # ROAD on this many top failures
    num_failures: int = 32
    road_percentiles: list[int] = dataclasses.field(default_factory=lambda: [20, 40, 60, 80])
    # cascade re-initialised from the top: "head" (last Linear), "target_layer", or module paths
    randomize: list[str] = dataclasses.field(default_factory=lambda: [HEAD, TARGET])
    # randomisation check on a fixed random subset of the test split of this size
    num_images: int = 64
    batch_size: int = 64
    seed: int = 0

    def validate(self, key: str) -> None:
        """Raise :class:`ConfigError` for an invalid knob."""
        if self.method is not None:
            check_method(self.method, f"{key}.method")
        self.num_failures = check_int(self.num_failures, f"{key}.num_failures", minimum=0)
        self.num_images = check_int(self.num_images, f"{key}.num_images", minimum=0)
        self.batch_size = check_int(self.batch_size, f"{key}.batch_size")
        self.seed = check_int(self.seed, f"{key}.seed", minimum=0)
        if not self.road_percentiles or not all(0 < p < 100 for p in self.road_percentiles):
            raise ConfigError(f"{key}.road_percentiles must be a non-empty list in (0, 100)")
        if not self.randomize:
            raise ConfigError(f"{key}.randomize must list at least one layer")


def head_name(net: nn.Module) -> str:
    """Dotted path of the last ``nn.Linear`` (the classifier head)."""
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError("the model has no nn.Linear head to randomise; list modules in randomize")
    return names[-1]


def heatmaps(
    model: nn.Module,
    images: torch.Tensor,
    classes: Sequence[int],
    method: str,
    layer: str,
    batch_size: int,
) -> np.ndarray:
    """``(N, H, W)`` float32 maps in [0, 1] from :func:`cnnstress.cam.compute_heatmaps`."""
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
    method = s.method or OmegaConf.select(ctx.cfg, "callbacks.gradcam.method", default=None)
    method = check_method(method or "gradcam", "stress.faithfulness.method")
    layer = (
        s.target_layer
        or OmegaConf.select(ctx.cfg, "callbacks.gradcam.target_layer", default=None)
        or OmegaConf.select(ctx.cfg, "model.target_layer", default=None)
    )
    if not layer:
        raise ConfigError("no CAM target layer: set stress.faithfulness.target_layer")
    return method, str(layer)


def evaluate(ctx: StressContext, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """ROAD on the top failures and the randomisation sanity check."""
    key = "stress.faithfulness"
    s = parse_settings(FaithfulnessSettings, settings, key)
    method, layer_path = _run_cam_settings(ctx, s)
    net = ctx.net.eval()
    resolve_layer(net, layer_path, f"{key}.target_layer")
    mean = torch.tensor(list(ctx.cfg.dataset.mean)).view(1, -1, 1, 1)
    std = torch.tensor(list(ctx.cfg.dataset.std)).view(1, -1, 1, 1)

    def normalised(indices: torch.Tensor) -> torch.Tensor:
        images = ctx.test.images[indices].float() / 255
        return ((images - mean) / std).to(ctx.device)

    logits, labels = ctx.clean_logits(), ctx.test.labels
    predicted = logits.argmax(1)
    out: dict[str, Any] = {"faithfulness/method": method, "faithfulness/target_layer": layer_path}

    # ROAD on the most confident failures, explaining the (wrong) predicted class.
    confidence = logits.softmax(1).amax(1)
    wrong = torch.nonzero(predicted != labels).flatten()
    failures = wrong[confidence[wrong].argsort(descending=True)][: s.num_failures]
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
    cascade: list[str] = []
    out["faithfulness/num_images"] = len(subset)
    for entry in s.randomize:
        path = head_name(net) if entry == HEAD else layer_path if entry == TARGET else entry
        resolve_layer(net, path, f"{key}.randomize")
        cascade.append(path)
        randomized = randomized_copy(net, cascade, s.seed)
        cams = heatmaps(randomized, images, classes, method, layer_path, s.batch_size)
        rho = rank_correlations(trained, cams)
        name = "+".join(cascade)
        defined = np.isfinite(rho)
        out[f"faithfulness/randomize/{name}/spearman"] = (
            float(rho[defined].mean()) if defined.any() else float("nan")
        )
        out[f"faithfulness/randomize/{name}/undefined"] = (
            float(1 - defined.mean()) if len(rho) else 0.0
        )
        out["faithfulness/randomization_spearman"] = out[f"faithfulness/randomize/{name}/spearman"]
    return out
