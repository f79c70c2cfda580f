"""The reference's top test failures, explained by the reference and by each improvement.

Models are rebuilt from their checkpoints (:func:`cnnstress.core.checkpoints.load_backbone`,
``weights_only=True``); heatmaps come from :func:`cnnstress.core.cam.compute_heatmaps`, the same
code and, unless overridden, the same method and target layer as the run's Grad-CAM callback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cnnstress.analysis.compare import Comparison, GroupResult
from cnnstress.analysis.runs import Run
from cnnstress.core.cam import SALIENCY, compute_heatmaps, resolve_layer, run_cam_settings
from cnnstress.core.checkpoints import load_backbone
from cnnstress.core.data import LabeledImages, class_names, load_split
from cnnstress.core.data.normalize import Normalize
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.metrics import find_failures


@dataclass(frozen=True)
class CamColumn:
    """One model's view of the selected images.

    Attributes:
        title: group label and seed. method / target_layer: the CAM settings used.
        pred: ``(N,)`` predicted class. confidence: ``(N,)`` its probability.
        heatmaps: ``(N, H, W)`` float32 in [0, 1], for the predicted class.
    """

    title: str
    method: str
    target_layer: str | None  # None for saliency

    @property
    def settings(self) -> str:
        """``method@layer`` (or just the method for saliency)."""
        return self.method if self.target_layer is None else f"{self.method}@{self.target_layer}"

    pred: np.ndarray
    confidence: np.ndarray
    heatmaps: np.ndarray


@dataclass(frozen=True)
class SideBySide:
    """A reference group's top failures and every compared model's CAMs on them.

    Attributes:
        images: ``(N, 3, H, W)`` uint8 test images. index: ``(N,)`` their test-set indices.
        target: ``(N,)`` their labels. columns: reference first, then the improvements.
        likely_true: ``(N,)`` for a known label error the workers' class (-1 where they did
            not agree), -2 for an image that is no known label error; ``None`` when unknown.
    """

    setting: tuple[str, str]
    classes: tuple[str, ...]
    index: np.ndarray
    target: np.ndarray
    images: np.ndarray
    columns: list[CamColumn]
    likely_true: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def _test_split(run: Run) -> LabeledImages:
    """The run's test split (uint8 images, labels, official ids), read from its recorded root."""
    return load_split(str(run.config.dataset.root), run.dataset, "test")


def _column(
    name: str,
    run: Run,
    positions: np.ndarray,
    images: torch.Tensor,
    device: str,
    method: str | None,
    layer: str | None,
) -> CamColumn:
    net, cfg = load_backbone(run.path, device=device)
    key = "gradcam.target_layer" if layer else "the run's target layer"
    try:  # the run's recorded CAM settings are untrusted data, not the analyst's config
        method, layer = run_cam_settings(cfg, method, layer, key="gradcam.method")
        module = None if method == SALIENCY else resolve_layer(net, layer, key)
    except ConfigError as err:
        raise DataError(str(err)) from None
    pred, conf = run.pred[positions], run.confidence[positions]
    maps = compute_heatmaps(
        net, Normalize.of(cfg.dataset)(images).to(device), torch.from_numpy(pred), method, module
    )
    title = f"{name} (seed {run.seed})"
    shown_layer = None if module is None else layer
    return CamColumn(title, method, shown_layer, pred, conf, maps.numpy())


def _shared_seed(reference: GroupResult, others: list[GroupResult]) -> int:
    """The smallest reference seed that most other groups also have."""
    return max(reference.seeds, key=lambda s: (sum(s in g.seeds for g in others), -s))


def side_by_side(
    comparisons: list[Comparison],
    top_n: int,
    device: str = "cpu",
    method: str | None = None,
    target_layer: str | None = None,
) -> SideBySide | None:
    """CAMs of the reference's ``top_n`` most confident test failures, one column per model.

    ``comparisons`` all share one reference (one setting). The reference run and the compared
    runs use the same seed where they have it. Returns ``None`` when the reference has no
    failure.

    Raises:
        DataError: a checkpoint or the test images cannot be read.
        ConfigError: a bad CAM method or target layer.
    """
    reference = comparisons[0].reference
    seed = _shared_seed(reference, [c.other for c in comparisons])
    ref_run = reference.run(seed)
    positions = find_failures(ref_run.index, ref_run.target, ref_run.probs)[:top_n]
    if positions.size == 0:
        return None
    split = _test_split(ref_run)
    index = ref_run.index[positions]
    missing = index[~split.contains(index).numpy()]
    if missing.size:
        raise DataError(f"{ref_run.path}: predictions index {missing[0]} not in the test split")
    images = split.images[split.rows(index)]
    columns = [
        _column(reference.key.name, ref_run, positions, images, device, method, target_layer)
    ]
    notes = []
    for comparison in comparisons:
        group = comparison.other
        run = group.run(seed) if seed in group.seeds else group.runs[0]
        try:
            if not np.array_equal(run.index, ref_run.index):
                raise DataError(f"tested on other images than {ref_run.path}")
            columns.append(
                _column(group.key.name, run, positions, images, device, method, target_layer)
            )
        except DataError as err:  # one unreadable run loses its column, not the figure
            notes.append(f"{group.key.label} (seed {run.seed}): no CAM column: {run.path}: {err}")
    errors = ref_run.label_errors
    likely = None
    if errors is not None:
        likely = np.where(errors.is_error(index), errors.likely_true(index), -2)
    return SideBySide(
        setting=reference.key.setting,
        classes=class_names(reference.key.dataset),
        index=index,
        target=ref_run.target[positions],
        images=images.numpy(),
        columns=columns,
        likely_true=likely,
        notes=notes,
    )


def default_filename(number: int | None = None) -> str:
    """``gradcam_side_by_side.png``, or ``gradcam_side_by_side_<n>.png`` for the n-th of
    several reference groups."""
    return "gradcam_side_by_side.png" if number is None else f"gradcam_side_by_side_{number}.png"
