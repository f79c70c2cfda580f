"""What a run prints: cnnstress's log lines, without library noise the user cannot act on.

Each filter below targets one message where it arises; nothing mutes warnings or logs wholesale.
"""

from __future__ import annotations

import logging
import time
import warnings

# Lightning's hint to install its cloud logger, printed at every Trainer construction.
_TIPS = ("litlogger",)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(tip in record.getMessage() for tip in _TIPS)


_DROP_TIPS = _DropTips()


def quiet_library_noise() -> None:
    """Filter the messages a cnnstress user can do nothing about (idempotent).

    * Lightning's "Tip: ... litlogger" line on every Trainer.
    * The ``isinstance(treespec, LeafSpec)`` deprecation that Lightning's ``_pytree`` triggers
      in current PyTorch (Lightning's code, not the user's).
    * Lightning's "does not have many workers" warning: cnnstress keeps every split in memory
      as one uint8 tensor and augments on the device, so worker processes would only add
      overhead (``dataset.num_workers`` stays available).
    * Lightning's own console handler on the ``lightning`` logger when the root logger already
      has handlers (Hydra's): every Lightning line would otherwise be printed twice.
    """
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _DROP_TIPS not in rank_zero.filters:
        rank_zero.addFilter(_DROP_TIPS)
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)", module=r"lightning\..*"
    )
    warnings.filterwarnings("ignore", message=r".*does not have many workers")
    lightning = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning.handlers):
            if type(handler) is logging.StreamHandler:
                lightning.removeHandler(handler)


def clock(seconds: float) -> str:
    """``75.3`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Log lines ``<what> 3/12: <item>, 0:35 elapsed, ETA 2:20`` for a long loop of ``total``
    steps (the corruption suite, the stresses of an analysis): the same in a terminal and in a
    redirected log."""

    def __init__(self, what: str, total: int, logger: logging.Logger) -> None:
        self.what, self.total, self.logger = what, total, logger
        self.done = 0
        self.start = time.perf_counter()

    def step(self, item: str) -> None:
        """Count one finished step and log it."""
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        self.logger.info(
            "%s %d/%d: %s, %s elapsed, ETA %s",
            self.what, self.done, self.total, item, clock(elapsed), clock(eta),
        )  # fmt: skip
