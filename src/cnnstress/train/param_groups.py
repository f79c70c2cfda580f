"""Per-parameter-group learning-rate and weight-decay multipliers (the ``param_groups`` key).

``module.param_groups`` gives a group of parameters multipliers of the optimizer's learning rate
and weight decay, e.g. airbench's BatchNorm biases (64x the learning rate, the same decoupled
decay ``lr x weight_decay``)::

    module:
      param_groups:
        norm_bias: {lr_scale: 64.0, weight_decay_scale: 0.015625}

Groups (each parameter belongs to the first group that claims it; the rest keep the optimizer's
values):

* ``norm_bias``: the biases (shifts) of normalisation layers (BatchNorm, GroupNorm, LayerNorm,
  InstanceNorm).

Scales of 1 (the default) leave a group with the optimizer's values, in its first group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from torch import nn

from cnnstress.core.rules import Number

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _norm_biases(module: nn.Module) -> list[nn.Parameter]:
    return [
        m.bias
        for m in module.modules()
        if isinstance(m, _NORMS) and getattr(m, "bias", None) is not None
    ]


#: Group name -> the parameters of a module it selects.
GROUPS: dict[str, Callable[[nn.Module], list[nn.Parameter]]] = {"norm_bias": _norm_biases}


@dataclass
class ParamGroupScale:
    """Multipliers of the optimizer's learning rate and weight decay for one group."""

    lr_scale: Annotated[float, Number(0.0, low_open=True)] = 1.0
    weight_decay_scale: Annotated[float, Number(0.0)] = 1.0

    @property
    def identity(self) -> bool:
        return self.lr_scale == 1.0 and self.weight_decay_scale == 1.0


@dataclass
class ParamGroups:
    """``module.param_groups``: one :class:`ParamGroupScale` per group of :data:`GROUPS`
    (1 and 1: the group keeps the optimizer's values)."""

    norm_bias: ParamGroupScale = field(default_factory=ParamGroupScale)


def parameter_groups(
    module: nn.Module, groups: ParamGroups, lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer parameter groups of ``module``: a first group of the parameters no scaled
    group claims, with ``lr`` and ``weight_decay`` (``lr_scale`` 1), then one per group of
    ``groups`` whose scales are not 1 and that selects any parameter (``lr x lr_scale``,
    ``weight_decay x weight_decay_scale``, ``lr_scale`` kept for schedulers that set the rate
    themselves, e.g. OneCycle). Each parameter belongs to the first group that claims it.
    Frozen parameters are included: the optimizer skips a parameter while it has no gradient."""
    claimed: set[int] = set()
    scaled = []
    for name in GROUPS:
        scale: ParamGroupScale = getattr(groups, name)
        if scale.identity:
            continue
        params = [p for p in GROUPS[name](module) if id(p) not in claimed]
        claimed |= {id(p) for p in params}
        if params:
            scaled.append(
                {
                    "params": params,
                    "lr": lr * scale.lr_scale,
                    "weight_decay": weight_decay * scale.weight_decay_scale,
                    "lr_scale": scale.lr_scale,
                }
            )
    rest = [p for p in module.parameters() if id(p) not in claimed]
    default = {"params": rest, "lr": lr, "weight_decay": weight_decay, "lr_scale": 1.0}
    return [default, *scaled] if rest else scaled
