"""Optimizer and learning-rate schedule configs (``module.optimizer``, ``module.scheduler``).

Each schema is a Hydra partial of the torch class (``_partial_: true``): the LightningModule
completes it with its parameters in ``configure_optimizers``, where the learning rate is also
scaled (``module.lr_scaling``) and OneCycle's peak set to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from cnnstress.core.rules import Integer, Interval, Number, OneOf


@dataclass
class OptimizerConfig:
    """What every optimizer config has: a torch optimizer, its learning rate and weight decay."""

    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: Annotated[float, Number(0.0, low_open=True)] = 0.1
    weight_decay: Annotated[float, Number(0.0)] = 0.0


@dataclass
class SGDConfig(OptimizerConfig):
    """SGD with Nesterov momentum (the ResNets' default)."""

    _target_: str = "torch.optim.SGD"
    lr: Annotated[float, Number(0.0, low_open=True)] = 0.1
    momentum: Annotated[float, Number(0.0, 1.0, high_open=True)] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, Number(0.0)] = 5.0e-4


@dataclass
class AdamConfig(OptimizerConfig):
    """Adam (the simple CNN's default)."""

    _target_: str = "torch.optim.Adam"
    lr: Annotated[float, Number(0.0, low_open=True)] = 1.0e-3
    betas: Annotated[list[float], Interval(0.0, 1.0)] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: Annotated[float, Number(0.0)] = 0.0


@dataclass
class AdamWConfig(AdamConfig):
    """AdamW (decoupled weight decay)."""

    _target_: str = "torch.optim.AdamW"
    weight_decay: Annotated[float, Number(0.0)] = 5.0e-2


INTERVALS = ("epoch", "step")


@dataclass
class CosineSchedule:
    """Cosine decay to zero over ``T_max`` steps of the scheduler."""

    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    T_max: Annotated[int, Integer(1)] = "${trainer.max_epochs}"  # type: ignore[assignment]


@dataclass
class MultiStepSchedule:
    """The learning rate times ``gamma`` at each milestone."""

    _target_: str = "torch.optim.lr_scheduler.MultiStepLR"
    _partial_: bool = True
    milestones: list[int] = field(default_factory=lambda: [25, 40])
    gamma: Annotated[float, Number(0.0, low_open=True)] = 0.1


@dataclass
class OneCycleSchedule:
    """One cycle (Smith & Topin 2019), stepped every batch. Its peak is the (scaled) learning
    rate of each parameter group and its length the run's steps, both set by the module."""

    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    _partial_: bool = True
    pct_start: Annotated[float, Number(0.0, 1.0, low_open=True, high_open=True)] = 0.25
    div_factor: Annotated[float, Number(0.0, low_open=True)] = 25.0
    final_div_factor: Annotated[float, Number(0.0, low_open=True)] = 1.0e4
    anneal_strategy: Annotated[str, OneOf(("cos", "linear"))] = "cos"
    cycle_momentum: bool = True


@dataclass
class SchedulerConfig:
    """A learning-rate schedule (``schedule``: null for a constant rate) and whether it steps
    every ``epoch`` or every optimizer ``step``."""

    interval: Annotated[str, OneOf(INTERVALS)] = "epoch"
    schedule: Any = None
