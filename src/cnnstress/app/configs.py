"""Where every ``conf/`` file gets its schema, and composing a config the way the entry points do.

:func:`register_configs` stores each configurable object's dataclass in Hydra's ConfigStore
under ``schema/<group>/<name>``; a YAML file of ``conf/`` names its schema first in its
defaults list (``- /schema/augmentation/crop@crop``) and holds only what differs. The entry
points compose and check a config before Hydra creates anything (:func:`precheck`); tests,
benchmarks and notebooks compose one with :func:`compose_config`.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from cnnstress.app.analyze import AnalyzeConfig, GradCAMFigure
from cnnstress.core.augment.pipeline import IMAGE_OPS, MIX_OPS
from cnnstress.core.config import composition_error, project_root, validate
from cnnstress.core.data.datamodule import DatasetConfig
from cnnstress.core.errors import ConfigError, UserError
from cnnstress.core.models.registry import BACKBONES, schema_of
from cnnstress.core.overrides import check_group_choices, check_report_free, parse_overrides
from cnnstress.core.resolvers import register_resolvers
from cnnstress.stress.runner import STRESS_SETTINGS
from cnnstress.train.callbacks import (
    EvaluationCallback,
    FailureModesCallback,
    GradCAMGrids,
    HighConfidenceFailures,
)
from cnnstress.train.callbacks.weight_averaging import WeightAverage
from cnnstress.train.optim import (
    AdamConfig,
    AdamWConfig,
    CosineSchedule,
    MultiStepSchedule,
    OneCycleSchedule,
    SchedulerConfig,
    SGDConfig,
)
from cnnstress.train.training import TrainConfig, TrainerConfig

#: ``schema/<group>/<name>`` -> the dataclass (or instance, for preset values) it stores.
SCHEMAS: dict[str, Any] = {
    "schema/train": TrainConfig,
    "schema/analyze": AnalyzeConfig,
    "schema/dataset": DatasetConfig,
    "schema/trainer": TrainerConfig,
    "schema/optimizer/sgd": SGDConfig,
    "schema/optimizer/adam": AdamConfig,
    "schema/optimizer/adamw": AdamWConfig,
    "schema/scheduler/cosine": SchedulerConfig(interval="epoch", schedule=CosineSchedule()),
    "schema/scheduler/multistep": SchedulerConfig(interval="epoch", schedule=MultiStepSchedule()),
    "schema/scheduler/onecycle": SchedulerConfig(interval="step", schedule=OneCycleSchedule()),
    "schema/scheduler/none": SchedulerConfig(interval="epoch", schedule=None),
    "schema/callbacks/high_conf_failures": HighConfidenceFailures,
    "schema/callbacks/gradcam": GradCAMGrids,
    "schema/callbacks/evaluation": EvaluationCallback,
    "schema/callbacks/failure_modes": FailureModesCallback,
    "schema/callbacks/weight_averaging": WeightAverage,
    "schema/analyze/gradcam": GradCAMFigure,
    **{f"schema/augmentation/{name}": op for name, op in {**IMAGE_OPS, **MIX_OPS}.items()},
    **{f"schema/stress/{name}": settings for name, settings in STRESS_SETTINGS.items()},
    **{
        f"schema/model/{target.rsplit('.', 1)[-1].lower()}": schema_of(target)
        for target in BACKBONES
    },
}


def register_configs() -> None:
    """Store every schema of :data:`SCHEMAS` in Hydra's ConfigStore (idempotent), and register
    the resolvers ``conf/`` uses."""
    register_resolvers()
    store = ConfigStore.instance()
    for path, node in SCHEMAS.items():
        group, _, name = path.rpartition("/")
        store.store(group=group, name=name, node=node)


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)


def _schema_at(cfg: DictConfig | None, key: str) -> type | None:
    node = cfg if not key else OmegaConf.select(cfg, key, default=None) if cfg else None
    return OmegaConf.get_type(node) if isinstance(node, DictConfig) else None


def compose_checked(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` and :func:`validate` it.

    Raises:
        ConfigError: one line for whatever Hydra, OmegaConf or a rule refuses.
    """
    try:
        cfg = _compose(config_name, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        # The schema of the node a bad value belongs to, from the config without the bad one.
        bad = getattr(err.__cause__, "full_key", "") or ""
        rest = [o for o in overrides if not o.lstrip("+~").startswith(f"{bad}=")]

        def schema_of_key(key: str) -> type | None:
            try:
                return _schema_at(_compose(config_name, rest), key)
            except (HydraException, OmegaConfBaseException):
                return None

        raise composition_error(err, schema_of_key) from None
    finally:
        GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    validate(cfg)
    return cfg


def compose_config(
    output_dir: str | Path,
    overrides: Sequence[str] = (),
    config_name: str = "train",
    keep_hydra: bool = False,
) -> DictConfig:
    """Compose and check ``conf/<config_name>.yaml`` outside a Hydra app (tests, benchmarks,
    notebooks): what the entry point would see, writing into ``output_dir``. The Hydra config
    is registered so ``${hydra:...}`` resolves, and is left out of the result unless
    ``keep_hydra``."""
    os.environ.setdefault("CNNSTRESS_ROOT", str(project_root()))
    cfg = compose_checked(config_name, [*overrides, f"hydra.run.dir={output_dir}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        if not keep_hydra:
            del cfg.hydra
    return cfg


def _jobs(args: Sequence[str], limit: int = 64) -> list[list[str]]:
    """The override lists of the jobs a command line would run: one, or the product of its
    sweeps (at most ``limit``; the others are checked when they run)."""
    choices: list[list[str]] = []
    for override in parse_overrides(args):
        choices.append(_values(override))
    return [list(job) for job in itertools.islice(itertools.product(*choices), limit)]


def _values(override: Override) -> list[str]:
    if not override.is_sweep_override():
        return [override.input_line]
    key = override.get_key_element()
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


def _writable(path: Path) -> None:
    """Refuse an output directory that cannot be created: a name too long, or a place where
    nothing can be written (probed with a temporary directory, removed at once)."""
    limit = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    too_long = next((part for part in path.parts if len(part.encode()) > limit), None)
    if too_long is not None:
        raise ConfigError(f"cannot write into {path}: the name {too_long[:40]}... is too long")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot write into {path}: {existing} is not a directory")
    try:
        Path(tempfile.mkdtemp(dir=existing)).rmdir()
    except OSError as err:
        raise ConfigError(f"cannot write into {path}: {err.strerror}") from None


def precheck(config_name: str, args: Sequence[str]) -> None:
    """Check a command line before Hydra creates anything: group choices, every job's config
    (composed and validated), and the output location.

    Raises:
        UserError: one line for the first problem.
    """
    check_group_choices(args)
    jobs = _jobs(args)
    for job in jobs:
        try:
            cfg = compose_checked(config_name, job)
        except UserError as err:
            where = f" (job {' '.join(job)})" if len(jobs) > 1 else ""
            raise type(err)(f"{err}{where}") from None
        multirun = "-m" in args or "--multirun" in args
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        explicit = any(o.split("=", 1)[0] == key for o in job)
        output = Path(OmegaConf.select(cfg, key) if explicit else cfg.paths.log_dir)
        _writable(output)
        if config_name == "analyze" and explicit:
            check_report_free(output)


def main_precheck(config_name: str) -> None:
    """:func:`precheck` of ``sys.argv`` for an entry point (a no-op for ``--help``/``--info``)."""
    from cnnstress.core.errors import exit_on_user_error

    args = sys.argv[1:]
    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i") for a in args):
        return
    exit_on_user_error(precheck, config_name, args)
