"""Train one configured model, test it, and write the run files."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from cnnstress.callbacks import TrainSpeed
from cnnstress.config import instantiate, validate_config
from cnnstress.data import CIFARDataModule
from cnnstress.module import ClassifierModule
from cnnstress.run_files import write_metrics, write_predictions

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> CIFARDataModule:
    """The data module of ``cfg.dataset``, augmenting with ``cfg.augmentation``."""
    augmentation = OmegaConf.to_container(cfg.get("augmentation") or {}, resolve=True)
    return instantiate(cfg.dataset, seed=cfg.seed, augmentation=augmentation)


def build_module(cfg: DictConfig) -> ClassifierModule:
    """The LightningModule: ``cfg.model.net`` with ``cfg.optimizer`` and ``cfg.scheduler``."""
    scheduler = cfg.get("scheduler") or {}
    return ClassifierModule(
        net=instantiate(cfg.model.net),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler.schedule) if scheduler.get("schedule") else None,
        scheduler_interval=scheduler.get("interval", "epoch"),
        num_classes=cfg.dataset.num_classes,
        label_smoothing=cfg.loss.label_smoothing,
        channels_last=cfg.get("channels_last", False),
    )


def build_trainer(cfg: DictConfig, has_val: bool) -> L.Trainer:
    """The Trainer with the configured callbacks and loggers."""
    callback_cfgs = OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=True)
    checkpoint = callback_cfgs.get("model_checkpoint")
    if checkpoint is not None and not has_val:
        # Without a validation split there is nothing to select on: keep only last.ckpt.
        checkpoint.update(monitor=None, save_top_k=0)
    callbacks = [instantiate(c) for c in callback_cfgs.values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    # Without a validation split, switch the validation loop off instead of feeding it nothing.
    no_val = {} if has_val else {"limit_val_batches": 0}
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **no_val)


def _scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in trainer.callback_metrics.items()
        if not isinstance(value, torch.Tensor) or value.numel() == 1
    }


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test, and write ``metrics.json`` and ``predictions.npz`` into the run directory.

    The test uses ``best.ckpt`` when a validation split exists, else the final weights. The
    run files are written last, so a run that fails leaves no ``metrics.json``.
    """
    start = time.perf_counter()
    validate_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg, datamodule.has_val)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = _scalar_metrics(trainer)  # last epoch's train/ and val/ values
    test_ckpt = "best" if datamodule.has_val and trainer.checkpoint_callback else None
    trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True)
    metrics.update(_scalar_metrics(trainer))
    speed = next((c for c in trainer.callbacks if isinstance(c, TrainSpeed)), None)
    if speed is not None:
        metrics["train/images_per_sec"] = speed.images_per_sec
    metrics["time/wall_seconds"] = time.perf_counter() - start
    hparams = OmegaConf.to_container(cfg, resolve=True)
    final = {f"hp/{k.replace('/', '_')}": metrics[k] for k in ("test/acc", "test/loss")}
    for logger in trainer.loggers:  # the HPARAMS view: config next to the final test metrics
        logger.log_hyperparams(hparams, final)
    if trainer.is_global_zero:
        run_dir = Path(cfg.paths.output_dir)
        predictions = module.predictions("test")
        write_predictions(run_dir, predictions.index, predictions.target, predictions.probs)
        write_metrics(run_dir, metrics)
        log.info("test/acc=%.4f; run files in %s", metrics.get("test/acc", float("nan")), run_dir)
    return metrics
