"""The fast recipe (experiment=fast_cifar10) as a hand-written PyTorch loop, for the benchmarks.

Shared by ``bench/fast_recipe.py`` (a few steps on random batches) and ``bench/epoch_speed.py``
(whole epochs). :class:`PlainRecipe` is what a plain PyTorch user would write for the recipe's
training step, with nothing of cnnstress's framework around it: the same FastNet whitened from
the same training images, bf16 autocast when the recipe's precision is bf16, channels_last
when the recipe uses it, the recipe's SGD parameter groups and OneCycle schedule (stepped per
batch), the data module's batched on-device augmentation and normalisation, the backbone's
per-epoch switch (the whitening bias frozen after its epochs) and the lookahead of the
recipe's ``WeightAverage`` callback (an in-place running average every ``every_n_steps``
steps, the training weights reset to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from cnnstress.app.configs import compose_config
from cnnstress.core.config import build
from cnnstress.core.data import CIFARDataModule
from cnnstress.train.param_groups import parameter_groups
from cnnstress.train.training import resolve_config

RECIPE = ["experiment=fast_cifar10"]


def recipe_config(output_dir: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The recipe's composed config with ``overrides``, every ``auto`` resolved (precision,
    channels_last, dataset root), writing into ``output_dir``."""
    cfg = compose_config(output_dir, [*RECIPE, *overrides])
    resolve_config(cfg)
    return cfg


def init_images(dm: CIFARDataModule, count: int) -> torch.Tensor:
    """The normalised training images ``(K, 3, H, W)`` the recipe whitens from: the subset
    :meth:`cnnstress.train.module.ClassifierModule.init_images` takes (a permutation seeded with
    0, first ``count``, sorted)."""
    train_set = dm.train_set
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))
    return dm.normalize(train_set.images[train_set.indices[order[:count].sort().values]])


class PlainRecipe:
    """The recipe's model, optimizer, schedule and lookahead in a plain loop.

    :meth:`step` is one step of the recipe (augment + normalise a uint8 batch, then
    :meth:`model_step`, the schedule and the lookahead); :meth:`model_step` alone is the bare
    model step (forward + backward + optimizer step) on a batch :meth:`prepare` made.

    Args:
        cfg: the recipe's resolved config (:func:`recipe_config`).
        dm: its data module, set up (the training images, augmentation, normalisation).
        total_steps: optimizer steps of the whole run (the OneCycle schedule and the lookahead's
            decay ramp span them).
    """

    def __init__(self, cfg: DictConfig, dm: CIFARDataModule, total_steps: int) -> None:
        self.dm = dm
        net = build(cfg.model.net)
        init = getattr(net, "init_from_data", None)
        if init is not None:
            init(init_images(dm, int(getattr(net, "init_images", 5000))))
        self.channels_last = bool(cfg.module.channels_last)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net.train()
        self.bf16 = str(cfg.trainer.precision).startswith("bf16")
        optim = cfg.module.optimizer
        groups = parameter_groups(net, build(cfg.module.param_groups), optim.lr, optim.weight_decay)
        self.optimizer = build(cfg.module.optimizer)(params=groups)
        schedule = cfg.module.scheduler.schedule
        self.scheduler = None
        if schedule is not None:
            kwargs = {}
            if str(schedule._target_).endswith("OneCycleLR"):
                kwargs = {
                    "total_steps": total_steps,
                    "max_lr": [g["lr"] for g in self.optimizer.param_groups],
                }
            self.scheduler = build(schedule)(self.optimizer, **kwargs)
        self.total_steps = max(total_steps, 1)
        self.averaging = cfg.callbacks.get("weight_averaging")  # None: no averaging
        self.tensors = [*net.parameters(), *net.buffers()]
        self.average = [t.detach().clone() for t in self.tensors]
        self.updates = 0
        self.global_step = 0

    def start_epoch(self, epoch: int) -> None:
        """The backbone's per-epoch switch (FastNet: whitening bias trained or frozen)."""
        hook = getattr(self.net, "on_train_epoch_start", None)
        if hook is not None:
            hook(epoch)

    def prepare(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Augment and normalise uint8 ``images`` ``(N, 3, H, W)`` as the data module does for a
        training batch; float32 ``(N, 3, H, W)``, channels_last when the recipe uses it."""
        x, _ = self.dm.augment(images, labels, generator)
        x = self.dm.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def model_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward (bf16 autocast when the recipe uses it), cross-entropy, backward, optimizer
        step."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.net(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        frozen = getattr(self.net, "frozen_parameters", None)
        for param in frozen() if frozen is not None else ():
            param.grad = None  # as ClassifierModule.on_before_optimizer_step
        self.optimizer.step()

    def step(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> None:
        """One step of the recipe on a uint8 batch: augment, normalise, model step, schedule,
        lookahead."""
        self.model_step(self.prepare(images, labels, generator), labels)
        if self.scheduler is not None:
            self.scheduler.step()
        self.global_step += 1
        self.lookahead()

    @torch.no_grad()
    def lookahead(self) -> None:
        """The recipe's WeightAverage after optimizer step ``global_step``: every
        ``every_n_steps`` steps the average moves towards the weights with the decay
        ``decay x (step / total) ** decay_power`` (the first update copies), and with
        ``lookahead`` the weights are reset to it."""
        avg = self.averaging
        if avg is None or self.global_step % int(avg.every_n_steps) != 0:
            return
        progress = min(self.global_step / self.total_steps, 1.0)
        decay = float(avg.decay) * progress ** float(avg.decay_power)
        for average, current in zip(self.average, self.tensors, strict=True):
            if self.updates == 0 or not average.is_floating_point():
                average.copy_(current)
            else:
                average.lerp_(current, 1.0 - decay)
        self.updates += 1
        if avg.get("lookahead", True):
            for average, current in zip(self.average, self.tensors, strict=True):
                current.copy_(average)
