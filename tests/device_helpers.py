"""Objects the device tests inject through the real configs (``+callbacks.x._target_=...``)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch


class PlantSync(L.Callback):
    """Make one host-device synchronisation of ``kind`` in every training step (before the
    backward), as a careless line in a training step would."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        value = loss.detach()
        if self.kind == "item":
            value.item()
        elif self.kind == "bool":
            bool(value > 0)
        elif self.kind == "tensor":
            torch.tensor([1.0, 2.0], device=pl_module.device)
        elif self.kind == "to":
            torch.ones(3).to(pl_module.device)
        elif self.kind == "mask":
            flat = value.reshape(1)
            flat[flat > 0]
        elif self.kind == "cpu":
            value.cpu()
        elif self.kind == "tolist":
            value.reshape(1).tolist()
        else:
            raise ValueError(self.kind)


class RecordWhitenBias(L.Callback):
    """Write the whitening bias of a FastNet at the end of every training epoch to
    ``<run>/whiten_bias.json`` (rank 0): ``[[epoch, [values...]], ...]``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.values: list[Any] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bias = pl_module.net.whiten.bias.detach().float().cpu().tolist()
        self.values.append([trainer.current_epoch, bias])
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(self.values))


class RequiresGradFreeze(L.Callback):
    """The freeze of FastNet's whitening bias as it was before it went through the optimizer:
    ``requires_grad_(False)`` from ``whiten_bias_epochs`` on (its ``frozen_parameters`` hook is
    switched off), to compare the two on one process."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.net
        net.frozen_parameters = list
        net.whiten.bias.requires_grad_(trainer.current_epoch < net.whiten_bias_epochs)


class KillProcess(L.Callback):
    """Send ``signal_number`` to this process at the start of training (0: do nothing), as the
    out-of-memory killer or the scheduler would."""

    def __init__(self, signal_number: int = 0) -> None:
        self.signal_number = signal_number

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.signal_number:
            os.kill(os.getpid(), signal.Signals(self.signal_number))
