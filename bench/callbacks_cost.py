"""Cost of the stress-test callbacks (failures, Grad-CAM, confusion/calibration) per epoch.

Trains simple_cnn for one epoch on CIFAR-10 (real images from ``$CNNSTRESS_DATA``, default
``../shared/datasets/cifar10-jpeg.zip``; 45,000 train / 5,000 validation / 10,000 test) twice
in this one process, alternating: the reference run has the three stress callbacks switched off
(``callbacks.{high_conf_failures,gradcam,evaluation}=null``, otherwise the same framework run),
the other keeps them at their default settings. Every hook of the stress callbacks is timed
from the inside as well, which is far less noisy than the difference of two wall times.

    python bench/callbacks_cost.py                       # CPU, default settings
    python bench/callbacks_cost.py --device cuda model=resnet18 trainer.precision=bf16-mixed

Prints the epoch (train + validation) and test times of both runs and the callbacks' own time:
the recurring cost per epoch (validation-end work, plus one Grad-CAM grid every
``every_n_epochs``) and the one-off cost per run (end of training and test), as % of an epoch.
Target: recurring cost <= 5% of an epoch. Extra arguments are Hydra overrides.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from cnnstress.app.configs import compose_config
from cnnstress.app.train import run_training
from cnnstress.train.callbacks import EvaluationCallback, GradCAMGrids, HighConfidenceFailures

STRESS = (HighConfidenceFailures, GradCAMGrids, EvaluationCallback)
STRESS_KEYS = ("high_conf_failures", "gradcam", "evaluation")
HOOKS = ("setup", "on_validation_epoch_end", "on_train_end", "on_test_epoch_end")


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StageTimer(L.Callback):
    """Wall time of the training epoch (validation included) and of the test; on setup, wraps
    every hook of the stress callbacks with a timer (``hook_seconds[(class, hook)]``)."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.test_seconds = 0.0
        self.hook_seconds: dict[tuple[str, str], float] = collections.defaultdict(float)
        self._start = 0.0
        TIMERS.append(self)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, STRESS) and not getattr(callback, "_timed", False):
                callback._timed = True
                for hook in HOOKS:
                    if getattr(type(callback), hook) is getattr(L.Callback, hook):
                        continue  # not implemented by this callback
                    setattr(callback, hook, self._timed(callback, hook, pl_module))

    def _timed(self, callback: L.Callback, hook: str, pl_module: L.LightningModule):
        method = getattr(callback, hook)
        key = (type(callback).__name__, hook)

        def run(*args, **kwargs):
            start = _sync(pl_module.device)
            try:
                return method(*args, **kwargs)
            finally:
                self.hook_seconds[key] += _sync(pl_module.device) - start

        return run

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = _sync(pl_module.device)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs the epoch's validation before this hook.
        self.epoch_seconds.append(_sync(pl_module.device) - self._start)

    def on_test_start(self, trainer, pl_module) -> None:
        self._start = _sync(pl_module.device)

    def on_test_end(self, trainer, pl_module) -> None:
        self.test_seconds = _sync(pl_module.device) - self._start


TIMERS: list[StageTimer] = []  # every StageTimer the configs instantiate, in order


def run_once(overrides: list[str], out: Path, stress: bool) -> StageTimer:
    off = [] if stress else [f"callbacks.{key}=null" for key in STRESS_KEYS]
    timer = [f"+callbacks.stage_timer._target_={__name__}.StageTimer"]
    run_training(compose_config(out, [*overrides, *off, *timer]))
    return TIMERS[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--val-size", type=int, default=5000)
    args, overrides = parser.parse_known_args()
    device = torch.device(args.device)
    overrides = [
        "model=simple_cnn",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"dataset.val_size={args.val_size}",
        *overrides,
    ]
    plain, stress = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # alternate, so drift in machine load hits both alike
            plain.append(run_once(overrides, Path(tmp) / f"plain{r}", stress=False))
            stress.append(run_once(overrides, Path(tmp) / f"stress{r}", stress=True))
            print(
                f"repeat {r}: epoch {plain[-1].epoch_seconds[0]:.2f} s without, "
                f"{stress[-1].epoch_seconds[0]:.2f} s with the stress callbacks; test "
                f"{plain[-1].test_seconds:.2f} s / {stress[-1].test_seconds:.2f} s"
            )
    cfg = compose_config(Path(tmp), overrides)
    every = cfg.callbacks.gradcam.every_n_epochs
    epoch_plain = min(t.epoch_seconds[0] for t in plain)
    epoch_stress = min(t.epoch_seconds[0] for t in stress)
    test_plain = min(t.test_seconds for t in plain)
    test_stress = min(t.test_seconds for t in stress)
    hooks = {k: min(t.hook_seconds.get(k, 0.0) for t in stress) for k in stress[0].hook_seconds}
    print(
        f"\nmodel={cfg.model.name} device={device} threads={torch.get_num_threads()} "
        f"batch={cfg.dataset.batch_size} val_size={args.val_size} repeats={args.repeats}"
    )
    print(f"epoch (train + val) without stress callbacks: {epoch_plain:8.2f} s  (reference)")
    print(f"epoch (train + val) with stress callbacks   : {epoch_stress:8.2f} s  "
          f"({100 * (epoch_stress / epoch_plain - 1):+.2f}% wall difference)")  # fmt: skip
    print(
        f"test without / with                         : {test_plain:8.2f} s / {test_stress:.2f} s"
    )
    print("\ntime inside the stress callbacks' hooks (best of repeats):")
    for (name, hook), seconds in sorted(hooks.items()):
        share = 100 * seconds / epoch_plain
        print(f"  {name:24s} {hook:26s} {seconds:7.3f} s  {share:6.2f}% of an epoch")
    val_end = sum(s for (_, h), s in hooks.items() if h == "on_validation_epoch_end")
    grid = hooks.get(("GradCAMGrids", "on_train_end"), 0.0)  # one grid with the epoch's failures
    recurring = val_end + (grid / every if every else 0.0)
    one_off = sum(s for (_, h), s in hooks.items() if h in ("on_train_end", "on_test_epoch_end"))
    print(
        f"\nrecurring per epoch (validation end + one Grad-CAM grid / {every} epochs): "
        f"{recurring:.3f} s = {100 * recurring / epoch_plain:.2f}% of an epoch (target <= 5%)"
    )
    print(
        f"  worst case, Grad-CAM every epoch: {val_end + grid:.3f} s = "
        f"{100 * (val_end + grid) / epoch_plain:.2f}%"
    )
    print(f"one-off per run (end of training + test): {one_off:.3f} s = "
          f"{100 * one_off / epoch_plain:.2f}% of one epoch")  # fmt: skip


if __name__ == "__main__":
    main()
