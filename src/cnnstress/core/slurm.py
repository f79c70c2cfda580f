"""Running on SLURM through Hydra's submitit launcher: GPUs per node, requeue and resume.

``conf/hydra/launcher/slurm.yaml`` asks SLURM for ``trainer.devices`` GPUs and as many tasks per
node (:func:`slurm_gpus`: Lightning's SLURM environment runs one DDP process per task).

Requeue. submitit asks SLURM for a signal before the time limit (``--signal=USR2@<delay>``,
``hydra.launcher.signal_delay_s``) and handles it in the job: it pickles the job again and
requeues it (``scontrol requeue``) as long as ``hydra.launcher.max_num_timeout`` allows (Hydra's
default is 0: a job that reaches its limit is not requeued but fails). Lightning's own SLURM
requeue listens for USR1 (``SLURMEnvironment.requeue_signal``) and installs its handler only on
a signal that has none, so under submitit it never fires and the two never both requeue. A
requeued job starts the same Hydra job again in the same directory: :func:`requeued_checkpoint`
then resumes it from the ``last.ckpt`` of its last finished epoch (an epoch boundary, so the
run ends exactly as an uninterrupted one; the unfinished epoch is redone) instead of starting
over.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import ListConfig

from cnnstress.core.errors import ConfigError

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def slurm_gpus(devices: Any) -> int:
    """GPUs (and tasks) per node to ask SLURM for, from ``trainer.devices``: an integer as it
    is, a list (``[0,1]``, ``"0,1"``) by its length.

    Raises:
        ConfigError: ``auto`` or ``-1``: how many GPUs a node will have is not known before the
            job runs.
    """
    if isinstance(devices, ListConfig | Sequence) and not isinstance(devices, str):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([part for part in text.split(",") if part.strip()])
    if text.lower() not in ("auto", "-1"):
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count >= 1:
            return count
    raise ConfigError(
        f"trainer.devices={devices} cannot tell SLURM how many GPUs to ask for: pass "
        "trainer.devices=N (GPUs per node), or hydra.launcher.gpus_per_node=N and "
        "hydra.launcher.tasks_per_node=N to keep trainer.devices=auto"
    )


def restart_count() -> int:
    """How often SLURM has restarted (requeued) this job: ``SLURM_RESTART_COUNT``, 0 outside
    SLURM or on the first run."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def requeued_checkpoint(run_dir: str | Path) -> str | None:
    """``run_dir/checkpoints/last.ckpt`` when this is a requeued SLURM job that left one, else
    None (a first run, or a requeue before the first epoch ended: it starts afresh)."""
    if restart_count() < 1:
        return None
    path = Path(run_dir) / LAST_CHECKPOINT
    if not path.is_file():
        return None
    log.info("requeued SLURM job (restart %d): resuming from %s", restart_count(), path)
    return str(path)
