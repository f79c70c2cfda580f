"""One log line per epoch: a short, readable record of a run wherever its output goes."""

from __future__ import annotations

import logging
import math
import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from cnnstress.core.console import clock
from cnnstress.train.callbacks.speed import TrainSpeed

log = logging.getLogger(__name__)


class EpochLog(L.Callback):
    """Log, at the end of every training epoch (after its validation), one line::

        epoch 3/15: 351 steps, 3,512 img/s, train loss 0.812 acc 0.710, val loss 0.751 acc
        0.742, 1:02 elapsed, ETA 2:45

    The live progress bar is for terminals (``trainer.enable_progress_bar`` defaults to whether
    stdout is one); this line lands in ``train.log`` and in a redirected log (SLURM, CI,
    ``nohup``) instead of thousands of carriage-return updates. The ETA extrapolates the
    wall time per epoch so far, validation included.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._first_epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._first_epoch = trainer.current_epoch  # resumed runs start later

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        parts = [f"epoch {epoch}/{total}: {trainer.num_training_batches} steps"]
        speed = next((c for c in trainer.callbacks if isinstance(c, TrainSpeed)), None)
        if speed is not None and speed.epoch_images_per_sec > 0:
            parts.append(f"{speed.epoch_images_per_sec:,.0f} img/s")
        for stage in ("train", "val"):
            values = [
                f"{name} {metrics[f'{stage}/{name}']:.4g}"
                for name in ("loss", "acc")
                if f"{stage}/{name}" in metrics
            ]
            if values:
                parts.append(f"{stage} {' '.join(values)}")
        if self._start is not None:
            elapsed = time.perf_counter() - self._start
            done = epoch - self._first_epoch
            parts.append(f"{clock(elapsed)} elapsed")
            if total and total > 0 and done > 0 and math.isfinite(elapsed):
                parts.append(f"ETA {clock(elapsed / done * (total - epoch))}")
        log.info(", ".join(parts))
