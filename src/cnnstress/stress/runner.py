"""Run named stresses on a run's checkpoint and keep the results in ``stress.json``.

One implementation serves ``analyze.py stress=[...]`` and the end of training
(``train.py stress=[...]``): :func:`run_stress` needs no Hydra state, only the run directory
(or an already built backbone and config) and the stress settings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from cnnstress.core.errors import ConfigError
from cnnstress.core.run_dir import RunDir, write_json
from cnnstress.stress import (
    adversarial,
    background,
    calibration,
    corruption_suite,
    faithfulness,
    shift,
)
from cnnstress.stress.context import StressContext, load_context

StressFn = Callable[[StressContext, Any], dict[str, Any]]

# In the order they run when several are asked for.
STRESSES: dict[str, StressFn] = {
    "corruptions": corruption_suite.evaluate,
    "shift": shift.evaluate,
    "adversarial": adversarial.evaluate,
    "calibration": calibration.evaluate,
    "faithfulness": faithfulness.evaluate,
    "background": background.evaluate,
}
#: Each stress's settings (its config schema, conf/stress/<name>.yaml).
STRESS_SETTINGS: dict[str, type] = {
    "corruptions": corruption_suite.CorruptionSettings,
    "shift": shift.ShiftSettings,
    "adversarial": adversarial.AdversarialSettings,
    "calibration": calibration.CalibrationSettings,
    "faithfulness": faithfulness.FaithfulnessSettings,
    "background": background.BackgroundSettings,
}


def check_names(names: Sequence[str]) -> list[str]:
    """The requested stress names, or :class:`ConfigError` naming the valid ones."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    for name in names:
        if name not in STRESSES:
            raise ConfigError(f"unknown stress {name!r}; valid stresses: {', '.join(STRESSES)}")
    return names


def run_stress(
    run_dir: str | Path,
    names: Sequence[str],
    settings: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    *,
    net: nn.Module | None = None,
    cfg: DictConfig | None = None,
    data_root: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint under the named stresses; update ``stress.json``.

    Args:
        run_dir: the run directory (``run.json`` and its checkpoint; results and
            ``stress_*.png`` are written there).
        names: stresses to run, from :data:`STRESSES` (corruptions, shift, adversarial,
            calibration, faithfulness, background).
        settings: ``{name: settings}`` (the objects of :data:`STRESS_SETTINGS`, e.g. built
            from the composed ``cfg.stress``); a stress missing here runs with its defaults.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``; any other device (e.g. the
            ``mps`` a run trained on) means the CPU (:func:`.context.resolve_device`).
        net, cfg: an already built backbone and the run's config; by default rebuilt from the
            run's checkpoint by :func:`cnnstress.core.checkpoints.load_backbone`.
        data_root: read the test (and validation) split from here instead of the run's
            ``dataset.root``.

    Returns:
        Everything now in ``stress.json``: earlier results of other stresses are kept, those of
        the stresses run now are replaced. Values are numbers (NaN written as null), except a
        few descriptive strings (``<stress>/device``: ``cpu`` or ``cuda``, where it ran;
        ``*/source``, ``*/version``, ``calibration/fit_split``,
        ``faithfulness/method``, ``faithfulness/target_layer``, ``background/fill``,
        ``background/cam/method``, ``background/cam/target_layer``).

    Raises:
        ConfigError: an unknown stress, or settings of the wrong type.
        DataError: missing or malformed data files.
    """
    names = check_names(names)
    settings = dict(settings or {})
    for name, value in settings.items():
        if name not in STRESSES:
            raise ConfigError(f"unknown stress {name!r}; valid stresses: {', '.join(STRESSES)}")
        if not isinstance(value, STRESS_SETTINGS[name]):
            raise ConfigError(f"stress.{name} must be a {STRESS_SETTINGS[name].__name__}")
    ctx = load_context(run_dir, device, net=net, cfg=cfg, data_root=data_root)
    results: dict[str, Any] = {}
    for name in STRESSES:
        if name in names:
            results.update(STRESSES[name](ctx, settings.get(name)))
            results[f"{name}/device"] = ctx.device.type  # where it ran: cpu or cuda
    return write_stress(run_dir, results, replace=names)


def read_stress(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``stress.json`` (empty when it has none)."""
    path = RunDir(run_dir).stress
    return json.loads(path.read_text()) if path.is_file() else {}


def _clean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy and torch scalars
        return _clean(value.item())
    return value


def write_stress(
    run_dir: str | Path, results: Mapping[str, Any], replace: Sequence[str] = ()
) -> dict[str, Any]:
    """Merge ``results`` into ``stress.json`` atomically and return the merged contents.

    Keys of the stresses in ``replace`` (prefix ``<name>/``) are dropped first, so a re-run
    leaves no stale keys.
    """
    merged = {
        k: v for k, v in read_stress(run_dir).items() if k.split("/", 1)[0] not in set(replace)
    }
    merged.update({k: _clean(v) for k, v in results.items()})
    write_json(RunDir(run_dir).stress, merged, sort_keys=True)
    return dict(sorted(merged.items()))
