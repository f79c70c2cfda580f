"""Objects that tests inject through the real configs (e.g. ``+callbacks.crash._target_=...``)."""

from __future__ import annotations

import lightning as L


class CrashAtEpoch(L.Callback):
    """Raise at the start of ``epoch``, as a run killed after the previous epoch would end."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at the start of epoch {self.epoch}")
