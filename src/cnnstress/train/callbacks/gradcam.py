"""Grad-CAM grids of the current high-confidence failures (and of fixed images) during training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import lightning as L
import numpy as np
import torch
from omegaconf import MISSING
from torch import nn

from cnnstress.core.cam import METHOD_RULE, SALIENCY, compute_heatmaps, predict_probs, resolve_layer
from cnnstress.core.errors import ConfigError
from cnnstress.core.metrics import find_failures
from cnnstress.core.plots.canvas import save_png, to_hwc
from cnnstress.core.plots.images import image_grid, overlay
from cnnstress.core.rules import Integer, ListOf, Number, Probability, Text
from cnnstress.core.run_dir import RunDir
from cnnstress.train.callbacks.context import (
    label_errors_of,
    split_images,
    tensorboard_writer,
    trainer_class_names,
)


def explained_model(pl_module: L.LightningModule) -> nn.Module:
    """The backbone whose layers ``target_layer`` names (``pl_module.net``, else the module)."""
    net = getattr(pl_module, "net", None)
    return net if isinstance(net, nn.Module) else pl_module


@dataclass(eq=False)
class GradCAMGrids(L.Callback):
    """Render, per image: the image, the CAM of the predicted class and the CAM of the true class.

    Which images: the ``top_n`` most confident validation failures (wrong with confidence
    ``>= threshold``) of the latest validation epoch, followed by the official *test* images
    at ``indices`` (the same images every time, to follow them across epochs).

    When: at the end of every ``every_n_epochs``-th validation epoch, at the end of training
    (unless that epoch was just rendered), and, with ``on_test``, at the end of the test with
    the test failures. Files: ``<dirpath>/epoch_XXX.png`` (XXX = the epoch the weights come
    from, 0-based) and ``<dirpath>/test.png``; TensorBoard tags ``val/gradcam`` and
    ``test/gradcam``. Without a validation split, the training-time grids show only
    ``indices`` (none are written when that is empty).

    The model is left exactly as found (:func:`cnnstress.core.cam.compute_heatmaps`): mode,
    ``requires_grad``, gradients, hooks and the RNG stream. CAMs are computed in float32 with
    autocast off, outside inference mode, in the module's memory format. Only global rank 0
    computes and writes; the gathering of predictions runs on every rank. The failures are
    those of the evaluated logits (the test-time-augmentation ensemble's with ``tta``); the
    CAMs and the captions' predictions and confidences are the plain model's.

    Args:
        method: one of :data:`cnnstress.core.cam.METHODS` (``"saliency"`` = input gradients).
        target_layer: dotted path of a backbone module (``model.target_layer`` by default in
            the config); checked at setup.
        every_n_epochs: validation epochs between grids (0 = only at the end of training).
        top_n: failures per grid. threshold: confidence from which a failure counts.
        indices: official test-split indices always shown.
        on_test: also render the test failures at the end of the test.
        examples_per_row: images (each three panels) per grid row.
        alpha: heatmap weight in the overlays.
    """

    method: Annotated[str, METHOD_RULE] = "gradcam"
    target_layer: Annotated[str | None, Text(optional=True)] = None
    every_n_epochs: Annotated[int, Integer(0)] = 5
    top_n: Annotated[int, Integer(0)] = 8
    threshold: Annotated[float, Probability()] = MISSING
    indices: Annotated[list[int], ListOf(Integer(0))] = field(default_factory=list)
    on_test: bool = True
    examples_per_row: Annotated[int, Integer(1)] = 2
    alpha: Annotated[float, Number(0.0, 1.0)] = 0.5

    def __post_init__(self) -> None:
        # State, not settings: the step last rendered, the files written, the captions of the
        # latest grid (three per image).
        self._rendered_step: int | None = None
        self.written: list[str] = []
        self.last_captions: list[str] = []

    def validate(self, key: str) -> None:
        if self.method != SALIENCY and not self.target_layer:
            raise ConfigError(f"{key}.target_layer is required for method={self.method!r}")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.target_layer:
            resolve_layer(explained_model(pl_module), self.target_layer, "Grad-CAM target_layer")
        test_set = getattr(trainer.datamodule, "test_set", None) if trainer.datamodule else None
        if test_set is not None and self.indices:
            indices = torch.tensor(self.indices, dtype=torch.long)
            bad = indices[~test_set.data.contains(indices)].tolist()
            if bad:
                kind = "official indices" if test_set.official_index else "positions"
                raise ConfigError(
                    f"Grad-CAM indices {bad} out of range: the test split's {len(test_set)} "
                    f"images have {kind} (valid {_ranges(test_set.data.ids, len(test_set))})"
                )

    # -- hooks ------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs == 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._render(trainer, pl_module, "val", f"epoch_{trainer.current_epoch:03d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rendered_step == trainer.global_step:
            return  # the last validation epoch was just rendered with these weights
        epoch = max(trainer.current_epoch - 1, 0)  # the loop has moved past the last epoch
        self._render(trainer, pl_module, "val", f"epoch_{epoch:03d}")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_test:
            self._render(trainer, pl_module, "test", "test")

    # -- rendering --------------------------------------------------------------------------
    def _examples(
        self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str
    ) -> tuple[list[str], torch.Tensor, torch.Tensor, np.ndarray]:
        """Labels, uint8 images ``(N, 3, H, W)``, true classes ``(N,)`` and test indices ``(N,)``
        (-1 for validation images) to render."""
        labels, images, targets, test_index = [], [], [], []
        # No validation split: nothing to gather (the same answer on every rank).
        has_split = stage != "val" or getattr(trainer.datamodule, "has_val", True)
        preds = pl_module.predictions(stage) if has_split else None  # collective: all ranks
        if preds is not None and preds.index.size and self.top_n:
            rows = find_failures(preds.index, preds.target, preds.probs, self.threshold)
            rows = rows[: self.top_n]
            found = split_images(trainer, stage, preds.index[rows])
            if found is not None and rows.size:
                labels += [f"{stage} #{i}" for i in preds.index[rows]]
                images.append(found)
                targets.append(torch.from_numpy(preds.target[rows]))
                test_index.append(preds.index[rows] if stage == "test" else np.full(rows.size, -1))
        if self.indices:
            fixed = np.asarray(self.indices, dtype=np.int64)
            found = split_images(trainer, "test", fixed)
            if found is not None:
                test_set = trainer.datamodule.test_set
                labels += [f"test #{i} (fixed)" for i in fixed]
                images.append(found)
                targets.append(test_set.labels[test_set.rows(fixed)])
                test_index.append(fixed)
        if not images:
            return [], torch.zeros(0), torch.zeros(0), np.zeros(0, np.int64)
        return labels, torch.cat(images), torch.cat(targets).long(), np.concatenate(test_index)

    def _render(
        self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, name: str
    ) -> None:
        labels, images, targets, test_index = self._examples(trainer, pl_module, stage)
        if not trainer.is_global_zero or not labels:
            return
        errors = label_errors_of(trainer, "test")
        likely_true = label_error = None
        if errors is not None:  # -1 (validation images) is never a label error
            label_error = errors.is_error(test_index)
            likely_true = errors.likely_true(test_index)
        array = self.grid(
            trainer,
            pl_module,
            images,
            targets,
            labels,
            title_suffix=name,
            label_error=label_error,
            likely_true=likely_true,
        )
        path = save_png(array, RunDir(trainer.default_root_dir).gradcam / f"{name}.png")
        self.written.append(str(path))
        self._rendered_step = trainer.global_step
        writer = tensorboard_writer(trainer)
        if writer is not None:
            tag = "test/gradcam" if stage == "test" else "val/gradcam"
            writer.add_image(tag, array, trainer.global_step, dataformats="HWC")

    def grid(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        images: torch.Tensor,
        targets: torch.Tensor,
        labels: Sequence[str],
        title_suffix: str = "",
        label_error: np.ndarray | None = None,
        likely_true: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rendered grid ``(H, W, 3)`` uint8 for uint8 ``images`` ``(N, 3, h, w)`` with true
        classes ``targets`` ``(N,)``.

        ``label_error`` (bool ``(N,)``) and ``likely_true`` (int ``(N,)``, -1 = unknown) mark
        known label errors: the third panel then shows the CAM of the likely true class
        ("likely true: frog (label error)"), or of the given label where the workers did not
        agree ("label: cat (label error)").
        """
        net = explained_model(pl_module)
        channels_last = bool(getattr(pl_module, "channels_last", False))
        x = trainer.datamodule.normalize(images.to(pl_module.device))
        probs = predict_probs(net, x, channels_last=channels_last)
        pred = probs.argmax(1)
        conf = probs.gather(1, pred[:, None])[:, 0]
        n = len(labels)
        label_error = np.zeros(n, bool) if label_error is None else np.asarray(label_error)
        likely_true = np.full(n, -1) if likely_true is None else np.asarray(likely_true)
        # The third panel: the CAM of the likely true class of a label error, else of the label.
        likely = torch.from_numpy(likely_true.astype(np.int64))
        third = torch.where(likely >= 0, likely, targets.cpu().long()).to(pred.device)
        heat = compute_heatmaps(
            net,
            torch.cat([x, x]),
            torch.cat([pred, third]),
            self.method,
            self.target_layer,
            channels_last=channels_last,
        )
        rgb = to_hwc(images)
        tiles = np.stack(
            [rgb, overlay(rgb, heat[:n], self.alpha), overlay(rgb, heat[n:], self.alpha)], axis=1
        )
        names = trainer_class_names(trainer, probs.shape[1])
        captions: list[str] = []
        for i, label in enumerate(labels):
            p, t, c = int(pred[i]), int(targets[i]), int(third[i])
            if not label_error[i]:
                third_caption = f"{self.method}\ntrue: {names[t]}"
            elif likely_true[i] >= 0:
                third_caption = f"{self.method}\nlikely true: {names[c]}\n(label error)"
            else:
                third_caption = f"{self.method}\nlabel: {names[t]}\n(label error)"
            captions += [
                f"{label}\n{names[t]} -> {names[p]}\n({conf[i]:.2f})",
                f"{self.method}\npredicted: {names[p]}",
                third_caption,
            ]
        self.last_captions = captions
        layer = "" if self.method == SALIENCY else f" at {self.target_layer}"
        third_title = "true class (framed: label error)" if label_error.any() else "true class"
        title = f"{self.method}{layer}, {title_suffix}: image | predicted class | {third_title}"
        return image_grid(
            tiles.reshape(-1, *tiles.shape[2:]),
            captions,
            3 * self.examples_per_row,
            title,
            scale=4,
            caption_lines=3,
            framed=[bool(e) and panel == 0 for e in label_error for panel in range(3)],
        )


def _ranges(ids: torch.Tensor | None, size: int) -> str:
    """``0..N-1``, or the official indices present as ranges (``0..19, 40..59``), a few shown."""
    if ids is None:
        return f"0..{size - 1}"
    values = ids.tolist()
    if not values:
        return "(none)"
    starts = [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v - 1]
    ends = [v for i, v in enumerate(values) if i == len(values) - 1 or values[i + 1] != v + 1]
    parts = [f"{a}..{b}" if a != b else str(a) for a, b in zip(starts, ends, strict=True)]
    return ", ".join(parts[:5]) + (f", ... ({len(parts)} ranges)" if len(parts) > 5 else "")
