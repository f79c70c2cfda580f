"""Compose and check configs: the override pre-check, instantiation, value checks, resolvers."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import InstantiationException, OverrideParseException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnstress.errors import ConfigError, UserError
from cnnstress.settings import Integer, Number, OneOf, Rule, check


def claim_unique_dir(path: str) -> str:
    """Create and return ``path``, or ``path-1``, ``path-2``, ... when it exists already.

    The directory is created atomically (``os.mkdir``), so two runs started in the same second
    (two terminals, a script) never share a run directory.
    """
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        candidate = base if n == 0 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return str(candidate)
    raise UserError(f"cannot find a free run directory next to {base}")


def run_dir(training: bool, ckpt_path: str | None, pattern: str) -> str:
    """``hydra.run.dir``: when resuming training, the run directory of
    ``<run>/checkpoints/*.ckpt``; else a new unique directory from ``pattern``.

    ``ckpt_path=RUN/checkpoints/last.ckpt`` resumes inside RUN: the checkpoint callback then
    keeps its best score and best.ckpt across the restart. An evaluation (``train=false``)
    gets a directory of its own.
    """
    if training and ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).parent.parent)
    return claim_unique_dir(pattern)


def stdout_isatty() -> bool:
    """Whether standard output is a terminal (the progress bar's default)."""
    return sys.stdout.isatty()


# Cached like Hydra's own ${now:...}: the value is resolved once and Hydra copies the cache
# into every job's config, so a job never claims a second directory.
for _name, _resolver in {
    "run_dir": run_dir,
    "unique_dir": claim_unique_dir,
    "stdout_isatty": stdout_isatty,
}.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver, use_cache=True)


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


def parse_overrides(args: Sequence[str]) -> list[Override]:
    """Parse command-line overrides with Hydra's own parser (flags such as ``-m`` and the
    values of ``--cfg job`` are left out: only ``key=value``-style arguments are parsed)."""
    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            continue
        try:
            parsed += parser.parse_overrides([arg])
        except OverrideParseException as err:
            message = " ".join(str(err).split())
            raise ConfigError(f"cannot parse override {arg!r}: {message}") from None
    return parsed


def override_values(override: Override) -> list[Any]:
    """The values an override sets: one, or each value of a sweep (``a,b``, ``[],[a,b]``)."""
    if override.is_delete():
        return []
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]


def check_group_choices(args: Sequence[str], conf_dir: Path | None = None) -> None:
    """Reject a command-line ``group=option`` naming an option ``conf/<group>/`` does not have
    (also inside lists and sweeps: ``augmentation=[crop,blur]``, ``model=a,b``), listing the
    valid ones.

    Hydra says so itself for a single option, but for a list it only says it "could not load"
    the option. Plugin groups (``hydra/...``) are left to Hydra.
    """
    conf_dir = conf_dir or project_root() / "conf"
    for override in parse_overrides(args):
        key = override.key_or_group
        group = conf_dir / key
        if "/" in key or "." in key or not group.is_dir():
            continue
        options = sorted(path.stem for path in group.glob("*.yaml"))
        for value in override_values(override):
            for option in value if isinstance(value, list) else [value]:
                if option is not None and str(option) not in options:
                    raise ConfigError(
                        f"unknown {key} option {option!r}; valid choices: {', '.join(options)}"
                    )


def overrides_changing(overrides: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """The overrides (as typed) that set a key or group at or below one of ``prefixes``."""
    return [
        o.input_line
        for o in parse_overrides(overrides)
        if any(o.key_or_group == p or o.key_or_group.startswith(f"{p}.") for p in prefixes)
    ]


def improvement_changes(
    cfg: DictConfig, overrides: Sequence[str], keys: Sequence[str], config_name: str = "train"
) -> list[str]:
    """The command-line overrides that make ``cfg``'s ``keys`` (augmentation, loss) differ from
    what its improvement sets; empty when the run is exactly its improvement.

    Composes ``config_name`` again without the overrides touching ``keys`` and compares: so
    ``improvement=baseline augmentation=[crop,flip]`` (the baseline's own list) is exact.
    """
    touching = overrides_changing(overrides, keys)
    if not touching:
        return []
    rest = [o for o in overrides if o not in touching]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app
        canonical = compose(config_name=config_name, overrides=rest)
    else:
        with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
            canonical = compose(config_name=config_name, overrides=rest)

    def section(config: DictConfig, key: str) -> Any:
        node = OmegaConf.select(config, key, default=None)
        return OmegaConf.to_container(node, resolve=True) if node is not None else None

    same = all(section(canonical, k) == section(cfg, k) for k in keys)
    return [] if same else touching


def drop_unlisted_ops(cfg: DictConfig) -> list[str]:
    """Remove from ``cfg.augmentation`` the ops that are not in the augmentation list but whose
    parameters a recipe or an override set; return their names.

    An op of the list always carries every parameter of its ``conf/augmentation`` file. A node
    with only some of them was created by a setting such as the fast recipe's
    ``augmentation.crop.padding: 2`` in a run whose list does not have the op
    (``experiment=fast_cifar10 augmentation=[]``): it must not add the op with default values.
    """
    from cnnstress.augment import IMAGE_OPS, MIX_OPS  # torch-heavy: only when needed

    node = cfg.get("augmentation")
    if not isinstance(node, DictConfig):
        return []
    ops = {**IMAGE_OPS, **MIX_OPS}
    dropped = [
        name
        for name, params in node.items()
        if name in ops
        and isinstance(params, DictConfig)
        and not set(inspect.signature(ops[name]).parameters) <= set(params)
    ]
    with open_dict(cfg):
        for name in dropped:
            del cfg.augmentation[name]
    return dropped


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
