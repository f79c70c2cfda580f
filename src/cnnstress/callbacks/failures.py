"""High-confidence failures: images the model gets wrong while being confident.

Also home to the small helpers the stress-test callbacks share (class names, split images,
the TensorBoard writer, the run directory).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from cnnstress.errors import ConfigError
from cnnstress.plots import image_grid, save_png, to_hwc
from cnnstress.run_files import write_json

# --- shared helpers ------------------------------------------------------------------------


def class_names(trainer: L.Trainer, num_classes: int) -> list[str]:
    """The datamodule's official class names, else ``"0"``, ``"1"``, ..."""
    names = getattr(trainer.datamodule, "classes", None) if trainer.datamodule else None
    if names is not None and len(names) == num_classes:
        return list(names)
    return [str(i) for i in range(num_classes)]


def split_images(trainer: L.Trainer, stage: str, index: np.ndarray) -> torch.Tensor | None:
    """uint8 ``(N, 3, H, W)`` images of the ``stage`` split at dataset ``index``, if known.

    ``index`` is what batches carry: positions in the official split the images come from
    (the validation split's indices are positions in the official training split).
    """
    datamodule = trainer.datamodule
    split = getattr(datamodule, f"{stage}_set", None) if datamodule is not None else None
    if split is None or not hasattr(split, "images"):
        return None
    return split.images[torch.as_tensor(index, dtype=torch.long)]


def tensorboard_writer(trainer: L.Trainer) -> Any | None:
    """The SummaryWriter of the first TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def output_dir(trainer: L.Trainer, dirpath: str | os.PathLike | None, default: str) -> Path:
    """``dirpath`` if given, else ``<trainer.default_root_dir>/<default>``."""
    return Path(dirpath) if dirpath else Path(trainer.default_root_dir) / default


def check_threshold(threshold: float, key: str) -> float:
    """``threshold`` as a float in [0, 1], else :class:`ConfigError`."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ConfigError(f"{key} must be a number in [0, 1], got {threshold!r}")
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ConfigError(f"{key} must be in [0, 1], got {threshold}")
    return float(threshold)


def check_count(value: int, key: str, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


# --- failures ------------------------------------------------------------------------------


def find_failures(
    index: np.ndarray, target: np.ndarray, probs: np.ndarray, threshold: float
) -> np.ndarray:
    """Positions (rows) of the high-confidence failures, most confident first.

    A failure is a wrong top-1 prediction whose probability is ``>= threshold`` (inclusive:
    the comparison runs in the probabilities' dtype, so a float32 probability equal to
    ``float32(threshold)`` counts). Ties in confidence are ordered by dataset index.

    Args:
        index: ``(N,)`` dataset indices. target: ``(N,)`` true classes.
        probs: ``(N, C)`` softmax probabilities.
    """
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    conf = probs[np.arange(len(pred)), pred]
    wrong = (pred != np.asarray(target)) & (conf >= np.asarray(threshold, dtype=probs.dtype))
    rows = np.flatnonzero(wrong)
    return rows[np.lexsort((np.asarray(index)[rows], -conf[rows]))]


def failure_records(
    index: np.ndarray,
    target: np.ndarray,
    probs: np.ndarray,
    rows: np.ndarray,
    names: Sequence[str],
    top_k: int = 3,
) -> list[dict[str, Any]]:
    """JSON-ready records for ``rows``: index, true and predicted class, confidence, top-k."""
    records = []
    for row in rows:
        p = probs[row]
        top = np.argsort(-p, kind="stable")[:top_k]
        pred = int(top[0])
        records.append(
            {
                "index": int(index[row]),
                "true": {"id": int(target[row]), "name": names[int(target[row])]},
                "predicted": {"id": pred, "name": names[pred]},
                "confidence": float(p[pred]),
                f"top{top_k}": [
                    {"id": int(c), "name": names[int(c)], "prob": float(p[c])} for c in top
                ],
            }
        )
    return records


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
    * validation: writes ``<dirpath>/val_failures.json`` (latest epoch) and, every
      ``grid_every_n_epochs`` epochs (0 = never), logs the grid as ``val/high_conf_failures_grid``.

    Only global rank 0 writes and renders; every rank logs the same (already gathered) values.

    Args:
        threshold: confidence in [0, 1] from which a wrong prediction counts.
        top_n: images in the grid.
        dirpath: output folder (default ``<default_root_dir>/failures``).
        grid_every_n_epochs: validation epochs between TensorBoard grids.
        top_k: classes listed per failure in the JSON.
        ncols: images per grid row.
    """

    def __init__(
        self,
        threshold: float = 0.8,
        top_n: int = 16,
        dirpath: str | None = None,
        grid_every_n_epochs: int = 1,
        top_k: int = 3,
        ncols: int = 8,
    ) -> None:
        key = "callbacks.high_conf_failures"
        self.threshold = check_threshold(threshold, f"{key}.threshold")
        self.top_n = check_count(top_n, f"{key}.top_n")
        self.grid_every_n_epochs = check_count(grid_every_n_epochs, f"{key}.grid_every_n_epochs")
        self.top_k = check_count(top_k, f"{key}.top_k", 1)
        self.ncols = check_count(ncols, f"{key}.ncols", 1)
        self.dirpath = dirpath
        self.last: dict[str, list[dict[str, Any]]] = {}

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
        metrics = {
            f"{stage}/high_conf_failures": float(rows.size),
            f"{stage}/high_conf_failure_rate": rows.size / preds.index.size,
        }
        pl_module.log_dict(metrics, sync_dist=False)  # same gathered values on every rank
        if not trainer.is_global_zero:
            return
        names = class_names(trainer, probs.shape[1])
        records = failure_records(preds.index, preds.target, probs, rows, names, self.top_k)
        self.last[stage] = records
        folder = output_dir(trainer, self.dirpath, "failures")
        summary = {
            "split": stage,
            "epoch": trainer.current_epoch,
            "threshold": self.threshold,
            "num_images": int(preds.index.size),
            "count": len(records),
            "failures": records,
        }
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
        grid = failures_grid(images, shown, self.ncols, title)
        if stage == "test":
            save_png(grid, folder / "failures_grid.png")
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_image(
                f"{stage}/high_conf_failures_grid", grid, trainer.global_step, dataformats="HWC"
            )


def failures_grid(
    images: torch.Tensor, records: Sequence[dict[str, Any]], ncols: int, title: str | None
) -> np.ndarray:
    """Grid ``(H, W, 3)`` uint8 of uint8 images ``(N, 3, h, w)`` captioned from ``records``."""
    if len(records) == 0:
        tiles = np.full((1, *images.shape[-2:], 3), 255, np.uint8)
        return image_grid(tiles, ["(no failures)"], 1, title, caption_lines=3)
    captions = [
        f"#{r['index']}\n{r['true']['name']} ->\n{r['predicted']['name']} ({r['confidence']:.2f})"
        for r in records
    ]
    return image_grid(to_hwc(images), captions, ncols, title, scale=4, caption_lines=3)
