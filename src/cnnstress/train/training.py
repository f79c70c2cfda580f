"""Train one configured model: resolve its config once, then fit, test and write the run files.

``prepare_run(cfg)`` turns every ``auto`` and derived value into what the run uses (recorded in
its ``run.json``) and decides what to do with what the run directory holds; ``train(cfg)`` then
builds the data, the module, the callbacks, the loggers and the Trainer from their config nodes,
fits, tests and writes the run files.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnstress.core.augment import IMAGE_OPS, MIX_OPS, build_augmentation, drop_unlisted_ops
from cnnstress.core.checkpoints import load_state_dict, load_weights
from cnnstress.core.config import build, check_group_sections, one_line, validate
from cnnstress.core.console import quiet_library_noise
from cnnstress.core.data import CIFARDataModule
from cnnstress.core.data.sources import resolve_root
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.identity import IMPROVEMENT_KEYS, describe, differences, run_identity
from cnnstress.core.overrides import improvement_changes
from cnnstress.core.rules import Either, Integer, Number, OneOf, Probability, Rule, Text
from cnnstress.core.run_dir import (
    RunDir,
    read_metrics,
    read_record,
    write_metrics,
    write_predictions,
    write_record,
)
from cnnstress.core.slurm import requeued_checkpoint
from cnnstress.train.callbacks import TrainSpeed
from cnnstress.train.distributed import prepare_hydra_relaunch
from cnnstress.train.module import ClassifierModule, ModuleConfig
from cnnstress.train.precision import (
    BENCHMARK_RULE,
    PRECISION_RULE,
    resolve_accelerator,
    resolve_auto,
)

log = logging.getLogger(__name__)


class BatchLimit(Rule):
    """Lightning's ``limit_*_batches``: null (all), a count >= 1, or a fraction in (0, 1]."""

    def convert(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError
        if isinstance(value, int) and value >= 1:
            return value
        if isinstance(value, float) and 0.0 < value <= 1.0:
            return value
        raise ValueError

    def describe(self) -> str:
        return "null, a number of batches >= 1 or a fraction in (0, 1]"


@dataclass
class TrainerConfig:
    """The ``trainer`` config node: ``lightning.Trainer`` arguments (any other Trainer argument
    can be added with ``+trainer.<name>=...``)."""

    EXTRA_KEYS: ClassVar[bool] = True  # Lightning checks the arguments it takes
    _target_: str = "lightning.pytorch.Trainer"
    default_root_dir: str = "${paths.output_dir}"
    accelerator: Annotated[str, Text()] = "auto"
    devices: Any = 1
    num_nodes: Annotated[int, Integer(1)] = 1
    strategy: Annotated[str, Text()] = "auto"
    # auto: bf16-mixed on a CPU with native bf16 (AVX-512 BF16 / AMX) or a GPU of compute
    # capability >= 8.0, 16-mixed on a 7.x GPU (T4, V100), else 32-true (cnnstress.train.precision);
    # or any of Lightning's precisions
    precision: Annotated[Any, PRECISION_RULE] = "auto"
    max_epochs: Annotated[int, Integer(1)] = 30
    max_steps: Annotated[int, Either((OneOf((-1,)), Integer(1)))] = -1
    deterministic: Annotated[Any, Either((OneOf((True, False)), OneOf(("warn",))))] = False
    # cuDNN autotuning: true, false, or auto (on for CUDA unless deterministic)
    benchmark: Annotated[Any, BENCHMARK_RULE] = "auto"
    log_every_n_steps: Annotated[int, Integer(1)] = 50
    check_val_every_n_epoch: Annotated[int, Integer(1)] = 1
    num_sanity_val_steps: Annotated[int, Integer(-1)] = 0
    # The live bar only when stdout is a terminal; a redirected log gets one line per epoch
    # (callbacks.epoch_log) instead.
    enable_progress_bar: bool = "${stdout_isatty:}"  # type: ignore[assignment]
    enable_model_summary: bool = True
    limit_train_batches: Annotated[Any, BatchLimit()] = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    fast_dev_run: Any = False
    accumulate_grad_batches: Annotated[int, Integer(1)] = 1
    gradient_clip_val: Annotated[float | None, Number(0.0, optional=True)] = None


@dataclass
class TrainConfig:
    """The root of conf/train.yaml: the top-level keys (every group is typed by its own schema:
    :class:`~cnnstress.core.data.DatasetConfig`, :class:`~cnnstress.train.module.ModuleConfig`,
    :class:`TrainerConfig`, the backbones' and callbacks' classes, ...)."""

    seed: Annotated[int, Integer(0, 2**32 - 1)] = 42
    # Fit the model (false: only test the weights in ckpt_path).
    train: bool = True
    # With train=true: resume from a checkpoint (optimizer, scheduler and epoch included), e.g.
    # RUN/checkpoints/last.ckpt; the run continues in RUN.
    ckpt_path: Annotated[str | None, Text(optional=True)] = None
    # Skip a run whose directory already holds a finished run of the same config, so
    # re-running a sweep resumes it.
    skip_completed: bool = True
    # A prediction is a confident failure when it is wrong with a top-1 probability >= this
    # (the failures and Grad-CAM callbacks, the background stress and the analysis read it).
    confidence_threshold: Annotated[float, Probability()] = 0.8
    # The improvement this run is (set by conf/improvement/; the analysis checks it).
    improvement: Annotated[str, Text()] = "baseline"
    paths: Any = None
    dataset: Any = None
    model: Any = None
    module: ModuleConfig = field(default_factory=ModuleConfig)
    augmentation: dict[str, Any] = field(default_factory=dict)
    trainer: Any = None
    callbacks: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    stress: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def validate_root(cfg: DictConfig) -> None:
        """The augmentation list: known ops, at most one batch-mixing op (a plain node is a
        recipe's setting for an op that is not in the list, dropped by :func:`prepare_run`);
        known stresses."""
        check_group_sections(cfg, "stress")
        known = {**IMAGE_OPS, **MIX_OPS}
        for name in cfg.augmentation:
            if name not in known:
                raise ConfigError(f"unknown augmentation op {name!r}; valid: {', '.join(known)}")
        listed = [n for n, node in cfg.augmentation.items()
                  if OmegaConf.get_type(node) is known[n] and n in MIX_OPS]  # fmt: skip
        if len(listed) > 1:
            raise ConfigError(
                f"augmentation: choose at most one batch-mixing op of {', '.join(MIX_OPS)}, "
                f"got {listed}"
            )


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


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint this training run resumes from (``ckpt_path`` with ``train=true``)."""
    ckpt = cfg.get("ckpt_path")
    return Path(ckpt) if ckpt and cfg.get("train", True) else None


def prepare_run_dir(cfg: DictConfig, run: RunDir) -> dict[str, Any] | None:
    """Decide what to do with what the run directory already holds, before anything is built.

    * A finished run of this very config (same fingerprint) with ``skip_completed``: return its
      metrics; the job is done.
    * A finished run of another config with ``skip_completed``: :class:`ConfigError` (nothing
      is ever overwritten silently).
    * Otherwise the directory starts clean: a finished run replaced (``skip_completed=false``)
      or an earlier unfinished attempt loses every file it wrote (stale checkpoints would
      otherwise be tested, and two attempts' TensorBoard events mixed). A run resuming from a
      checkpoint inside this directory (``ckpt_path=RUN/checkpoints/last.ckpt``: a crashed run
      continued, or a finished one extended, e.g. with a larger ``trainer.max_epochs``) keeps
      its checkpoints and TensorBoard events: no file this command reads is deleted.
      Only rank 0 deletes.
    """
    if run.finished and cfg.get("skip_completed", True):
        try:
            recorded = read_record(run.path).config
        except DataError as err:
            raise ConfigError(
                f"{run.path} holds a finished run without a readable run.json ({err}); use "
                "another output directory, or skip_completed=false to replace it"
            ) from None
        diffs = differences(run_identity(recorded), run_identity(resolved_config(cfg)))
        if not diffs:
            log.info("%s already holds this finished run: skipping it", run.path)
            return read_metrics(run.path)
        raise ConfigError(
            f"{run.path} holds a finished run of another config ({describe(diffs)}); use "
            "another hydra.sweep.dir (or hydra.run.dir), or skip_completed=false to replace it"
        )
    resume = resume_checkpoint(cfg)
    inside = resume is not None and resume.resolve().is_relative_to(run.path.resolve())
    if rank_zero_only.rank != 0 or not run.outputs():
        return None
    if run.finished:
        what = "extending" if inside else "replacing"
        log.warning("%s the finished run in %s (skip_completed=false)", what, run.path)
    elif not inside:
        log.warning("%s holds files of an earlier unfinished attempt: starting clean", run.path)
    kept = [run.checkpoints, run.tensorboard] if inside else []
    for path in run.outputs():
        if path not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return None


def check_checkpoint(cfg: DictConfig) -> None:
    """``ckpt_path`` must be a readable checkpoint of this run's backbone.

    Raises:
        ConfigError: missing, unreadable, not a Lightning checkpoint, or of another model.
    """
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        if not cfg.train:
            raise ConfigError("train=false evaluates a checkpoint: pass ckpt_path=PATH")
        return
    if not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt} does not exist")
    try:
        load_weights(build(cfg.model.net), load_state_dict(ckpt), ckpt)
    except DataError as err:
        raise ConfigError(f"ckpt_path: {err}") from None


def resolve_config(cfg: DictConfig) -> None:
    """Check ``cfg`` and resolve every ``auto`` and derived value in place, once, before
    anything is built or any data decoded, so the run record says what the run used: the
    augmentation ops a recipe set but the list does not have (dropped), the dataset root
    (:func:`resolve_data_root`), ``trainer.precision`` and ``module.channels_last``
    (:func:`cnnstress.train.precision.resolve_auto`); and check ``ckpt_path``.

    Raises:
        ConfigError: a value that cannot work (one line).
    """
    validate(cfg)
    for name in drop_unlisted_ops(cfg):
        log.info("augmentation.%s is set, but %s is not in the augmentation list: not applied",
                 name, name)  # fmt: skip
    resolve_data_root(cfg)
    resolve_auto(cfg)
    check_checkpoint(cfg)


def prepare_run(cfg: DictConfig) -> dict[str, Any] | None:
    """Resolve ``cfg`` (:func:`resolve_config`), then decide what to do with the run directory
    (:func:`prepare_run_dir`).

    Returns:
        The metrics of a finished run of this very config (the job is done), else ``None``.

    Raises:
        ConfigError: a value that cannot work, or a finished run of another config there.
    """
    quiet_library_noise()
    if cfg.train and not cfg.ckpt_path:  # a requeued SLURM job resumes from its last epoch
        resume = requeued_checkpoint(cfg.paths.output_dir)
        if resume is not None:
            with open_dict(cfg):
                cfg.ckpt_path = resume
    resolve_config(cfg)
    cheap_cuda_checks(cfg)
    return prepare_run_dir(cfg, RunDir(cfg.paths.output_dir))


def build_datamodule(cfg: DictConfig) -> CIFARDataModule:
    """The data module of ``cfg.dataset``, augmenting with ``cfg.augmentation``."""
    augmentation = build_augmentation(build(cfg.augmentation), cfg.dataset.num_classes)
    return CIFARDataModule(build(cfg.dataset), cfg.seed, augmentation)


def build_module(cfg: DictConfig, net: torch.nn.Module | None = None) -> ClassifierModule:
    """The LightningModule of ``cfg.module`` around ``net`` (default: ``cfg.model.net``)."""
    net = build(cfg.model.net) if net is None else net
    return ClassifierModule(net, build(cfg.module), cfg.dataset.num_classes)


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the configured callbacks and loggers."""
    has_val = cfg.dataset.val_size > 0
    callbacks = [
        build(c)
        for name, c in cfg.callbacks.items()
        if c is not None and (has_val or name != "model_checkpoint")
    ]  # nothing to select best.ckpt on without it
    if not cfg.trainer.enable_progress_bar:  # Lightning refuses a bar it was told to disable
        callbacks = [c for c in callbacks if type(c).__name__ != "TQDMProgressBar"]
    # Weight averaging first: its swaps then happen before any other callback observes the
    # weights (e.g. the Grad-CAM grid at the end of training sees the averaged weights).
    callbacks.sort(key=lambda c: not isinstance(c, WeightAveraging))
    loggers = [build(c) for c in cfg.logger.values() if c is not None]
    # Without a validation split, switch the validation loop off instead of feeding it nothing.
    no_val = {} if has_val else {"limit_val_batches": 0}
    # Objects go in through a partial: Hydra would turn dataclass callbacks passed as
    # instantiate() kwargs into config nodes.
    make_trainer = build(cfg.trainer, _partial_=True, **no_val)
    try:
        return make_trainer(callbacks=callbacks, logger=loggers or False)
    except (ValueError, TypeError, MisconfigurationException) as err:
        raise ConfigError(f"bad trainer setting: {' '.join(str(err).split())}") from None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test, and write ``predictions.npz``, ``run.json`` and ``metrics.json`` (last: a run
    that fails leaves no ``metrics.json``) for a config :func:`prepare_run` resolved.

    The test uses ``best.ckpt`` when a validation split exists, else the final weights; with
    ``train=false`` it tests the weights in ``ckpt_path``.
    """
    start = time.perf_counter()
    run = RunDir(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    prepare_hydra_relaunch(str(run.path))  # before fit starts the other DDP processes
    tested = fit(trainer, module, datamodule, cfg)
    metrics = _scalar_metrics(trainer)  # last epoch's train/ and val/ values
    # verbose=False: Lightning's table lists every per-class accuracy (100 rows for CIFAR-100);
    # the run ends with one summary line instead (:func:`test_summary`).
    trainer.test(module, datamodule=datamodule, ckpt_path=tested, weights_only=True,
                 verbose=False)  # fmt: skip
    metrics.update(_scalar_metrics(trainer))
    metrics["train/effective_batch_size"] = module.effective_batch_size()
    metrics["train/base_lr"] = module.base_lr()
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
        write_predictions(run.path, predictions.index, predictions.target, predictions.probs,
                          official_index=datamodule.official_test_index)  # fmt: skip
        overrides = task_overrides()
        changed = improvement_changes(cfg, overrides, IMPROVEMENT_KEYS)
        checkpoint = tested if tested not in (None, "best") else run.checkpoints / "last.ckpt"
        write_record(run.path, config, overrides, changed, checkpoint if cfg.train else None)
        write_metrics(run.path, metrics)  # last: the run is finished
        log.info("%s; run files in %s", test_summary(metrics), run.path)
    return metrics


def fit(
    trainer: L.Trainer, module: ClassifierModule, datamodule: CIFARDataModule, cfg: DictConfig
) -> str | None:
    """Fit (unless ``train=false``); return the checkpoint the test should use: the best one
    when a validation split selected it, ``ckpt_path`` for an evaluation, else ``None`` (the
    final weights).

    Raises:
        ConfigError: the fit made no training step (nothing would be trained but recorded as
            finished).
    """
    if not cfg.train:
        return cfg.ckpt_path
    try:
        trainer.fit(module, datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    except MisconfigurationException as err:  # e.g. a batch limit that leaves no batch
        raise ConfigError(f"bad trainer setting: {one_line(err)}") from None
    if trainer.global_step == 0:
        raise ConfigError(
            "the run made no training step (check trainer.limit_train_batches, "
            "trainer.max_steps and dataset.batch_size); nothing is recorded as finished"
        )
    if not datamodule.has_val:
        return None
    # best.ckpt's callback (the one with a monitor), named: with last.ckpt's callback beside
    # it, Lightning's ckpt_path="best" warns and takes whichever comes first.
    selector = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)
    return None if selector is None else (selector.best_model_path or "best")


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
