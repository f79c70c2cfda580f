"""Averaged weights (EMA or lookahead, as airbench) on top of Lightning's ``WeightAveraging``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from cnnstress.core.rules import Integer, Number


@dataclass(eq=False)
class WeightAverage(WeightAveraging):
    """An exponential moving average of the weights (parameters and BatchNorm statistics),
    updated every ``every_n_steps`` optimizer steps with the decay
    ``decay x (step / total_steps) ** decay_power`` (0 early in training, ``decay`` at the end);
    with ``lookahead`` the training weights are reset to the average after each update
    (Zhang et al. 2019's Lookahead, airbench's schedule: ``decay`` 0.95^5, power 3, every 5
    steps), else they train on undisturbed (plain EMA).

    The averaged weights are what validation, the test, ``best.ckpt``/``last.ckpt`` (their
    ``state_dict``; the training weights travel as ``current_model_state``), predictions,
    failures, Grad-CAM and the stresses see, and the model holds them after training.

    Lightning's ``WeightAveraging`` does the averaging, the swaps and the checkpoint layout.
    This subclass fixes three things for cnnstress's fit-then-test flow:

    * ``trainer.test(ckpt_path="best")`` after ``fit``: Lightning reloads the checkpoint's
      *training* weights (``current_model_state``) whenever its averaged model exists; here a
      checkpoint loaded outside fitting keeps its averaged ``state_dict``.
    * Validation: the averaged weights stay in place until ``on_validation_end`` (Lightning swaps
      back at ``on_validation_epoch_end``), so callbacks that render at the end of a validation
      epoch (Grad-CAM of the failures) see the weights that were evaluated, whatever their order.
    * The averaged model is a copy made at ``setup``, before the backbone's data-dependent
      initialisation (``on_fit_start``): it is synchronised at ``on_train_start`` of a new fit.
    * The update itself: ``AveragedModel.update_parameters`` asks the device twice per update
      whether its count is 0 (``bool(n_averaged == 0)``, ``if n_averaged > 0``), which makes a
      GPU step wait; here the same arithmetic runs with the count mirrored on the host.

    Args:
        every_n_steps: optimizer steps between updates.
        decay: the decay at the last step (weight of the old average).
        decay_power: exponent of the ramp ``(step / total_steps) ** decay_power``.
        lookahead: reset the training weights to the average after each update.
    """

    every_n_steps: Annotated[int, Integer(1)] = 5
    decay: Annotated[float, Number(0.0, 1.0, high_open=True)] = 0.95**5
    decay_power: Annotated[float, Number(0.0)] = 3.0
    lookahead: bool = True

    def __post_init__(self) -> None:
        super().__init__(use_buffers=True, avg_fn=self._average)
        self._current_decay = 0.0
        self._total_steps = 1.0
        # host copy of the averaged model's n_averaged (read once at on_train_start)
        self._updates = 0

    def _average(
        self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor
    ) -> torch.Tensor:
        if not averaged.is_floating_point():  # e.g. BatchNorm's num_batches_tracked
            return current
        return averaged.lerp(current, 1.0 - self._current_decay)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and (step_idx + 1) % self.every_n_steps == 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._total_steps = max(float(trainer.estimated_stepping_batches), 1.0)
        if self._average_model is not None:
            self._updates = int(self._average_model.n_averaged)  # resumed: from the checkpoint
            if self._updates == 0:
                self._copy_current_to_average(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        progress = min(trainer.global_step / self._total_steps, 1.0)
        self._current_decay = self.decay * progress**self.decay_power
        # Lightning's WeightAveraging.on_train_batch_end, with update_parameters replaced
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._update_average(pl_module)
            self._latest_update_step = trainer.global_step
            if self.lookahead:
                self._copy_average_to_current(pl_module)

    @torch.no_grad()
    def _update_average(self, pl_module: L.LightningModule) -> None:
        """``AveragedModel.update_parameters`` (with ``use_buffers``) without asking the device:
        the first update copies, later ones apply :meth:`_average`."""
        assert self._average_model is not None
        module = self._average_model.module
        average = [*module.parameters(), *module.buffers()]
        current = [*pl_module.parameters(), *pl_module.buffers()]
        for avg, cur in zip(average, current, strict=False):
            cur = cur.detach().to(avg.device)
            if self._updates == 0:
                avg.copy_(cur)
            else:
                avg.copy_(self._average(avg, cur, self._average_model.n_averaged))
        self._average_model.n_averaged += 1
        self._updates += 1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # the swap back waits for on_validation_end

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average_model is not None and trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # Otherwise (test, evaluation): the state_dict Lightning loaded is the averaged model.

    def _copy_current_to_average(self, pl_module: L.LightningModule) -> None:
        assert self._average_model is not None
        average = [*self._average_model.module.parameters(), *self._average_model.module.buffers()]
        current = [*pl_module.parameters(), *pl_module.buffers()]
        with torch.no_grad():
            for avg, cur in zip(average, current, strict=True):
                avg.copy_(cur)
