"""Train one configured model, test it, and write the run files."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from omegaconf import DictConfig, OmegaConf

from cnnstress.callbacks import TrainSpeed
from cnnstress.config import instantiate, validate_config
from cnnstress.data import CIFARDataModule
from cnnstress.distributed import prepare_hydra_relaunch
from cnnstress.errors import ConfigError
from cnnstress.module import ClassifierModule
from cnnstress.precision import resolve_accelerator, resolve_auto
from cnnstress.run_files import METRICS_FILE, read_metrics, write_metrics, write_predictions
from cnnstress.stress import run_stress

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> CIFARDataModule:
    """The data module of ``cfg.dataset``, augmenting with ``cfg.augmentation``."""
    augmentation = OmegaConf.to_container(cfg.get("augmentation") or {}, resolve=True)
    return instantiate(cfg.dataset, seed=cfg.seed, augmentation=augmentation)


def lr_scale(cfg: DictConfig, effective_batch_size: int) -> float:
    """Factor applied to ``optimizer.lr``: 1, or effective / reference batch size (linear rule)."""
    rule = OmegaConf.select(cfg, "lr_scaling.rule", default="none")
    if rule == "none":
        return 1.0
    if rule == "linear":
        return effective_batch_size / cfg.lr_scaling.reference_batch_size
    raise ConfigError(f"lr_scaling.rule must be one of none, linear; got {rule!r}")


def build_module(cfg: DictConfig, lr: float | None = None) -> ClassifierModule:
    """The LightningModule: ``cfg.model.net`` with ``cfg.optimizer`` (its ``lr`` replaced by
    ``lr`` when given) and ``cfg.scheduler``."""
    resolve_auto(cfg)
    if not isinstance(compile_net := cfg.get("compile", False), bool):
        raise ConfigError(f"compile={compile_net!r} is invalid; valid choices: true, false")
    scheduler = cfg.get("scheduler") or {}
    optimizer = instantiate(cfg.optimizer, **({} if lr is None else {"lr": lr}))
    return ClassifierModule(
        net=instantiate(cfg.model.net),
        optimizer=optimizer,
        scheduler=instantiate(scheduler.schedule) if scheduler.get("schedule") else None,
        scheduler_interval=scheduler.get("interval", "epoch"),
        num_classes=cfg.dataset.num_classes,
        label_smoothing=cfg.loss.label_smoothing,
        channels_last=cfg.get("channels_last", False),
        compile=compile_net,
    )


def build_trainer(cfg: DictConfig, has_val: bool) -> L.Trainer:
    """The Trainer with the configured callbacks and loggers."""
    resolve_auto(cfg)
    callback_cfgs = OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=True)
    checkpoint = callback_cfgs.get("model_checkpoint")
    if checkpoint is not None and not has_val:
        # Without a validation split there is nothing to select on: keep only last.ckpt.
        checkpoint.update(monitor=None, save_top_k=0)
    if not OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True):
        callback_cfgs.pop("progress_bar", None)  # Lightning refuses a bar it was told to disable
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    if not loggers:  # LearningRateMonitor refuses to run without a logger (e.g. `~logger`)
        callback_cfgs.pop("learning_rate_monitor", None)
    callbacks = [instantiate(c) for c in callback_cfgs.values() if c]
    # Without a validation split, switch the validation loop off instead of feeding it nothing.
    no_val = {} if has_val else {"limit_val_batches": 0}
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **no_val)


def cheap_cuda_checks(cfg: DictConfig) -> None:
    """On a CPU run without any CUDA device, let ``torch.cuda.is_available()`` use its cached
    runtime check again.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` when imported, so that CUDA checks cannot
    initialise CUDA before a fork; without a GPU every check then probes NVML anew (~0.4 ms), and
    ``torch.optim`` checks once per step: 1% of a bf16 simple_cnn step on 2 CPU cores. With no
    CUDA device there is nothing a fork could inherit.
    """
    accelerator = resolve_accelerator(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator == "cpu" and not CUDAAccelerator.is_available():
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def _scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in trainer.callback_metrics.items()
        if not isinstance(value, torch.Tensor) or value.numel() == 1
    }


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test, and write ``metrics.json`` and ``predictions.npz`` into the run directory.

    The test uses ``best.ckpt`` when a validation split exists, else the final weights. With
    ``train=false`` the run only tests the weights in ``ckpt_path``. The run files are written
    last, so a run that fails leaves no ``metrics.json``; a run directory that already has one
    is complete and is skipped when ``skip_completed`` is true (re-running a sweep resumes it).
    """
    start = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("skip_completed", False) and (run_dir / METRICS_FILE).is_file():
        log.info("%s already has %s: skipping this completed run", run_dir, METRICS_FILE)
        return read_metrics(run_dir)
    validate_config(cfg)
    resolve_auto(cfg)  # concrete trainer.precision and channels_last, before anything is built
    cheap_cuda_checks(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    trainer = build_trainer(cfg, datamodule.has_val)
    batch = datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches
    scale = lr_scale(cfg, batch)
    module = build_module(cfg, lr=cfg.optimizer.lr * scale)
    prepare_hydra_relaunch(str(run_dir))  # before fit starts the other DDP processes

    if cfg.get("train", True):
        trainer.fit(module, datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        test_ckpt = "best" if datamodule.has_val and trainer.checkpoint_callback else None
    elif cfg.get("ckpt_path"):
        test_ckpt = cfg.ckpt_path
    else:
        raise ConfigError("train=false evaluates a checkpoint: pass ckpt_path=PATH")
    metrics = _scalar_metrics(trainer)  # last epoch's train/ and val/ values
    metrics.update({"train/effective_batch_size": batch, "train/lr": cfg.optimizer.lr * scale})
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
        predictions = module.predictions("test")
        write_predictions(run_dir, predictions.index, predictions.target, predictions.probs)
        write_metrics(run_dir, metrics)
        if cfg.get("stress"):  # after metrics.json: a stress error never un-finishes the run
            names = list(cfg.stress)
            run_stress(run_dir, names, cfg.stress, module.device, net=module.net, cfg=cfg)
        log.info("test/acc=%.4f; run files in %s", metrics.get("test/acc", float("nan")), run_dir)
    return metrics
