"""What a fast-recipe user waits for: whole epochs via cnnstress, a plain loop, the bare step.

In one process, interleaved A B C A B C ... for ``--rounds`` rounds, each over ``--epochs``
whole epochs of the same batches (``--train-images`` of the recipe's training split, default
all of it; the batches of epoch ``e`` are those of the recipe's sampler for ``(seed, e)``):

* **A, cnnstress**: ``trainer.fit`` of the recipe's real config (``experiment=fast_cifar10``):
  Lightning Trainer, lookahead (WeightAverage), OneCycle per step, training metrics, every
  default callback (checkpoints, Grad-CAM, failures, TensorBoard, epoch log; the progress bar
  off, as in a redirected log), validation as configured. Images/s from its ``TrainSpeed``
  callback (the training epochs, validation excluded); the fit's wall time (with the whitening
  init, validation and checkpoints) beside it.
* **B, plain loop**: the same recipe hand-written (:class:`recipe_loop.PlainRecipe`): the same
  FastNet whitened from the same images, bf16 autocast when the recipe uses it,
  channels_last, the same SGD parameter groups and OneCycle schedule, the same batched
  on-device augmentation (the data module's, with its per-epoch generator), the lookahead;
  batches gathered from the same uint8 tensors in the same order.
* **C, bare model step**: forward + backward + optimizer step on batches augmented,
  normalised and laid out beforehand (the first epoch's, reused every epoch), nothing else.

Printed per round: images/s of each and the ratios A/B (target >= 0.95) and B/C (target >= 0.9),
then the medians; with the CPU model, torch version, thread count and the load average.

``--profile``: one more cnnstress epoch under torch.profiler, grouped by component (data,
augmentation, forward, backward, optimizer, scheduler, lookahead, metrics, callbacks, validation,
checkpoints, Lightning's loop = the rest); how time is attributed: ``bench/epoch_profile.py``.
``--bare-drift``: the bare step (one pass of C) also before the first round and after everything
else, to show the machine's drift over the run.

    python bench/epoch_speed.py [--rounds 3] [--epochs 1] [--train-images N] [--profile]
        [--bare-drift] [hydra overrides, e.g. dataset.root=... trainer.limit_val_batches=2]

Smoke run (a minute or two): ``--train-images 4096 --rounds 1 --profile --bare-drift``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from epoch_profile import EpochProfile, RangeProfiler, profile_table, time_metric_updates
from omegaconf import DictConfig, open_dict
from recipe_loop import PlainRecipe, recipe_config
from torch.utils.data import DistributedSampler

from cnnstress.core.console import quiet_library_noise
from cnnstress.core.data import CIFARDataModule
from cnnstress.core.errors import ConfigError
from cnnstress.train.callbacks import TrainSpeed
from cnnstress.train.training import (
    build_datamodule,
    build_module,
    build_trainer,
    cheap_cuda_checks,
)


def cpu_model() -> str:
    """``lscpu``'s Model name (the platform's processor string without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# -- the batches ----------------------------------------------------------------------------------
def epoch_rows(dm: CIFARDataModule, epoch: int, n_batches: int) -> list[torch.Tensor]:
    """Rows of ``dm.train_set`` for each of the first ``n_batches`` training batches of
    ``epoch``: the order of the data module's sampler (a ``DistributedSampler`` seeded with the
    run's seed, one process), as the Trainer's epoch ``epoch`` sees it."""
    sampler = DistributedSampler(dm.train_set, num_replicas=1, rank=0, shuffle=True, seed=dm.seed)
    sampler.set_epoch(epoch)
    positions = torch.as_tensor(list(sampler), dtype=torch.int64)[: n_batches * dm.batch_size]
    return list(dm.train_set.indices[positions].split(dm.batch_size))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The augmentation generator of ``epoch`` on the CPU, as
    :meth:`CIFARDataModule.augmentation_generator` seeds it for process 0."""
    state = int(np.random.SeedSequence([seed, epoch, 0]).generate_state(1)[0])
    return torch.Generator().manual_seed(state)


# -- the three paths ------------------------------------------------------------------------------
def cnnstress_fit(
    base: DictConfig, dm: CIFARDataModule, out: Path, epochs: int, n_batches: int,
    profile: bool = False, limit_val_batches: int | None = None,
) -> tuple[float, float, EpochProfile | None]:  # fmt: skip
    """A: ``(training images/s by TrainSpeed, fit wall seconds, the profile probe)``."""
    cfg = copy.deepcopy(base)
    with open_dict(cfg):
        if limit_val_batches is not None:
            cfg.trainer.limit_val_batches = limit_val_batches
        cfg.paths.output_dir = str(out)
        cfg.trainer.max_epochs = epochs
        cfg.trainer.limit_train_batches = n_batches
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    probe = None
    if profile:
        probe = EpochProfile()
        trainer.callbacks.insert(0, probe)  # first: see EpochProfile
        trainer.profiler = RangeProfiler()  # Lightning's hook ranges, for torch.profiler
        time_metric_updates(module.train_loss, module.train_acc)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - start
    speed = next(c for c in trainer.callbacks if isinstance(c, TrainSpeed))
    return speed.images_per_sec, wall, probe


def plain_loop(cfg: DictConfig, dm: CIFARDataModule, epochs: int, n_batches: int) -> float:
    """B: images/s of the recipe as a plain loop over the same batches (set-up not timed)."""
    recipe = PlainRecipe(cfg, dm, total_steps=epochs * n_batches)
    images, labels = dm.train_set.images, dm.train_set.labels
    start = time.perf_counter()
    for epoch in range(epochs):
        recipe.start_epoch(epoch)
        generator = epoch_generator(dm.seed, epoch)
        for rows in epoch_rows(dm, epoch, n_batches):
            recipe.step(images.index_select(0, rows), labels.index_select(0, rows), generator)
    return epochs * n_batches * dm.batch_size / (time.perf_counter() - start)


def augmented_batches(
    cfg: DictConfig, dm: CIFARDataModule, n_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first epoch's batches, augmented, normalised and laid out as the recipe's model
    takes them: ``[(x (B, 3, 32, 32) float32, y (B,) int64)]``."""
    recipe = PlainRecipe(cfg, dm, total_steps=n_batches)
    generator = epoch_generator(dm.seed, 0)
    batches = []
    for rows in epoch_rows(dm, 0, n_batches):
        y = dm.train_set.labels.index_select(0, rows)
        batches.append((recipe.prepare(dm.train_set.images.index_select(0, rows), y, generator), y))
    return batches


def bare_step(
    cfg: DictConfig, dm: CIFARDataModule, batches: list[tuple[torch.Tensor, torch.Tensor]],
    epochs: int,
) -> float:  # fmt: skip
    """C: images/s of the bare model step over ``epochs`` passes of ``batches`` (at the
    schedule's first learning rate, never stepped)."""
    recipe = PlainRecipe(cfg, dm, total_steps=epochs * len(batches))
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in batches:
            recipe.model_step(x, y)
    return epochs * len(batches) * len(batches[0][1]) / (time.perf_counter() - start)


# -- the run --------------------------------------------------------------------------------------
def run(args: argparse.Namespace, overrides: list[str]) -> None:
    quiet_library_noise()
    with tempfile.TemporaryDirectory(prefix="epoch_speed_") as tmp:
        measure(args, overrides, Path(tmp))


def measure(args: argparse.Namespace, overrides: list[str], tmp: Path) -> None:
    cfg = recipe_config(tmp / "config", overrides)
    cheap_cuda_checks(cfg)  # as train.py: no per-step NVML probe on a CPU-only machine
    torch.manual_seed(cfg.seed)
    dm = build_datamodule(cfg)
    started = time.perf_counter()
    dm.setup()  # decoded once; every path and every fit reads these tensors
    decode = time.perf_counter() - started
    batch, split = dm.batch_size, len(dm.train_set)
    images = split if args.train_images is None else min(args.train_images, split)
    n_batches = images // batch
    if n_batches < 1:
        raise ConfigError(f"--train-images {images} is less than one batch of {batch}")
    print(
        f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average {load()}",
        flush=True,
    )
    print(
        f"experiment=fast_cifar10 {' '.join(overrides)}: precision={cfg.trainer.precision} "
        f"channels_last={cfg.module.channels_last} batch={batch}; {args.epochs} epoch(s) of "
        f"{n_batches} batches ({n_batches * batch} of the {split} training images) per path; "
        f"data {cfg.dataset.root} decoded in {decode:.1f} s",
        flush=True,
    )
    batches = augmented_batches(cfg, dm, n_batches)
    # Not timed: oneDNN creates its primitives once per shape, and a process's first fit pays
    # Lightning's one-off costs (imports, first hooks); round 1 would otherwise carry them.
    warm = PlainRecipe(cfg, dm, total_steps=args.epochs * n_batches)
    for x, y in batches[:2]:
        warm.model_step(x, y)
    del warm
    cnnstress_fit(cfg, dm, tmp / "warm-up", 1, min(n_batches, 2), limit_val_batches=1)
    drift = []
    if args.bare_drift:
        drift.append((time.perf_counter(), bare_step(cfg, dm, batches, args.epochs)))
        print(f"bare step at the start: {drift[0][1]:7.1f} images/s", flush=True)
    rows = []
    for r in range(args.rounds):
        a, wall, _ = cnnstress_fit(cfg, dm, tmp / f"fit{r}", args.epochs, n_batches)
        b = plain_loop(cfg, dm, args.epochs, n_batches)
        c = bare_step(cfg, dm, batches, args.epochs)
        rows.append((a, b, c, wall))
        print(
            f"round {r + 1}: A cnnstress {a:7.1f}  B plain {b:7.1f}  C bare {c:7.1f} images/s"
            f"   A/B {a / b:.3f}  B/C {b / c:.3f}   (A's fit wall {wall:.1f} s; "
            f"load {load()})",
            flush=True,
        )
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    ab = statistics.median(a / b for a, b, _, _ in rows)
    bc = statistics.median(b / c for _, b, c, _ in rows)
    print(f"\nmedian of {args.rounds} round(s), images/s:")
    print(f"  A cnnstress (Lightning, recipe config) {med[0]:7.1f}")
    print(f"  B plain PyTorch loop (same recipe)     {med[1]:7.1f}")
    print(f"  C bare model step (fwd+bwd+optimizer)  {med[2]:7.1f}")
    print(f"  A/B {ab:.3f} (target >= 0.95)   B/C {bc:.3f} (target >= 0.9)")
    train_s = args.epochs * n_batches * batch / med[0]
    print(
        f"  A's fit: {med[3]:.1f} s wall, of which {train_s:.1f} s training steps; the rest "
        "(whitening init, validation, checkpoints, Lightning's set-up) "
        f"{med[3] - train_s:.1f} s",
        flush=True,
    )
    if args.profile:
        _, _, probe = cnnstress_fit(cfg, dm, tmp / "profile", 1, n_batches, profile=True)
        print("\n" + profile_table(probe, batch), flush=True)
    if args.bare_drift:
        drift.append((time.perf_counter(), bare_step(cfg, dm, batches, args.epochs)))
        (t0, start), (t1, end) = drift
        print(
            f"\nbare step: {start:7.1f} images/s at the start, {end:7.1f} at the end "
            f"({(t1 - t0) / 60:.1f} min later): end/start {end / start:.3f}"
        )
    print(f"load average at the end {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="A B C rounds (interleaved)")
    parser.add_argument("--epochs", type=int, default=1, help="whole epochs per path per round")
    parser.add_argument("--train-images", type=int, default=None,
                        help="images per epoch (default: the whole training split)")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="profile one cnnstress epoch")
    parser.add_argument("--bare-drift", action="store_true",
                        help="the bare step also at the start and the end of the run")  # fmt: skip
    args, overrides = parser.parse_known_args()
    if args.rounds < 1 or args.epochs < 1:
        parser.error("--rounds and --epochs must be >= 1")
    try:
        run(args, overrides)
    except ConfigError as err:
        raise SystemExit(f"cnnstress: error: {err}") from None


if __name__ == "__main__":
    main()
