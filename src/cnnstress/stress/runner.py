"""Evaluate named stresses on a run's checkpoint and keep them in its ``stress.json``.

One implementation serves ``analyze.py stress=[...]`` and the end of training
(``train.py stress=[...]``): :func:`evaluate_run` needs no Hydra state, only the run directory
(or an already built backbone and config) and the stress settings. It computes and records;
drawing the per-run figures is the report's (``cnnstress.report.figures.stress_run``) and
saving them the app's (``cnnstress.app.stress``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from cnnstress.core.checkpoints import load_backbone, load_run_config
from cnnstress.core.errors import ConfigError
from cnnstress.core.run_dir import read_record, tested_checkpoint
from cnnstress.stress import (
    adversarial,
    background,
    calibration,
    corruption_suite,
    faithfulness,
    shift,
)
from cnnstress.stress.context import load_context, resolve_device
from cnnstress.stress.results import StoredStress, StressResult, settings_record, write_stored

StressFn = Callable[..., StressResult]

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


def resolve_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: settings object}`` in :data:`STRESSES` order, ``None`` replaced by the stress's
    defaults, each checked (its type, and its own ``validate`` where it has one).

    Raises:
        ConfigError: an unknown stress, settings of the wrong type, or invalid settings.
    """
    check_names(list(settings))
    out: dict[str, Any] = {}
    for name, schema in STRESS_SETTINGS.items():
        if name not in settings:
            continue
        value = settings[name] if settings[name] is not None else schema()
        if not isinstance(value, schema):
            raise ConfigError(f"stress.{name} must be a {schema.__name__}")
        if hasattr(value, "validate"):
            value.validate(f"stress.{name}")
        out[name] = value
    return out


def _scalar(value: Any) -> Any:
    """A numpy or torch scalar as the Python number ``stress.json`` can hold."""
    return value.item() if hasattr(value, "item") else value


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:  # a checkpoint outside the run directory: its full path
        return str(path.resolve())


def evaluate_run(
    run_dir: str | Path,
    settings: Mapping[str, Any],
    device: str | torch.device = "cpu",
    *,
    computed_by: str,
    net: nn.Module | None = None,
    cfg: DictConfig | None = None,
    data_root: str | Path | None = None,
) -> dict[str, tuple[StoredStress, StressResult]]:
    """Evaluate a run's checkpoint under the stresses named in ``settings``; keep each in the
    run's ``stress.json`` (:func:`~cnnstress.stress.results.write_stored`: the entries of the
    stresses run now are replaced, the others kept).

    Args:
        run_dir: the run directory (``run.json``, its checkpoint, ``stress.json``).
        settings: ``{name: settings}``, names from :data:`STRESSES`, values the objects of
            :data:`STRESS_SETTINGS` (e.g. built from the composed ``cfg.stress``), ``None``
            for a stress's defaults. They run in :data:`STRESSES` order.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``; any other device (e.g. the
            ``mps`` a run trained on) means the CPU (:func:`.context.resolve_device`).
        computed_by: who asks, recorded with each entry (``train.py`` or ``analyze.py``).
        net, cfg: an already built backbone and the run's config; by default rebuilt from the
            run's tested checkpoint (:func:`cnnstress.core.run_dir.tested_checkpoint`). The
            entries' ``checkpoint`` is that file relative to the run directory, or ``""`` when
            the caller passed ``net``.
        data_root: read the test (and validation) split from here instead of the run's
            ``dataset.root``.

    Returns:
        ``{name: (stored entry, result)}`` of the stresses run now; the result carries the
        arrays of the per-run figures, which ``stress.json`` does not keep.

    Raises:
        ConfigError: an unknown stress, or settings of the wrong type.
        DataError: missing or malformed data files, record or checkpoint.
    """
    used = resolve_settings(settings)
    device = resolve_device(device)
    run = Path(run_dir)
    checkpoint = ""
    if net is None:
        path = tested_checkpoint(run, read_record(run))
        checkpoint = _relative(path, run)
        net, loaded_cfg = load_backbone(run, device, path)
        cfg = cfg if cfg is not None else loaded_cfg
    elif cfg is None:
        cfg = load_run_config(run)
    ctx = load_context(run, device, net=net, cfg=cfg, data_root=data_root)
    out: dict[str, tuple[StoredStress, StressResult]] = {}
    for name, value in used.items():
        result = STRESSES[name](ctx, value)
        stored = StoredStress(
            name=name,
            settings=settings_record(value),
            computed_by=computed_by,
            time=datetime.now().astimezone().isoformat(timespec="seconds"),
            device=ctx.device.type,
            checkpoint=checkpoint,
            info={k: _scalar(v) for k, v in result.info.items()},
            measurements=tuple(result.measurements),
        )
        # kept as soon as computed: a later stress's error loses none of the earlier ones
        write_stored(run, {name: stored})
        out[name] = (stored, result)
    return out
