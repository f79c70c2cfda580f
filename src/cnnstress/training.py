"""Train one configured model, test it, and write the run files."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf, open_dict
from torchvision.io import ImageReadMode, read_image

from cnnstress.augment import drop_unlisted_ops
from cnnstress.callbacks import TrainSpeed
from cnnstress.callbacks.context import tensorboard_writer
from cnnstress.config import TRAINING_RULES, instantiate, validate_config
from cnnstress.console import quiet_library_noise
from cnnstress.data import CIFARDataModule
from cnnstress.data.sources import resolve_root
from cnnstress.distributed import prepare_hydra_relaunch
from cnnstress.errors import ConfigError
from cnnstress.identity import IMPROVEMENT_KEYS, describe, differences, run_identity
from cnnstress.module import ClassifierModule
from cnnstress.overrides import improvement_changes
from cnnstress.precision import resolve_accelerator, resolve_auto
from cnnstress.run_files import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    RUN_FILE,
    read_metrics,
    read_run_record,
    write_metrics,
    write_predictions,
    write_run_record,
)
from cnnstress.settings import Flag, check
from cnnstress.slurm import requeued_checkpoint
from cnnstress.stress import STRESS_FILE, run_stress

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> CIFARDataModule:
    """The data module of ``cfg.dataset``, augmenting with ``cfg.augmentation`` (none when
    ``augmentation=[]``)."""
    resolve_data_root(cfg)
    node = cfg.get("augmentation")
    augmentation = OmegaConf.to_container(node, resolve=True) if node else {}
    return instantiate(cfg.dataset, seed=cfg.seed, augmentation=augmentation)


def lr_scale(cfg: DictConfig, effective_batch_size: int) -> float:
    """Factor applied to ``optimizer.lr``: 1, or effective / reference batch size (linear rule)."""
    rule = check(TRAINING_RULES["lr_scaling.rule"], OmegaConf.select(cfg, "lr_scaling.rule",
                 default="none"), "lr_scaling.rule")  # fmt: skip
    if rule == "linear":
        return effective_batch_size / cfg.lr_scaling.reference_batch_size
    return 1.0


def build_module(cfg: DictConfig, lr: float | None = None) -> ClassifierModule:
    """The LightningModule: ``cfg.model.net`` with ``cfg.optimizer`` (its ``lr`` replaced by
    ``lr`` when given) and ``cfg.scheduler``."""
    resolve_auto(cfg)
    scheduler = cfg.get("scheduler") or {}
    groups = cfg.get("param_groups")
    optimizer = instantiate(cfg.optimizer, **({} if lr is None else {"lr": lr}))
    schedule = None
    if scheduler.get("schedule"):
        # OneCycle's peak is the learning rate: it follows the (scaled) rate actually used.
        one_cycle = scheduler.schedule.get("_target_", "").endswith("OneCycleLR")
        peak = {"max_lr": lr} if one_cycle and lr is not None else {}
        schedule = instantiate(scheduler.schedule, **peak)
    return ClassifierModule(
        net=instantiate(cfg.model.net),
        optimizer=optimizer,
        scheduler=schedule,
        scheduler_interval=scheduler.get("interval", "epoch"),
        num_classes=cfg.dataset.num_classes,
        label_smoothing=cfg.loss.label_smoothing,
        channels_last=cfg.get("channels_last", False),
        tta=cfg.get("tta"),
        tta_val=cfg.get("tta_val", True),
        param_groups=OmegaConf.to_container(groups, resolve=True) if groups else {},
        compile=check(Flag(), cfg.get("compile", False), "compile"),
    )


def build_trainer(cfg: DictConfig, has_val: bool) -> L.Trainer:
    """The Trainer with the configured callbacks and loggers."""
    resolve_auto(cfg)
    callback_cfgs = OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=True)
    if not has_val:  # nothing to select best.ckpt on: keep only last.ckpt
        callback_cfgs.pop("model_checkpoint", None)
    if not OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True):
        callback_cfgs.pop("progress_bar", None)  # Lightning refuses a bar it was told to disable
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    callbacks = [instantiate(c) for c in callback_cfgs.values() if c]
    # Weight averaging first: its swaps then happen before any other callback observes the
    # weights (e.g. the Grad-CAM grid at the end of training sees the averaged weights).
    callbacks.sort(key=lambda c: not isinstance(c, WeightAveraging))
    # Without a validation split, switch the validation loop off instead of feeding it nothing.
    no_val = {} if has_val else {"limit_val_batches": 0}
    # Objects go in through a partial: Hydra would turn dataclass callbacks passed as
    # instantiate() kwargs into config nodes.
    make_trainer = instantiate(cfg.trainer, _partial_=True, **no_val)
    try:
        return make_trainer(callbacks=callbacks, logger=loggers or False)
    except (ValueError, TypeError, MisconfigurationException) as err:
        raise ConfigError(f"bad trainer setting: {' '.join(str(err).split())}") from None


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


# Files and folders a finished run leaves; removed before a finished run is replaced.
RUN_OUTPUTS = (
    METRICS_FILE, RUN_FILE, PREDICTIONS_FILE, STRESS_FILE, "checkpoints", "tensorboard",
    "failures", "gradcam", "confusion_matrix.json", "confusion_matrix.png",
    "reliability.json", "reliability.png", "stress_*.png",
)  # fmt: skip


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain containers, every interpolation resolved."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (empty outside Hydra)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def resolve_data_root(cfg: DictConfig) -> None:
    """Write the dataset root the run reads into ``cfg.dataset.root`` (and whether it may
    download there), so the run record names the data it used (:func:`resolve_root`)."""
    found = resolve_root(
        str(cfg.dataset.name),
        cfg.dataset.get("root"),
        OmegaConf.select(cfg, "paths.data_dir", default=None),
        OmegaConf.select(cfg, "paths.download_dir", default="data"),
        bool(cfg.dataset.get("download", True)),
    )
    with open_dict(cfg):
        cfg.dataset.root, cfg.dataset.download = found.path, found.download
    if found.source != "dataset.root":
        how = "a local copy" if found.source == "data_dir" else "downloaded on first use"
        log.info("%s data: %s (%s)", cfg.dataset.name, found.path, how)
        if found.source == "download" and not Path(found.path).is_dir():
            log.info("downloading %s into %s (once; about 170 MB)", cfg.dataset.name, found.path)


def finished_run(cfg: DictConfig, run_dir: Path) -> dict[str, float] | None:
    """Decide what to do with a run directory that already holds a finished run.

    Returns its metrics when it is a finished run of this very config (same fingerprint) and
    ``skip_completed`` is true; ``None`` when there is nothing to skip (no finished run, or it
    is replaced because ``skip_completed=false``: its run files are removed first, by rank 0).

    Raises:
        ConfigError: a finished run of another config (or of an unknown one) is there and
            ``skip_completed`` is true: nothing is ever overwritten silently.
    """
    if not (run_dir / METRICS_FILE).is_file():
        return None
    if cfg.get("skip_completed", True):
        try:
            recorded = run_identity(read_run_record(run_dir)["config"])
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"{run_dir} holds a finished run without a readable {RUN_FILE} ({err}); use "
                "another output directory, or skip_completed=false to replace it"
            ) from None
        diffs = differences(recorded, run_identity(resolved_config(cfg)))
        if not diffs:
            log.info("%s already has %s: skipping this completed run", run_dir, METRICS_FILE)
            return read_metrics(run_dir)
        raise ConfigError(
            f"{run_dir} holds a finished run of another config ({describe(diffs)}); use another "
            "hydra.sweep.dir (or hydra.run.dir), or skip_completed=false to replace it"
        )
    log.warning("replacing the finished run in %s (skip_completed=false)", run_dir)
    if rank_zero_only.rank == 0:
        for pattern in RUN_OUTPUTS:
            for path in run_dir.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return None


def log_stress_figures(trainer: L.Trainer, run_dir: Path) -> None:
    """Add every ``stress_*.png`` in ``run_dir`` to the TensorBoard log as ``stress/<stem>``."""
    writer = tensorboard_writer(trainer)
    if writer is None:
        return
    for path in sorted(run_dir.glob("stress_*.png")):
        image = read_image(str(path), ImageReadMode.RGB)  # (3, H, W) uint8
        writer.add_image(f"stress/{path.stem}", image, trainer.global_step)
    writer.flush()


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test, and write ``run.json``, ``predictions.npz`` and ``metrics.json``.

    The test uses ``best.ckpt`` when a validation split exists, else the final weights. With
    ``train=false`` the run only tests the weights in ``ckpt_path``. The run files are written
    last, ``metrics.json`` at the very end, so a run that fails leaves no ``metrics.json``. A
    directory that already holds a finished run is handled by :func:`finished_run`.
    """
    quiet_library_noise()
    start = time.perf_counter()
    for name in drop_unlisted_ops(cfg):
        log.info(
            "augmentation.%s is set, but %s is not in the augmentation list: not applied",
            name,
            name,
        )
    run_dir = Path(cfg.paths.output_dir)
    resolve_data_root(cfg)
    # Concrete trainer.precision and channels_last before the run's identity is compared (a
    # finished run records what it ran in) and before anything is built.
    resolve_auto(cfg)
    if (done := finished_run(cfg, run_dir)) is not None:
        return done
    validate_config(cfg)
    cheap_cuda_checks(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    trainer = build_trainer(cfg, datamodule.has_val)
    batch = datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches
    lr = cfg.optimizer.lr * lr_scale(cfg, batch)
    module = build_module(cfg, lr=lr)
    prepare_hydra_relaunch(str(run_dir))  # before fit starts the other DDP processes

    if cfg.get("train", True):
        # A requeued SLURM job resumes from its last finished epoch (cnnstress.slurm).
        resume = cfg.get("ckpt_path") or requeued_checkpoint(run_dir)
        trainer.fit(module, datamodule, ckpt_path=resume, weights_only=True)
        # best.ckpt's callback (the one with a monitor), named: with last.ckpt's callback beside
        # it, Lightning's ckpt_path="best" warns and takes whichever comes first.
        selector = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)
        test_ckpt = None
        if datamodule.has_val and selector is not None:
            test_ckpt = selector.best_model_path or "best"  # "best": Lightning says why not
    elif cfg.get("ckpt_path"):
        test_ckpt = cfg.ckpt_path
    else:
        raise ConfigError("train=false evaluates a checkpoint: pass ckpt_path=PATH")
    metrics = _scalar_metrics(trainer)  # last epoch's train/ and val/ values
    metrics.update({"train/effective_batch_size": batch, "train/base_lr": lr})
    # verbose=False: Lightning's table lists every per-class accuracy (100 rows for CIFAR-100);
    # the run ends with one summary line instead (:func:`test_summary`).
    trainer.test(
        module, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True, verbose=False
    )
    metrics.update(_scalar_metrics(trainer))
    speed = next((c for c in trainer.callbacks if isinstance(c, TrainSpeed)), None)
    if speed is not None:
        metrics["train/images_per_sec"] = speed.images_per_sec
    metrics["time/wall_seconds"] = time.perf_counter() - start
    config = resolved_config(cfg)
    final = {f"hp/{k.replace('/', '_')}": metrics[k] for k in ("test/acc", "test/loss")}
    for logger in trainer.loggers:  # the HPARAMS view: config next to the final test metrics
        logger.log_hyperparams(config, final)
    if trainer.is_global_zero:
        predictions = module.predictions("test")
        write_predictions(
            run_dir,
            predictions.index,
            predictions.target,
            predictions.probs,
            official_index=datamodule.official_test_index,
        )
        overrides = task_overrides()
        changed = improvement_changes(cfg, overrides, IMPROVEMENT_KEYS)
        write_run_record(run_dir, config, overrides, changed)
        write_metrics(run_dir, metrics)  # last: the run is finished
        if cfg.get("stress"):  # after metrics.json: a stress error never un-finishes the run
            names = list(cfg.stress)
            run_stress(run_dir, names, cfg.stress, module.device, net=module.net, cfg=cfg)
            log_stress_figures(trainer, run_dir)
        log.info("%s; run files in %s", test_summary(metrics), run_dir)
    return metrics


def test_summary(metrics: dict[str, float]) -> str:
    """``test: acc 0.9213, loss 0.261, top-5 0.9978, ECE 0.0123, 41 confident failures (3 known
    label errors), clean acc 0.9251`` from the keys present."""
    parts = []
    for key, name, digits in (("test/acc", "acc", 4), ("test/loss", "loss", 3),
                              ("test/acc_top5", "top-5", 4), ("test/ece", "ECE", 4)):  # fmt: skip
        if metrics.get(key) is not None:
            parts.append(f"{name} {metrics[key]:.{digits}f}")
    if metrics.get("test/high_conf_failures") is not None:
        failures = f"{int(metrics['test/high_conf_failures'])} confident failures"
        if metrics.get("test/high_conf_failures_label_errors") is not None:
            errors = int(metrics["test/high_conf_failures_label_errors"])
            failures += f" ({errors} known label errors)"
        parts.append(failures)
    if metrics.get("test/acc_clean") is not None:
        parts.append(f"clean acc {metrics['test/acc_clean']:.4f}")
    return "test: " + ", ".join(parts)
