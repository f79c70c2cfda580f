"""Checks on config values that no constructor checks, with messages naming the key."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnstress.errors import ConfigError, UserError


def run_dir_of_checkpoint(training: bool, ckpt_path: str | None, default: str) -> str:
    """When resuming training, the run directory of ``<run>/checkpoints/*.ckpt``; else ``default``.

    Used as ``hydra.run.dir`` so that ``ckpt_path=RUN/checkpoints/last.ckpt`` resumes inside
    RUN: the checkpoint callback then keeps its best score and best.ckpt across the restart.
    An evaluation (``train=false``) gets a directory of its own.
    """
    if training and ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).parent.parent)
    return default


if not OmegaConf.has_resolver("run_dir_of_checkpoint"):
    OmegaConf.register_new_resolver("run_dir_of_checkpoint", run_dir_of_checkpoint)


def project_root() -> Path:
    """The project root holding ``conf/``: ``$CNNSTRESS_ROOT``, else this source checkout."""
    return Path(os.environ.get("CNNSTRESS_ROOT", Path(__file__).resolve().parents[2]))


def compose_config(
    output_dir: str | Path,
    overrides: Sequence[str] = (),
    config_name: str = "train",
    keep_hydra: bool = False,
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` outside a Hydra app (tests, benchmarks, notebooks).

    The result is what the entry point would see, writing into ``output_dir``: the Hydra config
    is registered so ``${hydra:...}`` resolves, and is removed from the result unless
    ``keep_hydra``.
    """
    os.environ.setdefault("CNNSTRESS_ROOT", str(project_root()))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=[*overrides, f"hydra.run.dir={output_dir}"],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        if not keep_hydra:
            del cfg.hydra
    return cfg


def check_group_choices(args: Sequence[str], conf_dir: Path | None = None) -> None:
    """Reject a command-line ``group=option`` (or ``group=[a,b]``, ``group=a,b``) naming an
    option ``conf/<group>/`` does not have, listing the valid ones.

    Hydra says so itself for a single option, but for a list (``augmentation=[crop,blur]``) it
    only says it "could not load" the option. Plugin groups (``hydra/...``) are left to Hydra.
    """
    conf_dir = conf_dir or project_root() / "conf"
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        group = conf_dir / key
        if not sep or "/" in key or "." in key or "(" in value or not group.is_dir():
            continue
        options = sorted(path.stem for path in group.glob("*.yaml"))
        for option in value.strip("[] ").split(","):
            if option.strip() not in ("", "null", *options):
                raise ConfigError(
                    f"unknown {key} option {option.strip()!r}; valid choices: {', '.join(options)}"
                )


def instantiate(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that reports a bad config value as a :class:`ConfigError`.

    Hydra wraps every constructor error; a :class:`UserError` from our own code is unwrapped,
    any other (e.g. Lightning rejecting ``trainer.precision=foo``) becomes one readable line.
    """
    try:
        return hydra_instantiate(config, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise ConfigError(" ".join(str(err).split())) from err


def _number(cfg: DictConfig, key: str, default: float) -> float:
    value = OmegaConf.select(cfg, key, default=default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for a training config value that cannot work."""
    if (lr := _number(cfg, "optimizer.lr", 0.0)) <= 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {lr}")
    if (weight_decay := _number(cfg, "optimizer.weight_decay", 0.0)) < 0:
        raise ConfigError(f"optimizer.weight_decay must be >= 0, got {weight_decay}")
    if not 0.0 <= (smoothing := _number(cfg, "loss.label_smoothing", 0.0)) < 1.0:
        raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {smoothing}")
    if (max_epochs := _number(cfg, "trainer.max_epochs", 1)) < 1:
        raise ConfigError(f"trainer.max_epochs must be >= 1, got {max_epochs}")
    for key in ("dataset.batch_size", "dataset.eval_batch_size"):
        if (size := _number(cfg, key, 1)) < 1 or size != int(size):
            raise ConfigError(f"{key} must be a positive integer, got {size:g}")
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist")
