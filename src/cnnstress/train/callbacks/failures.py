"""High-confidence failures: images the model gets wrong while being confident."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
from omegaconf import MISSING

from cnnstress.core.data.label_errors import SOURCE, LabelErrors
from cnnstress.core.metrics import find_failures
from cnnstress.core.plots.canvas import save_png, to_hwc
from cnnstress.core.plots.images import image_grid
from cnnstress.core.rules import Integer, Probability
from cnnstress.core.run_dir import RunDir, write_json
from cnnstress.train.callbacks.context import (
    label_errors_of,
    split_images,
    tensorboard_writer,
    trainer_class_names,
)


def failure_records(
    index: np.ndarray,
    target: np.ndarray,
    probs: np.ndarray,
    rows: np.ndarray,
    names: Sequence[str],
    top_k: int = 3,
    label_errors: LabelErrors | None = None,
) -> list[dict[str, Any]]:
    """JSON-ready records for ``rows``: index, true and predicted class, confidence, top-k.

    With ``label_errors`` (``index`` holds official test indices), each record also says
    whether its image is a known ``label_error`` and its ``likely_true`` class (``None`` where
    the workers did not agree on one, or for an image that is not a label error).
    """
    records = []
    if label_errors is not None:
        is_error = label_errors.is_error(index[rows])
        likely_true = label_errors.likely_true(index[rows])
    for k, row in enumerate(rows):
        p = probs[row]
        top = np.argsort(-p, kind="stable")[:top_k]
        pred = int(top[0])
        record = {
            "index": int(index[row]),
            "true": {"id": int(target[row]), "name": names[int(target[row])]},
            "predicted": {"id": pred, "name": names[pred]},
            "confidence": float(p[pred]),
            f"top{top_k}": [
                {"id": int(c), "name": names[int(c)], "prob": float(p[c])} for c in top
            ],
        }
        if label_errors is not None:
            true = int(likely_true[k])
            record["label_error"] = bool(is_error[k])
            record["likely_true"] = None if true < 0 else {"id": true, "name": names[true]}
        records.append(record)
    return records


@dataclass(eq=False)
class HighConfidenceFailures(L.Callback):
    """Find wrong predictions made with confidence ``>= threshold`` (inclusive).

    At the end of every validation epoch (sanity check excluded) and of the test, from the
    per-image outputs of the whole split (:meth:`ClassifierModule.predictions`, gathered over
    DDP processes without sampler padding):

    * logs ``{stage}/high_conf_failures`` (count) and ``{stage}/high_conf_failure_rate``
      (fraction of the split), so the test values land in ``metrics.json``;
    * test: writes ``<dirpath>/failures.json`` (sorted by confidence, most confident first)
      and ``<dirpath>/failures_grid.png`` with the ``top_n`` first images captioned
      "true -> predicted (confidence)", and logs the grid to TensorBoard
      (``test/high_conf_failures_grid``);
    * known label errors, where the split's indices are official and the dataset has a list
      (:func:`label_errors_of`; the test split only): logs
      ``{stage}/high_conf_failures_label_errors`` (how many failures are label errors), marks
      each JSON record (``label_error``, ``likely_true``), and frames those images in the grid
      with the caption lines "label error", "likely: <likely true class>" (or "true unclear").
      Nothing label-error related is written otherwise;
    * validation: writes ``<dirpath>/val_failures.json`` (latest epoch) and, every
      ``grid_every_n_epochs`` epochs (0 = never), logs the grid as ``val/high_conf_failures_grid``.

    Only global rank 0 writes and renders; every rank logs the same (already gathered) values.

    Args:
        threshold: confidence in [0, 1] from which a wrong prediction counts (the run's
            ``confidence_threshold`` in the config).
        top_n: images in the grid.
        grid_every_n_epochs: validation epochs between TensorBoard grids.
        top_k: classes listed per failure in the JSON.
        ncols: images per grid row.
    """

    threshold: Annotated[float, Probability()] = MISSING
    top_n: Annotated[int, Integer(0)] = 16
    grid_every_n_epochs: Annotated[int, Integer(0)] = 1
    top_k: Annotated[int, Integer(1)] = 3
    ncols: Annotated[int, Integer(1)] = 8

    def __post_init__(self) -> None:
        # The latest failure records of each stage, and what its grid shows (index, caption
        # and frame per tile): state, not settings.
        self.last: dict[str, list[dict[str, Any]]] = {}
        self.last_grid: dict[str, list[dict[str, Any]]] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._collect(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._collect(trainer, pl_module, "test")

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        preds = pl_module.predictions(stage)  # a collective: every rank calls it
        if preds.index.size == 0:
            return
        probs = preds.probs
        rows = find_failures(preds.index, preds.target, probs, self.threshold)
        errors = label_errors_of(trainer, stage)
        metrics = {
            f"{stage}/high_conf_failures": float(rows.size),
            f"{stage}/high_conf_failure_rate": rows.size / preds.index.size,
        }
        if errors is not None:
            num_errors = int(errors.is_error(preds.index[rows]).sum())
            metrics[f"{stage}/high_conf_failures_label_errors"] = float(num_errors)
        pl_module.log_dict(metrics, sync_dist=False)  # same gathered values on every rank
        if not trainer.is_global_zero:
            return
        names = trainer_class_names(trainer, probs.shape[1])
        records = failure_records(preds.index, preds.target, probs, rows, names, self.top_k, errors)
        self.last[stage] = records
        folder = RunDir(trainer.default_root_dir).failures
        summary = {
            "split": stage,
            "epoch": trainer.current_epoch,
            "threshold": self.threshold,
            "num_images": int(preds.index.size),
            "count": len(records),
        }
        if errors is not None:
            summary["label_errors"] = {"count": num_errors, "source": SOURCE}
        summary["failures"] = records
        write_json(folder / ("failures.json" if stage == "test" else "val_failures.json"), summary)
        grid_due = stage == "test" or (
            self.grid_every_n_epochs > 0
            and (trainer.current_epoch + 1) % self.grid_every_n_epochs == 0
        )
        if not grid_due or self.top_n == 0:
            return
        shown = records[: self.top_n]
        images = split_images(trainer, stage, np.array([r["index"] for r in shown], np.int64))
        if images is None:
            return
        title = (
            f"{stage}: {len(records)} of {preds.index.size} images wrong with confidence "
            f">= {self.threshold:g}" + (f" (top {len(shown)})" if len(records) > len(shown) else "")
        )
        captions, framed = failure_captions(shown)
        self.last_grid[stage] = [
            {"index": r["index"], "caption": c, "framed": f}
            for r, c, f in zip(shown, captions, framed, strict=True)
        ]
        if any(framed):
            title += f"; framed: {sum(framed)} known label errors"
        grid = failures_grid(images, shown, self.ncols, title)
        if stage == "test":
            save_png(grid, folder / "failures_grid.png")
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_image(
                f"{stage}/high_conf_failures_grid", grid, trainer.global_step, dataformats="HWC"
            )


def failure_captions(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[bool]]:
    """Caption and frame flag per record: "#index / true -> / predicted (confidence)", plus
    "label error" and "likely: <class>" (or "true unclear") for a known label error (framed)."""
    captions, framed = [], []
    for r in records:
        true, pred = r["true"]["name"], r["predicted"]["name"]
        caption = f"#{r['index']}\n{true} ->\n{pred} ({r['confidence']:.2f})"
        if r.get("label_error"):
            likely = r.get("likely_true")
            truth = f"likely: {likely['name']}" if likely else "true unclear"
            caption += f"\nlabel error\n{truth}"
        captions.append(caption)
        framed.append(bool(r.get("label_error")))
    return captions, framed


def failures_grid(
    images: torch.Tensor, records: Sequence[dict[str, Any]], ncols: int, title: str | None
) -> np.ndarray:
    """Grid ``(H, W, 3)`` uint8 of uint8 images ``(N, 3, h, w)`` captioned from ``records``
    (:func:`failure_captions`); known label errors are framed."""
    if len(records) == 0:
        tiles = np.full((1, *images.shape[-2:], 3), 255, np.uint8)
        return image_grid(tiles, ["(no failures)"], 1, title, caption_lines=3)
    captions, framed = failure_captions(records)
    lines = 5 if any(framed) else 3
    return image_grid(
        to_hwc(images), captions, ncols, title, scale=4, caption_lines=lines, framed=framed
    )
