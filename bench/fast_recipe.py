"""The fast recipe (experiment=fast_cifar10): framework speed against a plain loop, and full runs.

Default mode: the recipe's training step through cnnstress (Lightning + Hydra, every default
callback, lookahead, images/s from the TrainSpeed callback) and through a hand-written loop in
this same process: the same FastNet (whitened from the same images), bf16 autocast,
channels_last, the same SGD parameter groups and OneCycle schedule, the same batched
augmentation (reflect crop 2 + flip) on uint8 batches of 1024, and the same lookahead every 5
steps; alternated ``--repeats`` times, best of each:

    python bench/fast_recipe.py [--steps 15] [--repeats 2] [hydra overrides]

``--full``: ``python train.py experiment=fast_cifar10 seed=S`` for each ``--seeds`` (0 1 2), one
after another, each in its own process and run directory (``--out``), with Lightning's
SimpleProfiler; prints test accuracy mean +- std, wall time per run and where it went
(training steps, data decoding, evaluation with TTA, callbacks, whitening init):

    python bench/fast_recipe.py --full [--seeds 0 1 2] [--out DIR] [hydra overrides]

Extra arguments are Hydra overrides (e.g. ``trainer.precision=bf16-mixed module.channels_last=true``
where those are not the defaults yet, ``improvement=label_smoothing``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import open_dict
from recipe_loop import RECIPE, PlainRecipe

from cnnstress.app.configs import compose_config
from cnnstress.app.train import run_training
from cnnstress.train.training import build_datamodule, resolve_config

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(cfg, steps: int, warmup: int = 3) -> float:
    """Images/s of a hand-written loop running the recipe's training step
    (:class:`recipe_loop.PlainRecipe`) on random batches."""
    resolve_config(cfg)
    torch.manual_seed(cfg.seed)
    dm = build_datamodule(cfg)
    dm.setup()
    train_set = dm.train_set
    images, labels = train_set.images[train_set.indices], train_set.labels[train_set.indices]
    recipe = PlainRecipe(cfg, dm, total_steps=steps + warmup)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch = cfg.dataset.batch_size
    shuffle = torch.randperm(len(labels))

    def step(i: int) -> None:
        idx = shuffle[(i * batch) % (len(labels) - batch) :][:batch]
        recipe.step(images[idx], labels[idx], generator)

    recipe.start_epoch(0)
    for i in range(warmup):  # Lightning's first steps also pay one-off costs
        step(i)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    return steps * batch / (time.perf_counter() - start)


def framework(cfg, steps: int) -> float:
    """Images/s measured by cnnstress's TrainSpeed callback (validation and test excluded)."""
    with open_dict(cfg):
        cfg.trainer.limit_train_batches = steps
        cfg.trainer.limit_val_batches = 1
        cfg.trainer.limit_test_batches = 1
        cfg.trainer.max_epochs = 1
        cfg.trainer.enable_progress_bar = False
    return run_training(cfg)["train/images_per_sec"]


def speed(args: argparse.Namespace, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for r in range(args.repeats):  # alternate, so drift in machine load hits both alike
            cfg = compose_config(Path(tmp) / f"plain{r}", [*RECIPE, *overrides])
            plain = plain_loop(cfg, args.steps)
            fw = framework(compose_config(Path(tmp) / f"fw{r}", [*RECIPE, *overrides]), args.steps)
            results.append((plain, fw))
            print(f"repeat {r}: plain {plain:7.1f} img/s   cnnstress {fw:7.1f} img/s", flush=True)
    plain, fw = max(p for p, _ in results), max(f for _, f in results)
    print(
        f"\nexperiment=fast_cifar10 precision={cfg.trainer.precision} "
        f"channels_last={cfg.module.channels_last} batch={cfg.dataset.batch_size} "
        f"steps={args.steps} threads={torch.get_num_threads()}"
    )
    print(f"plain PyTorch loop : {plain:7.1f} images/s (best of {args.repeats})")
    print(f"cnnstress framework: {fw:7.1f} images/s (best of {args.repeats})")
    print(f"ratio framework/plain: {fw / plain:.3f}  (target >= 0.95)")


# -- full runs ------------------------------------------------------------------------------------
def profile_totals(path: Path) -> dict[str, float]:
    """``{action: total seconds}`` from a SimpleProfiler report."""
    totals: dict[str, float] = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5:
            try:
                totals[cells[0]] = float(cells[3])
            except ValueError:
                continue
    return totals


def time_split(fit: dict[str, float], test: dict[str, float]) -> dict[str, float]:
    """Seconds per phase from the fit and test profiles."""

    def total(profile: dict[str, float], *patterns: str) -> float:
        return sum(t for a, t in profile.items() if any(p in a for p in patterns))

    return {
        "training steps (forward, backward, optimizer)": total(fit, "run_training_batch"),
        "batch fetch (uint8, all splits)": total(fit, "dataloader_next", "val_next")
        + total(test, "test_next"),
        "augmentation + normalisation (all batches)": total(fit, "on_after_batch_transfer")
        + total(test, "on_after_batch_transfer"),
        "data decoding (setup)": total(fit, "DataModule]CIFARDataModule.setup"),
        "validation forward passes (TTA)": total(fit, "validation_step"),
        "test forward passes (TTA)": total(test, "test_step"),
        "callbacks (fit, incl. checkpoints)": total(fit, "[Callback]"),
        "callbacks (test)": total(test, "[Callback]"),
        "whitening init (on_fit_start)": total(fit, "ClassifierModule.on_fit_start"),
        "profiled total (fit + test)": fit.get("Total", 0.0) + test.get("Total", 0.0),
    }


def full(args: argparse.Namespace, overrides: list[str]) -> None:
    out = Path(args.out or tempfile.mkdtemp(prefix="fast_recipe_"))
    rows = []
    for seed in args.seeds:
        run = out / f"seed{seed}"
        profile = [
            "+trainer.profiler._target_=lightning.pytorch.profilers.SimpleProfiler",
            f"+trainer.profiler.dirpath={run}",
            "+trainer.profiler.filename=profile",
        ]
        command = [
            sys.executable, str(ROOT / "train.py"), *RECIPE, f"seed={seed}",
            f"hydra.run.dir={run}", "trainer.enable_progress_bar=false", *profile, *overrides,
        ]  # fmt: skip
        print("$", " ".join(command[1:]), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        wall = time.perf_counter() - start
        metrics = json.loads((run / "metrics.json").read_text())
        split = time_split(
            profile_totals(run / "fit-profile.txt"), profile_totals(run / "test-profile.txt")
        )
        rows.append((seed, metrics, wall, split))
        print(
            f"seed {seed}: test/acc {metrics['test/acc']:.4f}  val/acc {metrics['val/acc']:.4f}  "
            f"wall {wall:.0f} s (in run_training(): {metrics['time/wall_seconds']:.0f} s)  "
            f"{metrics['train/images_per_sec']:.0f} train img/s",
            flush=True,
        )
        for phase, seconds in split.items():
            print(f"    {phase:52s} {seconds:7.1f} s")
    accs = [m["test/acc"] for _, m, _, _ in rows]
    walls = [w for _, _, w, _ in rows]
    spread = statistics.stdev(accs) if len(accs) > 1 else float("nan")
    print(f"\nruns in {out}")
    print(f"test/acc {statistics.mean(accs):.4f} +- {spread:.4f} (mean +- std, {len(accs)} seeds)")
    per_run = ", ".join(f"{w:.0f}" for w in walls)
    print(f"wall per run: {per_run} s (mean {statistics.mean(walls):.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="3-seed runs of train.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="--full: folder of the run directories")
    args, overrides = parser.parse_known_args()
    (full if args.full else speed)(args, overrides)


if __name__ == "__main__":
    main()
