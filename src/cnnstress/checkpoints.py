"""Rebuild a trained backbone from a run directory, without any training code path.

Run directories may come from elsewhere (a colleague's sweep, a download), so nothing in them
is trusted to run code: the backbone is rebuilt only from cnnstress's own model classes, and
weights are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnstress.config import instantiate
from cnnstress.errors import DataError
from cnnstress.run_files import RUN_FILE, read_run_record

# The only constructors a run's config may name for its backbone (and anything nested in it).
TRUSTED_MODEL_PREFIX = "cnnstress.models."


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a finished run ran with (its ``run.json``)."""
    try:
        return OmegaConf.create(read_run_record(run_dir)["config"])
    except FileNotFoundError:
        raise DataError(f"{run_dir} has no {RUN_FILE}: not a finished cnnstress run") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{run_dir}/{RUN_FILE} is unreadable: {err}") from None


def _targets(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [str(node["_target_"])] if "_target_" in node else []
        return found + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []


def build_backbone(cfg: DictConfig) -> nn.Module:
    """Instantiate ``cfg.model.net``, refusing any ``_target_`` outside cnnstress's models.

    Raises:
        DataError: the config names another constructor (it could run arbitrary code).
    """
    net_cfg = OmegaConf.select(cfg, "model.net", default=None)
    if not isinstance(net_cfg, DictConfig):
        raise DataError("the run's config has no model.net to rebuild the backbone from")
    container = OmegaConf.to_container(net_cfg, resolve=True)
    for target in _targets(container):
        if not target.startswith(TRUSTED_MODEL_PREFIX):
            raise DataError(
                f"refusing to build model.net with _target_={target}: only "
                f"{TRUSTED_MODEL_PREFIX}* backbones are rebuilt from a run directory"
            )
    return instantiate(container)


def checkpoint_path(run_dir: str | Path) -> Path:
    """``checkpoints/best.ckpt`` when the run selected one on validation, else ``last.ckpt``."""
    folder = Path(run_dir) / "checkpoints"
    for name in ("best.ckpt", "last.ckpt"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no checkpoint in {folder} (expected best.ckpt or last.ckpt)")


def load_backbone(
    run_dir: str | Path, device: str | torch.device = "cpu", ckpt: str | Path | None = None
) -> tuple[nn.Module, DictConfig]:
    """Return the run's backbone (eval mode, on ``device``) and its config.

    The network is built from ``model.net`` in the run's ``run.json`` (cnnstress models only,
    :func:`build_backbone`) and its weights are loaded from ``ckpt`` (default:
    :func:`checkpoint_path`) with ``weights_only=True``.
    """
    cfg = load_run_config(run_dir)
    net = build_backbone(cfg)
    path = Path(ckpt) if ckpt is not None else checkpoint_path(run_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except (OSError, RuntimeError, KeyError, EOFError) as err:
        raise DataError(f"cannot read checkpoint {path}: {err}") from None
    prefix = "net."
    net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return net.to(device).eval(), cfg
