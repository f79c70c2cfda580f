"""Collect each submitit job's outcome on its own, so a job lost to the scheduler is one failed
job rather than the end of the sweep.

Hydra's submitit launcher (``BaseSubmititLauncher.launch``) submits the jobs and then returns
``[job.results()[0] for job in jobs]``: a job that ended without a result (killed at its time
limit, by the out-of-memory killer, cancelled, its node lost) raises there, in the sweep process,
and the sweep ends in a traceback without the other jobs' outcomes. :func:`launch_keep_going`
runs that same ``launch`` with each submitted job wrapped so that such a job becomes a failed
``JobReturn`` carrying :class:`JobEndedWithoutResult` (its state and its log), which
:class:`~hydra_plugins.cnnstress_sweeper.KeepGoingSweeper` reports as one ``failed:`` line.

The wrapping swaps ``submitit.AutoExecutor.map_array`` for the duration of one ``launch`` call:
Hydra's launcher builds its executor inside ``launch``, so there is no other place to reach
the jobs (copying Hydra's ``launch`` instead would fork 40 lines of it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


class JobEndedWithoutResult(Exception):
    """A submitit job ended without a result: the scheduler stopped it (time limit, memory,
    cancellation, a lost node) or it died outside the task (its log says why)."""


def is_submitit_launcher(launcher: Any) -> bool:
    """Whether ``launcher`` is one of Hydra's submitit launchers (SLURM or local)."""
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
    except ImportError:
        return False
    return isinstance(launcher, BaseSubmititLauncher)


def _job_config(launcher: Any, overrides: Sequence[str], number: int) -> Any:
    """The Hydra config of job ``number`` (its directory, for the failure line), or None."""
    try:
        config = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(overrides)
        )
        with open_dict(config.hydra):
            config.hydra.job.num = number
            output_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
            config.hydra.runtime.output_dir = str(output_dir)
        return config
    except Exception:  # a best effort: the failure line then names the job number
        return OmegaConf.create({"hydra": {"job": {"num": number}}})


class _Settled:
    """A submitted job whose ``results()`` returns a failed ``JobReturn`` instead of raising when
    the job ended without a result."""

    def __init__(self, job: Any, launcher: Any, overrides: Sequence[str], number: int) -> None:
        self.job, self.launcher, self.overrides, self.number = job, launcher, overrides, number

    def results(self) -> list[Any]:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            return self.job.results()
        except (UncompletedJobError, FailedJobError) as err:
            log.debug("job %s: %s", self.job.job_id, err)
            error = JobEndedWithoutResult(
                f"the {self.launcher._EXECUTOR} job {self.job.job_id} ended without a result "
                f"(state {self.job.state}: stopped by the scheduler or a signal, e.g. at its "
                f"time limit or out of memory); its error log: {self.job.paths.stderr}"
            )
            log.error("%s", error)
            result = JobReturn(
                overrides=list(self.overrides),
                cfg=None,
                hydra_cfg=_job_config(self.launcher, self.overrides, self.number),
                working_dir="",
                task_name="",
                status=JobStatus.FAILED,
                _return_value=error,
            )
            return [result]


def launch_keep_going(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    """``launcher.launch(job_overrides, initial_job_idx)`` for a submitit launcher, with every
    job's outcome collected on its own (see the module notes)."""
    import submitit

    map_array = submitit.AutoExecutor.map_array

    def settled_map_array(executor: Any, fn: Any, *iterables: Any) -> list[_Settled]:
        jobs = map_array(executor, fn, *iterables)
        overrides, numbers = iterables[0], iterables[2]  # BaseSubmititLauncher's job_params
        triples = zip(jobs, overrides, numbers, strict=True)
        return [_Settled(job, launcher, o, n) for job, o, n in triples]

    # the class's launch: the sweeper replaces the instance's with its own recording wrapper
    with mock.patch.object(submitit.AutoExecutor, "map_array", settled_map_array):
        return type(launcher).launch(launcher, job_overrides, initial_job_idx)
