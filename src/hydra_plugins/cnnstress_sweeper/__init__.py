"""Hydra sweeper of cnnstress: every job of a multirun runs, whatever happens to the others.

Hydra's basic sweeper stops at the first failed job's exception after its batch (and a job
that exits, as a user error does in a single run, ends the whole sweep). A study of
improvements x seeds should not lose its other runs to one bad job, so this sweeper records
each failed job, lets the rest run, and ends the sweep with one line per failed job (its
directory and the reason) and exit status 1. Failed jobs leave no ``metrics.json``. With a
submitit launcher (SLURM), a job the scheduler ended without a result (time limit, out of
memory, cancelled) is such a failed job too (:mod:`.submitit_jobs`).

It lives in the ``hydra_plugins`` namespace package because Hydra instantiates sweepers only
from there; conf/hydra/default.yaml selects it. It extends Hydra's own basic sweeper (its
override grammar, batching and job numbering) instead of re-implementing them; that class sits
in ``hydra._internal``, which pyproject pins to hydra-core 1.3.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.cnnstress_sweeper.submitit_jobs import is_submitit_launcher, launch_keep_going

log = logging.getLogger(__name__)


def failure_line(job: JobReturn, error: BaseException) -> str:
    """``<job directory>: <reason>`` for a failed job."""
    where = OmegaConf.select(job.hydra_cfg, "hydra.runtime.output_dir", default=None)
    where = where or f"job {OmegaConf.select(job.hydra_cfg, 'hydra.job.num', default='?')}"
    from cnnstress.core.errors import UserError
    from hydra_plugins.cnnstress_sweeper.submitit_jobs import JobEndedWithoutResult

    if isinstance(error, UserError | JobEndedWithoutResult):
        reason = str(error)
    else:
        reason = f"{type(error).__name__}: {error} (traceback in the job's log)"
    return f"{where}: {' '.join(reason.split())}"


def _user_error(error: BaseException) -> BaseException | None:
    """The :class:`~cnnstress.core.errors.UserError` that caused ``error`` (through Hydra's and
    OmegaConf's wrapping exceptions), or None."""
    from cnnstress.core.errors import UserError

    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, UserError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


class KeepGoingSweeper(BasicSweeper):
    """:class:`BasicSweeper` that never stops at a failed job (see the module docstring)."""

    def __init__(self, max_batch_size: int | None = None, params: Any = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.failures: list[str] = []

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        try:  # instantiates the launcher: its settings resolve here (e.g. the SLURM GPUs)
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        except Exception as err:
            user_error = _user_error(err)
            if user_error is None:
                raise
            print(f"cnnstress: error: {user_error}", file=sys.stderr)
            raise SystemExit(2) from None
        launch = self.launcher.launch
        if is_submitit_launcher(self.launcher):  # SLURM: a job lost to the scheduler, too
            launch = functools.partial(launch_keep_going, self.launcher)

        def launch_and_record(
            job_overrides: Sequence[Sequence[str]], initial_job_idx: int
        ) -> Sequence[JobReturn]:
            results = []
            for job in launch(job_overrides, initial_job_idx):
                if job.status == JobStatus.FAILED:
                    try:
                        _ = job.return_value  # raises the job's exception
                    except Exception as error:
                        self.failures.append(failure_line(job, error))
                    job = dataclasses.replace(job, status=JobStatus.COMPLETED, _return_value=None)
                results.append(job)
            return results

        self.launcher.launch = launch_and_record  # type: ignore[method-assign]

    def sweep(self, arguments: list[str]) -> Any:
        """Run every job; then, if any failed, print one line per failed job and exit 1."""
        returns = super().sweep(arguments)
        if self.failures:
            print(f"cnnstress: {len(self.failures)} job(s) of the sweep failed:", file=sys.stderr)
            for line in self.failures:
                print(f"cnnstress: failed: {line}", file=sys.stderr)
            raise SystemExit(1)
        return returns
