"""What a run is: the part of its resolved config that determines its results.

A run's *results* are its trained weights and its test predictions. Its *identity* is its
resolved config without the keys that cannot change them: where it writes (``paths``, Hydra,
loggers, callback folders), how it reports (progress bar, logging interval, the stress-test
callbacks and their confidence threshold, the ``improvement`` label), how data is moved
(workers, pinned memory, splits kept on the device, downloads per node), post-hoc stresses, and
the skip/resume switches. The
``fingerprint`` is a hash of the identity.

Two uses: a finished run directory is only reused (``skip_completed``) by a run of the same
fingerprint, and the analysis groups runs whose identities differ only in the seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

# Dotted keys (a key and everything below it) that are not part of a run's identity.
NOT_IDENTITY = (
    "hydra",
    "paths",
    "logger",
    "stress",
    "improvement",
    "confidence_threshold",
    "skip_completed",
    "dataset.num_workers",
    "dataset.pin_memory",
    "dataset.download",
    "dataset.on_device",
    "dataset.prepare_data_per_node",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)
# Callbacks only observe a run, except the checkpoint callback, which picks the tested weights,
# and weight averaging, which makes them.
IDENTITY_CALLBACKS = ("model_checkpoint", "weight_averaging")
# Keys that may differ between the seeds of one group.
SEED_KEYS = ("seed",)
# Keys a constrained improvement may change (everything else must equal the reference's).
IMPROVEMENT_KEYS = ("augmentation", "module.loss")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values; an empty mapping is a value."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or lies below one."""
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat identity of a resolved config (plain containers, e.g. ``OmegaConf.to_container``).

    ``ckpt_path`` belongs to the identity only of an evaluation (``train=false``): resuming a
    training run from its checkpoint gives exactly the results of an uninterrupted one.
    """
    flat = flatten(config)
    kept = {}
    for key, value in flat.items():
        if under(key, NOT_IDENTITY) or key.endswith(".dirpath"):
            continue
        if key.startswith("callbacks.") and not under(
            key, tuple(f"callbacks.{c}" for c in IDENTITY_CALLBACKS)
        ):
            continue
        if key == "ckpt_path" and config.get("train", True):
            continue
        kept[key] = value
    return dict(sorted(kept.items()))


def fingerprint(identity: Mapping[str, Any]) -> str:
    """A short stable hash (16 hex digits) of a flat identity."""
    text = json.dumps(dict(identity), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between flat mappings ``a`` and ``b``: ``{key: (a, b)}``.

    A key missing on one side shows as ``"<unset>"`` there.
    """
    missing = "<unset>"
    return {
        key: (a.get(key, missing), b.get(key, missing))
        for key in sorted(set(a) | set(b))
        if a.get(key, missing) != b.get(key, missing)
    }


def describe(
    diffs: Mapping[str, tuple[Any, Any]], limit: int = 6, keys: Sequence[str] | None = None
) -> str:
    """``"trainer.max_epochs: 1 -> 2, seed: 1 -> 2"`` for the ``keys`` of ``diffs`` (all by
    default), at most ``limit`` of them, then a count."""
    shown = list(diffs) if keys is None else list(keys)
    parts = [f"{k}: {_show(diffs[k][0])} -> {_show(diffs[k][1])}" for k in shown[:limit]]
    if len(shown) > limit:
        parts.append(f"and {len(shown) - limit} more")
    return ", ".join(parts)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)
