"""Rebuild a trained backbone from a run directory, without any training code path.

Run directories may come from elsewhere (a colleague's sweep, a download), so nothing in them
is trusted to run code: the record is read as plain data
(:func:`~cnnstress.core.run_dir.read_record`),
the backbone is rebuilt only from cnnstress's own model classes with plain keyword values
(:func:`cnnstress.core.models.registry.build_backbone`), and weights are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnstress.core.errors import DataError
from cnnstress.core.models.registry import build_backbone
from cnnstress.core.run_dir import RunRecord, read_record, tested_checkpoint


def record_config(record: RunRecord) -> DictConfig:
    """A record's config as a DictConfig (safe: :func:`read_record` refused interpolations)."""
    return OmegaConf.create(record.config)


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a finished run ran with (its ``run.json``)."""
    return record_config(read_record(run_dir))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint, read with ``weights_only=True``.

    Raises:
        DataError: not readable, refused by the weights-only unpickler, not a checkpoint
            mapping, or without a ``state_dict`` of tensors.
    """
    try:
        checkpoint: Any = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # UnpicklingError (refused), RuntimeError (not a zip), EOFError...
        reason = " ".join(str(err).split())[:300]
        raise DataError(f"cannot read checkpoint {path}: {type(err).__name__}: {reason}") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise DataError(f"{path} is not a Lightning checkpoint (no state_dict of tensors)")
    return state


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load the backbone weights (``net.*`` keys) of a module ``state`` into ``net``.

    Raises:
        DataError: the weights do not fit ``net`` (another model or width).
    """
    prefix = "net."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(first[1:2]).strip() or first[0]
        raise DataError(f"{path} does not fit the run's model.net: {detail}") from None


def load_backbone(
    run_dir: str | Path, device: str | torch.device = "cpu", ckpt: str | Path | None = None
) -> tuple[nn.Module, DictConfig]:
    """Return the run's backbone (eval mode, on ``device``) and its config.

    The network is built from ``model.net`` in the run's ``run.json`` and its weights are
    loaded from ``ckpt`` (default: the checkpoint the run's test used,
    :func:`cnnstress.core.run_dir.tested_checkpoint`) with ``weights_only=True``.

    Raises:
        DataError: a missing or malformed record or checkpoint, a refused ``model.net``, or
            weights that do not fit.
    """
    record = read_record(run_dir)
    cfg = record_config(record)
    net = build_backbone((record.config.get("model") or {}).get("net"))
    path = Path(ckpt) if ckpt is not None else tested_checkpoint(run_dir, record)
    load_weights(net, load_state_dict(path), path)
    return net.to(device).eval(), cfg
