"""User-facing errors: a mistake in a config value or a data path, reported as one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


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
