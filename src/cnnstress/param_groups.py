"""Per-parameter-group learning-rate and weight-decay multipliers (the ``param_groups`` key).

``param_groups`` maps a group name to its multipliers of ``optimizer.lr`` and
``optimizer.weight_decay``, e.g. airbench's BatchNorm biases (64x the learning rate, the same
decoupled decay ``lr x weight_decay``)::

    param_groups:
      norm_bias: {lr_scale: 64.0, weight_decay_scale: 0.015625}

Groups (each parameter belongs to the first group that claims it; the rest keep the optimizer's
values):

* ``norm_bias``: the biases (shifts) of normalisation layers (BatchNorm, GroupNorm, LayerNorm,
  InstanceNorm).

An empty mapping (the default) gives the optimizer one group, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from cnnstress.errors import ConfigError
from cnnstress.settings import Number, check, plain

KEY = "param_groups"
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _norm_biases(module: nn.Module) -> list[nn.Parameter]:
    return [
        m.bias
        for m in module.modules()
        if isinstance(m, _NORMS) and getattr(m, "bias", None) is not None
    ]


#: Group name -> the parameters of a module it selects.
GROUPS: dict[str, Callable[[nn.Module], list[nn.Parameter]]] = {"norm_bias": _norm_biases}
# The factors a group may set, and their rules.
SCALES = {"lr_scale": Number(0.0, low_open=True), "weight_decay_scale": Number(0.0)}


def check_param_groups(settings: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """The settings as ``{group: {"lr_scale": a, "weight_decay_scale": b}}`` (missing scales are
    1), or :class:`ConfigError` for an unknown group or key or a scale out of range."""
    out: dict[str, dict[str, float]] = {}
    for name, scales in dict(plain(settings) or {}).items():
        if name not in GROUPS:
            raise ConfigError(f"unknown key {KEY}.{name}; valid keys of {KEY}: {', '.join(GROUPS)}")
        scales = dict(scales or {})
        if unknown := sorted(set(scales) - set(SCALES)):
            raise ConfigError(
                f"unknown key {KEY}.{name}.{unknown[0]}; valid keys of {KEY}.{name}: "
                f"{', '.join(SCALES)}"
            )
        out[name] = {
            key: check(rule, scales.get(key, 1.0), f"{KEY}.{name}.{key}")
            for key, rule in SCALES.items()
        }
    return out


def parameter_groups(
    module: nn.Module, settings: Mapping[str, Mapping[str, float]], lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer parameter groups of ``module``: one per configured group that selects any
    parameter (``lr x lr_scale``, ``weight_decay x weight_decay_scale``, and ``lr_scale`` kept in
    the group for schedulers that set the rate themselves, e.g. OneCycle), after a first group
    of the remaining parameters with ``lr`` and ``weight_decay`` (``lr_scale`` 1). Frozen
    parameters are included: a parameter frozen for part of the run (``requires_grad``
    toggled) gets no gradient, and the optimizer skips it while it has none."""
    settings = check_param_groups(settings)
    claimed: set[int] = set()
    groups = []
    for name, scales in settings.items():
        params = [p for p in GROUPS[name](module) if id(p) not in claimed]
        claimed |= {id(p) for p in params}
        if params:
            groups.append(
                {
                    "params": params,
                    "lr": lr * scales["lr_scale"],
                    "weight_decay": weight_decay * scales["weight_decay_scale"],
                    "lr_scale": scales["lr_scale"],
                }
            )
    rest = [p for p in module.parameters() if id(p) not in claimed]
    default = {"params": rest, "lr": lr, "weight_decay": weight_decay, "lr_scale": 1.0}
    return [default, *groups] if rest else groups
