"""Failure modes at the end of the test: what the errors have in common, per run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch

from cnnstress.core.failure_modes.modes import FailureModes
from cnnstress.core.failure_modes.run import (
    cam_settings,
    check_model,
    compute_failure_modes,
    write_failure_modes,
)
from cnnstress.core.failure_modes.settings import FailureModeSettings
from cnnstress.core.plots.failure_modes import failure_modes_figure
from cnnstress.core.run_dir import RunDir
from cnnstress.train.callbacks.context import (
    label_errors_of,
    split_images,
    tensorboard_writer,
    trainer_class_names,
)
from cnnstress.train.callbacks.gradcam import explained_model


def member_captions(
    result: FailureModes, index: np.ndarray, target: np.ndarray, probs: np.ndarray
) -> dict[int, str]:
    """``{test index: "#index\\n(confidence)"}`` for every mode member, plus ``true -> predicted``
    where a member's pair is not its mode's (only in a mixed mode)."""
    row_of = {int(i): r for r, i in enumerate(index)}
    captions = {}
    for grouping in (result.errors, result.confident):
        for mode in grouping.modes:
            for i in mode.members:
                r = row_of[i]
                t, p = int(target[r]), int(probs[r].argmax())
                caption = f"#{i}\n({probs[r, p]:.2f})"
                if (t, p) != (mode.true, mode.predicted):
                    caption = (
                        f"#{i} ({probs[r, p]:.2f})\n{result.classes[t]} -> {result.classes[p]}"
                    )
                captions[i] = caption
    return captions


@dataclass(eq=False)
class FailureModesCallback(FailureModeSettings, L.Callback):
    """At the end of the test: group the test errors, and separately the confident ones, into
    modes described by their attributes (:mod:`cnnstress.core.failure_modes`).

    Writes ``failure_modes.json`` (:meth:`FailureModes.to_json`) and ``failure_modes.png`` (a
    row of the most typical images per mode, titled with its description) into the run
    directory (:class:`cnnstress.core.run_dir.RunDir`), and logs the figure to TensorBoard as
    ``test/failure_modes``.

    The errors are the evaluated predictions' (with test-time augmentation where the run uses
    it; the same as ``failures.json`` and ``predictions.npz``); embeddings and CAMs are the
    plain backbone's, computed in float32 on the errors only, leaving the model exactly as
    found (mode, ``requires_grad``, gradients, hooks, RNG). Only global rank 0 computes and
    writes; the gathering of predictions runs on every rank. Settings are checked when the
    config is composed (one ``cnnstress: error:`` line) and the layers against the model at
    setup. Knobs: :class:`~cnnstress.core.failure_modes.settings.FailureModeSettings`.
    """

    def __post_init__(self) -> None:
        # State, not settings: the latest result and the files written.
        self.last: FailureModes | None = None
        self.written: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_model(explained_model(pl_module), self)
        if self.cam:
            cam_settings(self)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        preds = pl_module.predictions("test")  # a collective: every rank calls it
        if not trainer.is_global_zero or preds.index.size == 0:
            return
        images = split_images(trainer, "test", preds.index)
        if images is None:
            return
        net = explained_model(pl_module)
        probs = preds.probs
        names = trainer_class_names(trainer, probs.shape[1])
        errors = label_errors_of(trainer, "test")
        official = bool(getattr(trainer.datamodule, "official_test_index", errors is not None))
        result = compute_failure_modes(
            net,
            images,
            preds.index,
            preds.target,
            probs,
            normalize=trainer.datamodule.normalize,
            classes=names,
            settings=self,
            label_errors=errors,
            official_index=official,
            cam=cam_settings(self) if self.cam else None,
            device=pl_module.device,
            channels_last=bool(getattr(pl_module, "channels_last", False)),
        )
        self.last = result
        figure = self.figure(result, images, preds.index, preds.target, probs, errors)
        run = RunDir(trainer.default_root_dir)
        self.written = [str(p) for p in write_failure_modes(result, run, figure)]
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_image("test/failure_modes", figure, trainer.global_step, dataformats="HWC")

    def figure(
        self,
        result: FailureModes,
        images: torch.Tensor,
        index: np.ndarray,
        target: np.ndarray,
        probs: np.ndarray,
        label_errors: Any = None,
    ) -> np.ndarray:
        """The ``failure_modes.png`` array of ``result`` (images row-aligned with ``index``)."""
        rows = {int(i): r for r, i in enumerate(index)}

        def lookup(wanted: np.ndarray) -> torch.Tensor:
            return images[torch.as_tensor([rows[int(i)] for i in wanted], dtype=torch.long)]

        framed = index[label_errors.is_error(index)] if label_errors is not None else ()
        return failure_modes_figure(
            result,
            lookup,
            member_captions(result, index, target, probs),
            per_mode=self.images_per_mode,
            modes_shown=self.modes_shown,
            framed=framed,
        )
