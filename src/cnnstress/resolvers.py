"""The OmegaConf resolvers of ``conf/``: unique run directories, the terminal check, and the
GPUs per node a SLURM job asks for (:func:`cnnstress.slurm.slurm_gpus`).

The entry points and :func:`cnnstress.config.compose_config` call :func:`register_resolvers`
before Hydra composes anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from cnnstress.errors import UserError
from cnnstress.slurm import slurm_gpus


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


RESOLVERS = {
    "run_dir": run_dir,
    "unique_dir": claim_unique_dir,
    "stdout_isatty": stdout_isatty,
    "slurm_gpus": slurm_gpus,
}


def register_resolvers() -> None:
    """Register the resolvers ``conf/`` uses (``${run_dir:...}``, ``${unique_dir:...}``,
    ``${stdout_isatty:}``, ``${slurm_gpus:...}``) with OmegaConf; calling it again is a no-op.

    Cached like Hydra's own ``${now:...}``: a value is resolved once and Hydra copies the cache
    into every job's config, so a job never claims a second directory.
    """
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=True)
