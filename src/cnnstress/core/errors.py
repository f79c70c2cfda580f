"""User-facing errors: a mistake in a config value or a data path, reported as one clear line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing data); printed without a traceback."""


class ConfigError(UserError):
    """A config value is invalid."""


class DataError(UserError):
    """A dataset root is missing, unreadable or not in a supported layout."""


def exit_on_user_error(fn: Callable[..., T], *args: object) -> T:
    """Call ``fn(*args)``; turn a :class:`UserError` into one line on stderr and exit status 2."""
    try:
        return fn(*args)
    except UserError as err:
        print(f"cnnstress: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_hydra_task(fn: Callable[..., T], *args: object) -> T:
    """Call a Hydra task function ``fn(*args)`` the way its run mode needs.

    A single run turns a :class:`UserError` into one line and exit status 2
    (:func:`exit_on_user_error`). In a multirun every error is written to the job's log (a
    traceback only for unexpected errors) and re-raised, so the sweeper records the job as
    failed and runs the others (``hydra_plugins.cnnstress_sweeper``).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return exit_on_user_error(fn, *args)
    try:
        return fn(*args)
    except UserError as err:
        log.error("cnnstress: error: %s", err)
        raise
    except Exception:
        log.exception("the job failed")
        raise
