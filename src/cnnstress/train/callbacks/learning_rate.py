"""Log the learning rate actually used, under the ``train/`` names of every other metric."""

from __future__ import annotations

import lightning as L


class LearningRate(L.Callback):
    """Log ``train/lr`` at the start of every training epoch: the rate the optimizer holds then
    (after any scaling and the scheduler's step). With several optimizers or parameter groups
    whose rates differ, ``train/lr/<optimizer>.<group>`` for each.

    Lightning's ``LearningRateMonitor`` names it ``lr-<OptimizerClass>`` and needs a logger;
    this callback also works without one (the value still lands in ``metrics.json``).
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rates = {
            f"{i}.{j}": float(group["lr"])
            for i, optimizer in enumerate(trainer.optimizers)
            for j, group in enumerate(optimizer.param_groups)
        }
        if len(set(rates.values())) == 1:
            pl_module.log("train/lr", next(iter(rates.values())), on_epoch=True, on_step=False)
        else:
            for name, rate in rates.items():
                pl_module.log(f"train/lr/{name}", rate, on_epoch=True, on_step=False)
