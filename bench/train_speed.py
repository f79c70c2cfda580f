"""Training throughput: cnnstress (Lightning + Hydra) against a plain PyTorch loop.

Both train the same model on the same uint8 data with the same batched augmentation
(crop + flip, run on the device), in the same precision and memory format (the run's resolved
``trainer.precision`` and ``channels_last``: bf16 autocast + channels_last on a CPU with
native bf16 or a GPU of compute capability >= 8.0, fp16 autocast with a gradient scaler on a
7.x GPU), with the data where the run keeps it (``dataset.on_device``: on the GPU for CUDA),
for the same number of steps, in this one process:

    python bench/train_speed.py                      # simple_cnn, CPU, 150 steps of 128
    python bench/train_speed.py model=resnet18 --device cuda --steps 300
    python bench/train_speed.py experiment=fast_cifar10 --device cuda

Prints, per repeat (plain loop, then framework), images/s of each (the framework's from its
TrainSpeed callback, over the whole epoch) and the median and 10th-percentile step times; then a
paired measurement: one framework epoch of steps x repeats steps with a plain step run right
after every framework step, so other jobs on the machine slow both alike; the median of the
per-pair ratios is the most robust figure on a shared machine. Target on CPU with simple_cnn:
>= 0.95.
Extra arguments are Hydra overrides of conf/train.yaml.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from cnnstress.app.configs import compose_config
from cnnstress.app.train import run_training
from cnnstress.core.config import build
from cnnstress.train.training import build_datamodule, resolve_config

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
# The precisions the plain loop reproduces, and their autocast dtype (None: no autocast).
AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
WARMUP = 5  # steps before timing starts (plain loop) or not counted (per-step framework times)


class PlainLoop:
    """A hand-written training loop over the same data, model, optimizer and augmentation as
    the framework, in the precision and memory format it resolves for ``cfg``."""

    def __init__(self, cfg, device: torch.device) -> None:
        resolve_config(cfg)
        precision, channels_last = cfg.trainer.precision, cfg.module.channels_last
        if precision not in AUTOCAST:
            raise SystemExit(f"the plain loop supports {', '.join(AUTOCAST)}, not {precision}")
        self.autocast = AUTOCAST[precision]
        # fp16 needs a gradient scaler (Lightning's 16-mixed uses torch.amp.GradScaler too)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = device
        torch.manual_seed(cfg.seed)
        self.dm = build_datamodule(cfg)
        self.dm.setup()
        self.images = self.dm.train_set.images[self.dm.train_set.indices]
        self.labels = self.dm.train_set.labels[self.dm.train_set.indices]
        if cfg.dataset.get("on_device"):  # as the framework: the split lives on the device
            self.images, self.labels = self.images.to(device), self.labels.to(device)
        net = build(cfg.model.net).to(device, memory_format=self.memory_format)
        self.net = net.train()
        self.optimizer = build(cfg.module.optimizer)(params=self.net.parameters())
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.mean, self.std = self.dm.mean.to(device), self.dm.std.to(device)
        self.batch = cfg.dataset.batch_size
        self.order = torch.randperm(len(self.labels)).to(self.images.device)
        self.steps = 0

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def step(self) -> float:
        """One training step; returns its duration in seconds."""
        # As in a script that never imported Lightning (which sets this variable at import and
        # so makes torch.optim's per-step CUDA check an NVML probe); cnnstress' training resets it
        # for CPU runs without a GPU.
        saved = os.environ.pop(NVML_CHECK, None)
        try:
            return self._step()
        finally:
            if saved is not None:
                os.environ[NVML_CHECK] = saved

    def _step(self) -> float:
        start = self.now()
        first = (self.steps * self.batch) % (len(self.labels) - self.batch)
        idx = self.order[first : first + self.batch]
        x = self.images.index_select(0, idx).to(self.device, non_blocking=True)
        y = self.labels.index_select(0, idx).to(self.device)
        x, _ = self.dm.augment(x, y, self.generator)
        x = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        dtype = self.autocast or torch.bfloat16
        with torch.autocast(self.device.type, dtype, enabled=self.autocast is not None):
            logits = self.net(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.steps += 1
        return self.now() - start


class StepTimes(L.Callback):
    """Per-step durations of the framework; with ``PAIRED`` set, also runs one plain step after
    every framework step (timed apart), so both see the same machine load."""

    last: StepTimes | None = None
    PAIRED: PlainLoop | None = None

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.plain: list[float] = []
        StepTimes.last = self

    def on_train_batch_start(self, *args: object) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_batch_end(self, *args: object) -> None:
        if self.PAIRED is not None:
            self.plain.append(self.PAIRED.step())

    def on_train_epoch_end(self, *args: object) -> None:
        self.stamps.append(time.perf_counter())

    def durations(self) -> list[float]:
        """Framework step durations after the first ``WARMUP``, paired plain steps excluded."""
        steps = [b - a for a, b in itertools.pairwise(self.stamps)]
        if self.plain:
            steps = [s - p for s, p in zip(steps, self.plain, strict=True)]
        return steps[WARMUP:]


def build_datamodule_split(cfg) -> torch.Tensor:
    """The training split's rows (to count the steps one framework epoch holds)."""
    dm = build_datamodule(cfg)
    dm.setup()
    return dm.train_set.indices


def plain_loop(cfg, steps: int, device: torch.device) -> tuple[float, list[float]]:
    """Images/s of the plain loop over ``steps`` timed steps, and the duration of each."""
    loop = PlainLoop(cfg, device)
    for _ in range(WARMUP):  # one-off costs (kernel selection, allocations), paid by both
        loop.step()
    start = loop.now()
    durations = [loop.step() for _ in range(steps)]
    return steps * loop.batch / (loop.now() - start), durations


def framework(cfg, steps: int, paired: PlainLoop | None = None) -> tuple[float, list[float]]:
    """Images/s measured by cnnstress's TrainSpeed callback (the whole epoch, validation and
    test excluded), and the duration of each step after the first ``WARMUP``. With ``paired``,
    a plain step runs after each framework step (then the images/s are not meaningful)."""
    train_images = len(build_datamodule_split(cfg))
    needed = steps + (WARMUP if paired else 0)
    if needed > train_images // cfg.dataset.batch_size:
        raise SystemExit(
            f"train_speed: {needed} framework steps need {needed * cfg.dataset.batch_size} "
            f"training images in one epoch, the data has {train_images}: use fewer --steps or "
            "--repeats, or a smaller dataset.batch_size"
        )
    with open_dict(cfg):
        cfg.trainer.limit_train_batches = needed
        cfg.trainer.limit_test_batches = 1
        cfg.trainer.max_epochs = 1
        cfg.trainer.enable_progress_bar = False
        cfg.callbacks.step_times = {"_target_": f"{__name__}.StepTimes"}
    StepTimes.PAIRED = paired
    try:
        speed = run_training(cfg)["train/images_per_sec"]
    finally:
        StepTimes.PAIRED = None
    return speed, StepTimes.last.durations()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args, overrides = parser.parse_known_args()
    if args.steps <= WARMUP:
        parser.error(f"--steps must be more than the {WARMUP} warm-up steps")
    device = torch.device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    # simple_cnn unless the overrides pick a model (or a recipe, which picks one)
    picks = any(o.split("=")[0].lstrip("+~") in ("model", "experiment") for o in overrides)
    default_model = [] if picks else ["model=simple_cnn"]
    overrides = [*default_model, f"trainer.accelerator={accelerator}", *overrides]
    ms = 1e3
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for r in range(args.repeats):  # alternate, so drift in machine load hits both alike
            cfg = compose_config(Path(tmp) / f"run{r}", overrides)
            plain, plain_steps = plain_loop(cfg, args.steps, device)
            fw, fw_steps = framework(compose_config(Path(tmp) / f"fw{r}", overrides), args.steps)
            steps = plain_steps, fw_steps
            medians = [statistics.median(t) * ms for t in steps]
            fastest = [statistics.quantiles(t, n=10)[0] * ms for t in steps]
            results.append((plain, fw, *medians, *fastest))
            print(f"repeat {r}: plain {plain:7.1f} img/s, cnnstress {fw:7.1f} img/s; step median "
                  f"/ p10: plain {medians[0]:.2f} / {fastest[0]:.2f} ms, cnnstress "
                  f"{medians[1]:.2f} / {fastest[1]:.2f} ms")  # fmt: skip
        # Paired: a plain step right after every framework step, in the same process and the
        # same seconds, so machine load (other jobs) hits both alike.
        cfg = compose_config(Path(tmp) / "paired", overrides)
        loop = PlainLoop(cfg, device)
        for _ in range(WARMUP):
            loop.step()
        _, fw_paired = framework(cfg, args.steps * args.repeats, paired=loop)
        plain_paired = StepTimes.last.plain[WARMUP:]
    best = [max(r[i] for r in results) for i in (0, 1)]
    best += [min(r[i] for r in results) for i in (2, 3, 4, 5)]
    print(f"\nmodel={cfg.model.name} device={device} batch={cfg.dataset.batch_size} "
          f"steps={args.steps} threads={torch.get_num_threads()} "
          f"precision={cfg.trainer.precision} channels_last={cfg.module.channels_last}; "
          f"best of {args.repeats}")  # fmt: skip
    for name, i in (("plain PyTorch loop ", 0), ("cnnstress framework", 1)):
        print(f"{name}: {best[i]:7.1f} images/s, step median {best[2 + i]:.2f} ms, "
              f"step p10 {best[4 + i]:.2f} ms")  # fmt: skip
    print(f"ratio framework/plain: {best[1] / best[0]:.3f} images/s, {best[2] / best[3]:.3f} "
          f"step median, {best[4] / best[5]:.3f} step p10 (target >= 0.95)")  # fmt: skip
    pair_ratios = [p / f for p, f in zip(plain_paired, fw_paired, strict=True)]
    print(f"paired, {len(pair_ratios)} adjacent step pairs: median step plain "
          f"{statistics.median(plain_paired) * ms:.2f} ms, cnnstress "
          f"{statistics.median(fw_paired) * ms:.2f} ms; median ratio "
          f"{statistics.median(pair_ratios):.3f} (target >= 0.95)")  # fmt: skip


if __name__ == "__main__":
    main()
