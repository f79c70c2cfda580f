"""What a run prints: cnnstress's log lines, without library noise the user cannot act on.

Each filter below targets one message where it arises; nothing mutes warnings or logs wholesale.
"""

from __future__ import annotations

import logging
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
