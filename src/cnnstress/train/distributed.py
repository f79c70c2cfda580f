"""Make Lightning's DDP process launcher agree with Hydra on the run directory.

Lightning starts ranks 1..N-1 by re-running ``sys.argv`` with
``hydra.run.dir=<HydraConfig.run.dir>`` appended. That breaks in two ways under Hydra:
in a multirun, ``sys.argv`` holds the whole sweep (``-m a=1,2``), so every rank would start the
sweep again, and ``run.dir`` is the single-run pattern, not the job's directory in the sweep.
Before the launcher runs, :func:`prepare_hydra_relaunch` rewrites both so every rank re-runs
exactly this job, in this job's directory.
"""

from __future__ import annotations

import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import read_write


def prepare_hydra_relaunch(output_dir: str) -> None:
    """Point Lightning's relaunch of the other ranks at this job and ``output_dir``.

    A no-op outside Hydra. Safe to call in every process (ranks > 0 already run one job).
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = output_dir
