"""The backbones a run record may name, and how one is rebuilt from a record.

Run directories are shared between people, so their ``run.json`` is untrusted input: the
analysis never hands a ``_target_`` string from one to a locator (Hydra's ``_locate`` walks
module attributes, so ``cnnstress.core.models.simple_cnn.torch.load`` is ``torch.load``). A backbone
is rebuilt only when its ``_target_`` is exactly one of :data:`BACKBONES` and every other value
is a plain number, string, boolean or list of those.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from cnnstress.core.errors import DataError, UserError
from cnnstress.core.models.airbench import fast_net
from cnnstress.core.models.preact_resnet import preact_resnet18
from cnnstress.core.models.resnet import resnet18
from cnnstress.core.models.simple_cnn import SimpleCNN
from cnnstress.core.models.wide_resnet import wide_resnet

#: ``model.net._target_`` -> constructor, for every backbone in ``conf/model/``.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "cnnstress.core.models.SimpleCNN": SimpleCNN,
    "cnnstress.core.models.resnet18": resnet18,
    "cnnstress.core.models.preact_resnet18": preact_resnet18,
    "cnnstress.core.models.wide_resnet": wide_resnet,
    "cnnstress.core.models.fast_net": fast_net,
}
#: The same backbones as runs recorded them before the models moved to ``cnnstress.core``.
RECORDED_BEFORE = {f"cnnstress.models.{t.rsplit('.', 1)[1]}": t for t in BACKBONES}


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return isinstance(value, list | tuple) and all(
        v is None or isinstance(v, bool | int | float | str) for v in value
    )


def build_backbone(spec: Mapping[str, Any]) -> nn.Module:
    """The backbone a recorded ``model.net`` describes (``_target_`` plus keyword values).

    Raises:
        DataError: ``spec`` is not a mapping, names a constructor outside :data:`BACKBONES`,
            holds a value that is not plain (a nested mapping, ``_args_``, ...), or the
            constructor rejects the values.
    """
    if not isinstance(spec, Mapping):
        raise DataError("the run's config has no model.net mapping to rebuild the backbone from")
    target = spec.get("_target_")
    target = RECORDED_BEFORE.get(target, target) if isinstance(target, str) else target
    if not isinstance(target, str) or target not in BACKBONES:
        raise DataError(
            f"refusing to rebuild model.net with _target_={target!r}: only cnnstress's own "
            f"backbones are rebuilt from a run directory ({', '.join(BACKBONES)})"
        )
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    for key, value in kwargs.items():
        if not isinstance(key, str) or key.startswith("_") or not _plain(value):
            raise DataError(
                f"refusing to rebuild model.net: {key}={value!r} is not a plain keyword value"
            )
    try:
        return BACKBONES[target](**kwargs)
    except (TypeError, ValueError, UserError) as err:
        raise DataError(f"cannot rebuild {target} from the run's model.net: {err}") from None


def schema_of(target: str) -> type:
    """The config schema of backbone ``target`` (a key of :data:`BACKBONES`): a dataclass with
    ``_target_`` and one field per constructor argument, with its default and its annotated
    rule, so the constructor's signature is the only place they are written."""
    constructor = BACKBONES[target]
    function = constructor.__init__ if inspect.isclass(constructor) else constructor
    hints = typing.get_type_hints(function, include_extras=True)
    fields: list[tuple[str, Any, Any]] = [("_target_", str, dataclasses.field(default=target))]
    for name, parameter in inspect.signature(constructor).parameters.items():
        default = parameter.default
        if isinstance(default, tuple):  # OmegaConf keeps lists; a tuple default is immutable
            default = dataclasses.field(default_factory=lambda d=default: list(d))
        elif default is inspect.Parameter.empty:
            default = dataclasses.MISSING
        fields.append((name, hints.get(name, Any), default))
    name = f"{target.rsplit('.', 1)[-1]}_config".title().replace("_", "")
    return dataclasses.make_dataclass(name, fields)
