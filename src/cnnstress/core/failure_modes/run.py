"""Failure modes of a model on its test split: at the end of training (the callback) or for a
finished run from its checkpoint (the analysis, for runs trained before the callback existed).

Both go through :func:`compute_failure_modes`: one forward pass of the *errors* only (their
embeddings, :func:`~cnnstress.core.failure_modes.embeddings.embed`), their CAMs when asked
(:func:`cnnstress.core.cam.compute_heatmaps` of the predicted class, the share outside the centre by
:func:`cnnstress.core.regions.outside_share`, the background stress's definition), the attributes of
every test image, and :func:`~cnnstress.core.failure_modes.modes.find_failure_modes`. Errors are
those of the run's predictions (with test-time augmentation where the run used it); embeddings
and CAMs are the plain model's, as everywhere in cnnstress.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from cnnstress.core.cam import SALIENCY, compute_heatmaps, resolve_layer, run_cam_settings
from cnnstress.core.checkpoints import load_backbone
from cnnstress.core.data import class_names, load_split
from cnnstress.core.data.label_errors import LabelErrors, load_label_errors
from cnnstress.core.data.normalize import Normalize
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.failure_modes.embeddings import HEAD, describe_layer, embed, head_layer
from cnnstress.core.failure_modes.modes import FailureModes, find_failure_modes, from_json
from cnnstress.core.failure_modes.settings import FailureModeSettings, settings_from
from cnnstress.core.plots.canvas import save_png
from cnnstress.core.regions import centre_mask, outside_share
from cnnstress.core.run_dir import RunDir, read_json, read_predictions, run_threshold, write_json


def check_model(net: nn.Module, settings: FailureModeSettings) -> None:
    """One :class:`ConfigError` line when ``settings`` name a layer ``net`` lacks (at start-up)."""
    key = FailureModeSettings.KEY
    if settings.embedding_layer == HEAD:
        try:
            head_layer(net)
        except ValueError as err:
            raise ConfigError(f"{key}.embedding_layer=head: {err}") from None
    else:
        resolve_layer(net, settings.embedding_layer, f"{key}.embedding_layer")
    if settings.cam and settings.cam_layer is not None:
        resolve_layer(net, settings.cam_layer, f"{key}.cam_layer")


def cam_settings(settings: FailureModeSettings, cfg: Any = None) -> tuple[str, str | None]:
    """The CAM method and layer: the settings', else the run's (``cfg``), else gradcam.

    Raises:
        ConfigError: a CAM method other than saliency without a target layer.
    """
    key = FailureModeSettings.KEY
    if cfg is not None:
        method, layer = run_cam_settings(
            cfg, settings.cam_method, settings.cam_layer, key=f"{key}.cam_method"
        )
    else:
        method, layer = settings.cam_method or "gradcam", settings.cam_layer
    if method != SALIENCY and layer is None:
        raise ConfigError(f"{key}.cam_layer is required for cam_method={method!r} (or cam=false)")
    return method, layer


def cam_outside_shares(
    net: nn.Module,
    images: torch.Tensor,
    explained: np.ndarray,
    method: str,
    layer: str | None,
    centre_size: int,
    *,
    channels_last: bool = False,
    batch_size: int = 64,
) -> np.ndarray:
    """``(N,)`` share of each image's CAM mass outside the centre (NaN for a constant map).

    ``images``: normalised float ``(N, 3, H, W)``; ``explained``: ``(N,)`` the class each map
    explains. The model is left as found (:func:`compute_heatmaps`).
    """
    if images.shape[0] == 0:
        return np.zeros(0)
    maps = compute_heatmaps(
        net,
        images,
        torch.as_tensor(explained, dtype=torch.long),
        method,
        layer,
        channels_last=channels_last,
        batch_size=batch_size,
    )
    height, width = maps.shape[-2:]
    mask = centre_mask(height, width, centre_size, key=f"{FailureModeSettings.KEY}.centre_size")
    return outside_share(maps, mask).numpy()


def compute_failure_modes(
    net: nn.Module,
    images: torch.Tensor,
    index: np.ndarray,
    target: np.ndarray,
    probs: np.ndarray,
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    classes: tuple[str, ...] | list[str],
    settings: FailureModeSettings,
    label_errors: LabelErrors | None = None,
    official_index: bool = True,
    cam: tuple[str, str | None] | None = None,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> FailureModes:
    """:class:`FailureModes` of ``net`` on uint8 ``images`` ``(N, 3, H, W)`` (row-aligned with
    the predictions ``index``, ``target``, ``probs``).

    ``normalize`` maps uint8 images to the network's input; ``cam``: ``(method, layer)`` or
    None for no CAM. Only the errors are fed to the network (one forward pass), and only the
    ``cam_per_mode`` most typical members of each mode get a CAM.
    """
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    error_rows = np.flatnonzero(pred != np.asarray(target))
    x = normalize(images[torch.from_numpy(error_rows)].to(device))
    embeddings = embed(
        net,
        x,
        settings.embedding_layer,
        batch_size=settings.batch_size,
        channels_last=channels_last,
        key=f"{FailureModeSettings.KEY}.embedding_layer",
    )
    cam_outside = None
    if cam is not None:
        # the modes' most typical members only (cam_per_mode each): CAMs cost a backward pass
        at = np.full(index.shape[0], -1, np.int64)
        at[error_rows] = np.arange(error_rows.size)

        def cam_outside(rows: np.ndarray) -> np.ndarray:
            return cam_outside_shares(
                net,
                x[torch.from_numpy(at[rows])],
                pred[rows],
                cam[0],
                cam[1],
                settings.centre_size,
                channels_last=channels_last,
            )

    return find_failure_modes(
        index,
        target,
        probs,
        images,
        embeddings,
        error_rows,
        classes=classes,
        settings=settings,
        label_errors=label_errors,
        official_index=official_index,
        cam_outside=cam_outside,
        embedding_layer=describe_layer(net, settings.embedding_layer),
        cam_method=None if cam is None else cam[0],
        cam_layer=None if cam is None else cam[1],
    )


def failure_modes_of_run(
    run_dir: str | Path,
    settings: FailureModeSettings | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[FailureModes, torch.Tensor, np.ndarray]:
    """The failure modes of a finished run, from its checkpoint and ``predictions.npz``.

    The backbone is rebuilt with :func:`cnnstress.core.checkpoints.load_backbone` (cnnstress models
    only, ``weights_only=True``); the test images are read from the run's recorded data root.
    ``settings``: the knobs; by default the run's own (:func:`run_settings`), a mapping
    overrides some of them (checked).

    Returns:
        the modes, the uint8 test images ``(N, 3, H, W)`` row-aligned with the predictions and
        their ``index`` ``(N,)`` (for :func:`write_failure_modes`' figure).

    Raises:
        DataError: a missing or unreadable checkpoint, predictions file or test split.
        ConfigError: bad settings.
    """
    net, cfg = load_backbone(run_dir, device=device)
    if not isinstance(settings, FailureModeSettings):
        settings = run_settings(cfg, settings)
    check_model(net, settings)
    try:
        preds = read_predictions(run_dir)
    except DataError as err:
        raise DataError(f"{run_dir}: {err}") from None
    dataset = str(cfg.dataset.name)
    split = load_split(str(cfg.dataset.root), dataset, "test")
    index = np.asarray(preds["index"], np.int64)
    official = bool(preds.get("official_index", False))
    if not bool(split.contains(index).all()):
        raise DataError(f"{run_dir}: predictions.npz has indices that are not in the test split")
    images = split.images[split.rows(index)]
    errors = load_label_errors(dataset) if official else None
    cam = cam_settings(settings, cfg) if settings.cam else None
    result = compute_failure_modes(
        net,
        images,
        index,
        preds["target"],
        preds["probs"],
        normalize=Normalize.of(cfg.dataset).to(device),
        classes=class_names(dataset),
        settings=settings,
        label_errors=errors,
        official_index=official,
        cam=cam,
        device=device,
    )
    return result, images, index


def run_settings(cfg: Any, overrides: Mapping[str, Any] | None = None) -> FailureModeSettings:
    """The knobs a run's recorded config gives its failure modes: its ``callbacks.failure_modes``
    (when it has one; else the defaults), at its confidence threshold
    (:func:`cnnstress.core.run_dir.run_threshold`), with ``overrides`` on top; checked (one
    :class:`ConfigError` line)."""
    config = OmegaConf.to_container(cfg, resolve=False) if not isinstance(cfg, dict) else cfg
    recorded = (config.get("callbacks") or {}).get("failure_modes")
    values: dict[str, Any] = dict(recorded) if isinstance(recorded, Mapping) else {}
    values.setdefault("threshold", run_threshold(config))
    return settings_from({**values, **dict(overrides or {})})


def write_failure_modes(
    result: FailureModes,
    run: RunDir | str | Path,
    figure: np.ndarray | None = None,
) -> list[Path]:
    """Write ``failure_modes.json`` (and ``failure_modes.png`` when ``figure`` is given, an RGB
    array from :func:`cnnstress.core.plots.failure_modes.failure_modes_figure`) into a run
    directory."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    written = [write_json(run.failure_modes, result.to_json())]
    if figure is not None:
        written.append(save_png(figure, run.failure_modes_figure))
    return written


def read_failure_modes(run_dir: str | Path) -> FailureModes | None:
    """A run's ``failure_modes.json`` (None when it has none). Read as plain data, checked
    field by field (:func:`~cnnstress.core.failure_modes.modes.from_json`); never executed.

    Raises:
        DataError: the file is unreadable or malformed.
    """
    path = RunDir(run_dir).failure_modes
    if not path.is_file():
        return None
    return from_json(read_json(path), str(path))
