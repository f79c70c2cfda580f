"""Output directories of runs, sweeps and analyses, and the resolvers ``conf/`` uses (the
terminal check, and the GPUs per node a SLURM job asks for:
:func:`~cnnstress.core.slurm.slurm_gpus`).

Hydra resolves ``hydra.run.dir`` and ``hydra.sweep.dir`` while it composes the config, more than
once and also for commands that run nothing (``--cfg job``, an analysis composing the training
defaults), so nothing may be created then. The directory names in ``conf/`` are plain patterns
(``outputs/runs/<date>/<time>``); :class:`ClaimOutputDir`, a Hydra callback, claims the
directory when a run or a sweep actually starts: atomically (``os.mkdir``), with a ``-1``,
``-2``, ... suffix when another run started in the same second, and writes the claimed path back
into the config Hydra then uses. A directory the user names (``hydra.run.dir=DIR``) is used as
given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from cnnstress.core.errors import UserError
from cnnstress.core.slurm import slurm_gpus


def claim_unique_dir(path: str | Path) -> str:
    """Create and return ``path``, or ``path-1``, ``path-2``, ... when it exists already.

    The directory is created atomically (``os.mkdir``), so two runs started in the same second
    (two terminals, a script) never share one.

    Raises:
        UserError: the parent cannot be created or written (one line saying where).
    """
    base = Path(path)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in range(10_000):
            candidate = base if n == 0 else base.with_name(f"{base.name}-{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return str(candidate)
    except OSError as err:
        raise UserError(f"cannot create an output directory at {base}: {err.strerror}") from None
    raise UserError(f"cannot find a free output directory next to {base}")


def _set_on_command_line(config: DictConfig, key: str) -> bool:
    overrides = OmegaConf.select(config, "hydra.overrides.hydra", default=[]) or []
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in overrides)


def resumed_run_dir(config: DictConfig) -> str | None:
    """The run directory a training run resumes in: ``RUN`` for
    ``ckpt_path=RUN/checkpoints/<name>.ckpt`` with ``train=true``, else ``None``.

    Resuming there keeps the checkpoint callback's best score and ``best.ckpt`` across the
    restart; an evaluation (``train=false``) gets a directory of its own.
    """
    ckpt = OmegaConf.select(config, "ckpt_path", default=None)
    training = OmegaConf.select(config, "train", default=False)
    if training and ckpt and Path(str(ckpt)).parent.name == "checkpoints":
        return str(Path(str(ckpt)).parent.parent)
    return None


class ClaimOutputDir(Callback):
    """Claim the output directory of a run (``hydra.run.dir``) or a sweep (``hydra.sweep.dir``)
    when it starts (see the module docstring)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _set_on_command_line(config, "hydra.run.dir"):
            return
        directory = resumed_run_dir(config) or claim_unique_dir(config.hydra.run.dir)
        with read_write(config.hydra):
            config.hydra.run.dir = directory

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _set_on_command_line(config, "hydra.sweep.dir"):
            return
        directory = claim_unique_dir(config.hydra.sweep.dir)
        with read_write(config.hydra):
            config.hydra.sweep.dir = directory
            # Every job's config is composed again from the command line and these overrides:
            # this one takes the jobs into the claimed directory.
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={directory}")


def stdout_isatty() -> bool:
    """Whether standard output is a terminal (the progress bar's default)."""
    return sys.stdout.isatty()


RESOLVERS = {"stdout_isatty": stdout_isatty, "slurm_gpus": slurm_gpus}


def register_resolvers() -> None:
    """Register ``${stdout_isatty:}`` and ``${slurm_gpus:...}`` with OmegaConf (no side effects;
    calling it again is a no-op)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=True)
