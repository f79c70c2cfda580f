"""Measure training throughput in images per second."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


class TrainSpeed(L.Callback):
    """Log ``train/images_per_sec`` per epoch: all processes together, validation excluded.

    ``images`` and ``seconds`` accumulate over the whole run; :attr:`images_per_sec` is the
    run-level figure written to ``metrics.json``.
    """

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._epoch_images = 0
        self._epoch_seconds = 0.0
        self._start: float | None = None

    @property
    def images_per_sec(self) -> float:
        """Training images per second over every epoch so far (0 before the first epoch)."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def epoch_images_per_sec(self) -> float:
        """Training images per second of the latest epoch (0 before the first epoch)."""
        return self._epoch_images / self._epoch_seconds if self._epoch_seconds > 0 else 0.0

    def _now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def _pause(self, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._epoch_seconds += self._now(pl_module) - self._start
            self._start = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_images, self._epoch_seconds = 0, 0.0
        self._start = self._now(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        self._epoch_images += batch["target"].shape[0] * trainer.world_size

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._start = self._now(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause(pl_module)
        self.images += self._epoch_images
        self.seconds += self._epoch_seconds
        if self._epoch_seconds > 0:
            speed = self._epoch_images / self._epoch_seconds
            pl_module.log("train/images_per_sec", speed, sync_dist=False)
