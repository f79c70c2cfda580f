"""Rebuild a trained backbone from a run directory, without any training code path."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnstress.config import instantiate
from cnnstress.errors import DataError

CONFIG_FILE = Path(".hydra") / "config.yaml"


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved training config a run saved in ``.hydra/config.yaml``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise DataError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    return OmegaConf.load(path)


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

    The network is built from ``model.net`` in the run's config and its weights are loaded
    from ``ckpt`` (default: :func:`checkpoint_path`) with ``weights_only=True``.
    """
    cfg = load_run_config(run_dir)
    net: nn.Module = instantiate(cfg.model.net)
    path = Path(ckpt) if ckpt is not None else checkpoint_path(run_dir)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "net."
    net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return net.to(device).eval(), cfg
