"""The LightningModule: backbone, loss with hard or soft targets, metrics, per-image outputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from cnnstress.core.rules import Integer, Number, OneOf
from cnnstress.train.optim import SchedulerConfig, SGDConfig
from cnnstress.train.param_groups import ParamGroups, parameter_groups
from cnnstress.train.precision import CHANNELS_LAST_RULE
from cnnstress.train.tta import TTA_RULE, TTA_VIEWS, tta_logits


@dataclass(frozen=True)
class Predictions:
    """Per-image outputs of one evaluation pass, one row per dataset image, sorted by index.

    Attributes:
        index: ``(N,)`` int64 dataset indices of the batches (official test indices where
            the data has them, else positions in the official split; see the data module).
        target: ``(N,)`` int64 true classes.
        logits: ``(N, C)`` float32.
    """

    index: np.ndarray
    target: np.ndarray
    logits: np.ndarray

    @property
    def probs(self) -> np.ndarray:
        """``(N, C)`` float32 softmax probabilities."""
        return torch.from_numpy(self.logits).softmax(dim=1).numpy()


@dataclass
class LossConfig:
    """The training loss (``module.loss``): cross-entropy with optional label smoothing. A
    constrained improvement may change it (improvement=label_smoothing)."""

    label_smoothing: Annotated[float, Number(0.0, 1.0, high_open=True)] = 0.0


@dataclass
class LrScaling:
    """``module.lr_scaling``: ``none``, or ``linear``: the optimizer's learning rate times
    effective batch / ``reference_batch_size`` (Goyal et al. 2017). The effective batch is
    ``dataset.batch_size`` x devices x nodes x ``trainer.accumulate_grad_batches``."""

    rule: Annotated[str, OneOf(("none", "linear"))] = "none"
    reference_batch_size: Annotated[int, Integer(1)] = 128


@dataclass
class ModuleConfig:
    """The ``module`` config node: how the LightningModule trains and evaluates its backbone.

    ``optimizer`` and ``scheduler`` come from the groups of those names (conf/optimizer,
    conf/scheduler; ``optimizer=adam`` picks one, ``module.optimizer.lr=0.05`` sets a value).
    """

    # from the groups (null here: a schema may not pin the type a group's file brings)
    optimizer: Any = None
    scheduler: Any = None
    loss: LossConfig = field(default_factory=LossConfig)
    lr_scaling: LrScaling = field(default_factory=LrScaling)
    # Learning-rate / weight-decay multipliers for groups of parameters, e.g.
    # module.param_groups.norm_bias.lr_scale=64 (cnnstress.train.param_groups)
    param_groups: ParamGroups = field(default_factory=ParamGroups)
    # Memory format of the backbone: true, false, or auto (resolved at start-up: true with a
    # reduced precision, cnnstress.train.precision)
    channels_last: Annotated[Any, CHANNELS_LAST_RULE] = "auto"
    # Train through torch.compile (opt-in: on 2 CPU cores compiling costs more than it saves).
    compile: bool = False
    # Test-time augmentation of the test logits: null, flip, or flip_translate
    # (cnnstress.train.tta).
    # CAMs and stresses always use the plain model.
    tta: Annotated[str | None, TTA_RULE] = None
    # Also average the views of the validation logits (val/ metrics, best.ckpt selection,
    # per-epoch failures); false: validation sees the plain model.
    tta_val: bool = True


class ImageWeightedMean(MeanMetric):
    """The mean of per-batch values weighted by a host-side count (the images of each batch):
    ``sum(value x n) / sum(n)``, synced and reset like any torchmetrics metric.

    :class:`~torchmetrics.MeanMetric` turns a Python weight into a tensor on the device and looks
    for NaNs on the host at every update (two host-device synchronisations per training step
    on a GPU); its ``nan_strategy="disable"``, which skips the check, also drops the weights.
    Here the update is two in-place device ops with a Python number, and a NaN loss makes the
    epoch's mean NaN instead of being left out.
    """

    def update(self, value: torch.Tensor, weight: float) -> None:  # type: ignore[override]
        """Add ``value`` (a 0-d tensor on the metric's device) with weight ``weight``."""
        self.mean_value += value * weight
        self.weight += weight


class ClassifierModule(L.LightningModule):
    """Train and evaluate an image classifier.

    Batches are dicts from :class:`~cnnstress.core.data.CIFARDataModule` (normalised ``image``,
    ``target``, ``index``, and ``soft_target`` when a batch-mixing op ran). The training loss
    is cross-entropy against ``soft_target`` when present, else ``target``, with optional label
    smoothing; training accuracy is always measured against the hard ``target``.

    Validation and test metrics are computed from the gathered per-image logits of the whole
    split (see :meth:`predictions`), so under DDP the padding a distributed sampler adds is
    never counted: ``{stage}/loss`` is the plain cross-entropy, ``{stage}/acc`` top-1 and
    ``{stage}/acc_top5`` top-5 accuracy. With ``tta`` (:mod:`cnnstress.train.tta`) the test logits,
    and with ``tta_val`` also the validation logits, are the test-time-augmentation ensemble's;
    ``{stage}/tta_views`` says how many views were averaged (1: none).

    Backbone hooks, used when the backbone has them (e.g. :class:`~cnnstress.core.models.FastNet`):
    ``init_from_data(images)`` is called once at the start of a new fit (never on resume: the
    checkpoint holds the result) with ``init_images`` normalised training images (a fixed
    subset, see :meth:`init_images`); ``on_train_epoch_start(epoch)`` at every training epoch.

    ``channels_last`` keeps the backbone and its inputs in channels_last memory format;
    ``compile`` runs the training steps through ``torch.compile(net)`` (evaluation, checkpoints,
    Grad-CAM and the stresses use the eager ``net``, which shares its parameters).

    Args:
        net: the backbone (logits ``(N, num_classes)``).
        config: the module's settings (``channels_last`` concrete, not ``auto``).
        num_classes: outputs of the backbone.
    """

    def __init__(
        self, net: nn.Module, config: ModuleConfig | None = None, num_classes: int = 10
    ) -> None:
        super().__init__()
        config = config or ModuleConfig(channels_last=False)
        if config.optimizer is None:
            config = dataclasses.replace(config, optimizer=SGDConfig())
        if config.scheduler is None:
            config = dataclasses.replace(config, scheduler=SchedulerConfig())
        self.config = config
        channels_last = bool(config.channels_last is True)
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        # The compiled wrapper shares the backbone's parameters but is kept out of the module
        # tree, so state-dict keys stay ``net.*`` (no ``_orig_mod.``).
        self.__dict__["_compiled_net"] = torch.compile(self.net) if config.compile else None
        self.num_classes = num_classes
        self.label_smoothing = config.loss.label_smoothing
        self.channels_last = channels_last
        self.tta = config.tta
        self.tta_val = config.tta_val
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        # image-weighted mean loss: Lightning's own epoch reduction, sum(loss x n) / sum(n)
        self.train_loss = ImageWeightedMean()
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self._gathered: dict[str, Predictions] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)`` for normalised images ``(N, 3, H, W)``."""
        return self.net(self._memory_format(images))

    def _memory_format(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._compiled_net is None:
            logits = self(batch["image"])
        else:  # compiled for training only: evaluation's shapes would each compile a graph
            logits = self._compiled_net(self._memory_format(batch["image"]))
        target = batch.get("soft_target", batch["target"])
        loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        # Per-step self.log calls and torchmetrics' forward (which also computes and validates a
        # batch value) cost ~1.4 ms a step, 4% of a bf16 simple_cnn step on 2 CPU cores
        # (bench/RESULTS.md): only update the metrics here and log them once per epoch.
        self.train_loss.update(loss.detach().float(), weight=batch["target"].shape[0])
        self.train_acc.update(logits.detach(), batch["target"])
        return loss

    def on_train_epoch_start(self) -> None:
        hook = getattr(self.net, "on_train_epoch_start", None)
        if hook is not None:
            hook(self.current_epoch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Leave the backbone's currently frozen parameters (``frozen_parameters()``, e.g.
        FastNet's whitening bias after its epochs) out of this optimizer step.

        They keep ``requires_grad`` and get their gradient (DDP needs every parameter it
        registered to take part in every backward); dropping the gradient here, after DDP's
        all-reduce and before clipping, makes the optimizer skip them as it skips any parameter
        without a gradient: no update, no weight decay, no momentum, exactly as a parameter
        with ``requires_grad=False``.
        """
        frozen = getattr(self.net, "frozen_parameters", None)
        for param in frozen() if frozen is not None else ():
            param.grad = None

    def on_train_epoch_end(self) -> None:
        """Log ``train/loss`` (mean over every process's images) and ``train/acc``; Lightning
        computes, syncs and resets the metric objects at the epoch's end."""
        if self.train_loss.update_called:
            self.log("train/loss", self.train_loss)
            self.log("train/acc", self.train_acc)

    # -- evaluation: keep per-image logits, compute metrics on the gathered split ------------
    def tta_mode(self, stage: str) -> str | None:
        """The test-time augmentation of the ``stage`` split's logits (None: the plain model)."""
        return self.tta if stage == "test" or self.tta_val else None

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor]) -> None:
        logits = tta_logits(self, batch["image"], self.tta_mode(stage)).float()
        self._outputs.setdefault(stage, []).append((batch["index"], batch["target"], logits))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def on_test_epoch_start(self) -> None:
        self._reset("test")

    def _reset(self, stage: str) -> None:
        self._outputs.pop(stage, None)
        self._gathered.pop(stage, None)

    def predictions(self, stage: str) -> Predictions:
        """All per-image outputs of the current ``stage`` ("val" or "test") epoch.

        Gathers from every process (a collective: call it on all ranks), drops the duplicates
        a distributed sampler pads in, and sorts by dataset index. Cached until the next epoch.
        """
        if stage not in self._gathered:
            parts = self._outputs.get(stage, [])
            if parts:
                index, target, logits = (torch.cat(column) for column in zip(*parts, strict=True))
            else:
                index = target = torch.zeros(0, dtype=torch.long, device=self.device)
                logits = torch.zeros(0, self.num_classes, device=self.device)
            if self.trainer.world_size > 1:
                index, target, logits = (
                    t.flatten(0, 1) for t in self.all_gather((index, target, logits))
                )
            index_np = index.cpu().numpy()
            unique, first = np.unique(index_np, return_index=True)
            self._gathered[stage] = Predictions(
                index=unique.astype(np.int64),
                target=target.cpu().numpy()[first].astype(np.int64),
                logits=logits.cpu().numpy()[first].astype(np.float32),
            )
        return self._gathered[stage]

    def _log_eval_metrics(self, stage: str) -> None:
        preds = self.predictions(stage)
        if preds.index.size == 0:
            return
        logits, target = torch.from_numpy(preds.logits), torch.from_numpy(preds.target)
        top5 = logits.topk(min(5, self.num_classes), dim=1).indices
        metrics = {
            f"{stage}/loss": F.cross_entropy(logits, target).item(),
            f"{stage}/acc": (logits.argmax(1) == target).float().mean().item(),
            f"{stage}/acc_top5": (top5 == target[:, None]).any(1).float().mean().item(),
            f"{stage}/tta_views": float(TTA_VIEWS[self.tta_mode(stage)]),
        }
        # Every rank holds the same gathered values, so no further reduction is needed.
        self.log_dict(metrics, on_epoch=True, sync_dist=False, rank_zero_only=False)

    def on_validation_epoch_end(self) -> None:
        self._log_eval_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_metrics("test")

    # -- backbone hooks: data-dependent initialisation, per-epoch switches ---------------------
    def init_images(self, count: int) -> torch.Tensor:
        """Up to ``count`` training images ``(K, 3, H, W)`` on the module's device, normalised as
        training batches are (without augmentation): a fixed subset of the training split (a
        permutation seeded with 0), the same for every run seed and every process."""
        train_set = self.trainer.datamodule.train_set
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))
        rows = train_set.indices[order[:count].sort().values]
        return self.trainer.datamodule.normalize(train_set.images[rows].to(self.device))

    def on_fit_start(self) -> None:
        init = getattr(self.net, "init_from_data", None)
        if init is None or self.trainer.ckpt_path is not None:
            return  # nothing to do, or resuming: the checkpoint holds the initialised weights
        init(self.init_images(int(getattr(self.net, "init_images", 5000))))

    # -- optimisation -------------------------------------------------------------------------
    def effective_batch_size(self) -> int:
        """Images per optimizer step over every process: ``dataset.batch_size`` x world size x
        ``trainer.accumulate_grad_batches``."""
        trainer = self.trainer
        return trainer.datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches

    def base_lr(self) -> float:
        """The optimizer's learning rate after ``lr_scaling`` (what OneCycle peaks at)."""
        lr = float(self.config.optimizer.lr)
        scaling = self.config.lr_scaling
        if scaling.rule == "linear":
            return lr * self.effective_batch_size() / scaling.reference_batch_size
        return lr

    def configure_optimizers(self) -> Any:
        lr, weight_decay = self.base_lr(), float(self.config.optimizer.weight_decay)
        groups = parameter_groups(self, self.config.param_groups, lr, weight_decay)
        # Objects go in through the partial: Hydra would turn the groups into config nodes.
        optimizer = instantiate(self.config.optimizer, _partial_=True)(groups, lr=lr)
        schedule = self.config.scheduler.schedule
        if schedule is None:
            return optimizer
        kwargs: dict[str, Any] = {}
        if _target(schedule).endswith("OneCycleLR"):
            # One cycle over the whole run, peaking at each group's (scaled) learning rate.
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
            kwargs["max_lr"] = [g["lr"] for g in optimizer.param_groups]
        scheduler = instantiate(schedule, _partial_=True)(optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.config.scheduler.interval},
        }


def _target(node: Any) -> str:
    """The ``_target_`` of a config object or mapping."""
    return str(getattr(node, "_target_", None) or node.get("_target_", ""))
