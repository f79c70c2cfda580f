"""Compose, instantiate and check training configs.

The override pre-check lives in :mod:`cnnstress.overrides`, the resolvers of ``conf/`` in
:mod:`cnnstress.resolvers`.
"""

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
from cnnstress.resolvers import register_resolvers
from cnnstress.settings import Integer, Number, OneOf, Rule, check


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
    register_resolvers()
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


# Keys of the training config that no constructor checks, with their rules.
TRAINING_RULES: dict[str, Rule] = {
    "optimizer.lr": Number(0.0, low_open=True),
    "optimizer.weight_decay": Number(0.0),
    "loss.label_smoothing": Number(0.0, 1.0, high_open=True),
    "trainer.max_epochs": Integer(1),
    "dataset.batch_size": Integer(1),
    "dataset.eval_batch_size": Integer(1),
    "lr_scaling.rule": OneOf(("none", "linear")),
    "lr_scaling.reference_batch_size": Integer(1),
}


def validate_config(cfg: DictConfig) -> None:
    """Raise one :class:`ConfigError` line for a training config value that cannot work."""
    for key, rule in TRAINING_RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check(rule, value, key)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist")
