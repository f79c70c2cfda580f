"""Where one epoch of a cnnstress fit goes: torch.profiler ranges grouped by component.

Lightning already opens a named range around every hook it calls (``[Callback]TrainSpeed.
on_train_batch_end``, ``[LightningModule]ClassifierModule.optimizer_step``, ``[Strategy]...
.backward``, ``[_TrainingEpochLoop].train_dataloader_next``, ``run_training_batch``, ...) through
its ``Profiler`` interface; :class:`RangeProfiler` turns each into a
``torch.profiler.record_function`` range, torch's optimizers add ``Optimizer.step#SGD.step``,
and :func:`time_metric_updates` adds one around each training-metric update. :class:`EpochProfile`
records the torch profiler over a one-epoch fit from its ``on_train_epoch_start`` to its
``on_train_end`` (it should be the first callback: the window then holds the epoch's steps, its
validation, the epoch-end logging and the checkpoints).

Attribution (:func:`breakdown`): every millisecond of the window goes to exactly one component.
A range's *own* time is its duration minus that of the ranges directly inside it (torch ops
inside a range count for the range). Each range's component comes from its name by the first
matching rule of :data:`RULES`; a range no rule matches belongs to its enclosing range's
component. The Lightning loop is the own time of ``run_training_epoch``/``run_training_batch``
(and of hooks with nothing to do) plus whatever ran outside every range (the loop's Python
between hooks, the logger connector): the window minus every other component.

Caveats: Lightning's closure runs *inside* the optimizer's step (forward and backward are
ranges within ``Optimizer.step#SGD.step``): their ranges are subtracted, so ``optimizer`` is the
update itself. ``validation`` is per epoch (its forward passes, its loader, its callbacks,
e.g. Grad-CAM grids), shown per training step for scale; checkpoint writing is its own row
wherever it happens. The profiler's own overhead (microseconds per op) lands in the components
that run the ops.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.profilers import Profiler
from torch.profiler import ProfilerActivity, record_function

METRICS_RANGE = "cnnstress.train_metrics.update"

# (component, substrings of range names), first match wins
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("validation (per epoch)", ("validation", "val_next", "val_dataloader")),
    ("checkpoints", ("save_checkpoint",)),
    ("(this profiler's callback)", ("EpochProfile",)),
    ("lookahead", ("WeightAverage",)),
    ("callbacks", ("[Callback]",)),
    ("metrics", (METRICS_RANGE, "ClassifierModule.on_train_epoch_end")),
    ("augmentation + normalisation", ("on_after_batch_transfer",)),
    ("data (batch gather)", ("train_dataloader_next", "batch_to_device", "batch_transfer")),
    ("backward", ("backward",)),
    ("forward + loss", ("training_step",)),
    ("optimizer (step, zero_grad)", ("Optimizer.", "optimizer_step", "optimizer_zero_grad",
                                     "on_before_optimizer_step", "gradient_clipping")),
    ("scheduler", ("lr_scheduler_step",)),
    ("Lightning loop (the rest)", ("run_training_epoch", "run_training_batch")),
]  # fmt: skip
REST = "Lightning loop (the rest)"
ORDER = [name for name, _ in RULES]


class RangeProfiler(Profiler):
    """Lightning's profiling hooks as ``torch.profiler.record_function`` ranges (no report of
    its own: a torch profiler, when one is recording, sees the ranges)."""

    def __init__(self) -> None:
        super().__init__()
        self._open: dict[str, list[record_function]] = defaultdict(list)

    def start(self, action_name: str) -> None:
        scope = record_function(action_name)
        scope.__enter__()
        self._open[action_name].append(scope)

    def stop(self, action_name: str) -> None:
        if self._open[action_name]:
            self._open[action_name].pop().__exit__(None, None, None)

    def summary(self) -> str:
        return ""


def time_metric_updates(*metrics: Any) -> None:
    """Wrap each torchmetrics metric's ``update`` (an instance attribute) in a range."""
    for metric in metrics:
        update = metric.update

        def ranged(*args: Any, _update: Callable = update, **kwargs: Any) -> Any:
            with record_function(METRICS_RANGE):
                return _update(*args, **kwargs)

        metric.update = ranged


class EpochProfile(L.Callback):
    """Record the torch profiler over a one-epoch fit's training epoch: from this callback's
    ``on_train_epoch_start`` to its ``on_train_end``, so put it first in the Trainer's callbacks.
    The window then holds every callback's epoch-start work, the steps, the validation, the
    LightningModule's epoch-end logging and the checkpoints (Lightning calls checkpoint
    callbacks' ``on_train_epoch_end`` after every other hook), but not the other callbacks'
    once-per-fit ``on_train_end`` work. :attr:`events`, :attr:`seconds` and :attr:`steps` after
    it."""

    def __init__(self) -> None:
        self.events: Any = None
        self.seconds = 0.0
        self.steps = 0
        self._profile: torch.profiler.profile | None = None
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self._profile = torch.profiler.profile(activities=[ProfilerActivity.CPU])
            self._profile.start()
            self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        if self._profile is not None:
            self.steps += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._profile is not None:
            self.seconds = time.perf_counter() - self._start
            self._profile.stop()  # (processes the trace: not in the window)
            self.events = self._profile.events()
            self._profile = None


def component_of(name: str) -> str | None:
    """The component of a range named ``name`` (:data:`RULES`), None when no rule matches."""
    for component, patterns in RULES:
        if any(p in name for p in patterns):
            return component
    return None


def _range_parent(event: Any) -> Any:
    parent = event.cpu_parent
    while parent is not None and not parent.is_user_annotation:
        parent = parent.cpu_parent
    return parent


def breakdown(events: Any, window_us: float) -> tuple[dict[str, float], Counter]:
    """``({component: microseconds}, {torch op: microseconds})`` of a profiled window.

    The components sum to ``window_us`` (the rest is :data:`REST`); the op counter holds the
    top-level torch ops that ran in the Lightning loop's own time, the place to look for
    lost time. Only the thread with the most ranges (the training loop's) is read.
    """
    ranges = [e for e in events if e.is_user_annotation]
    if not ranges:
        return {REST: window_us}, Counter()
    thread = Counter(e.thread for e in ranges).most_common(1)[0][0]
    ranges = [e for e in ranges if e.thread == thread]

    def duration(e: Any) -> float:
        # Event times count from the trace's start, a little before the caller's window starts:
        # no clipping to the window (a range open before the profiler started is not recorded).
        return e.time_range.end - e.time_range.start

    component: dict[int, str] = {}

    def assign(e: Any) -> str:
        if id(e) not in component:
            own = component_of(e.name)
            parent = _range_parent(e)
            component[id(e)] = own or (assign(parent) if parent is not None else REST)
        return component[id(e)]

    inside: dict[int, float] = defaultdict(float)
    for e in ranges:
        parent = _range_parent(e)
        if parent is not None:
            inside[id(parent)] += duration(e)
    totals = dict.fromkeys(ORDER, 0.0)
    for e in ranges:
        totals[assign(e)] += max(duration(e) - inside[id(e)], 0.0)
    totals[REST] += window_us - sum(totals.values())
    loop_ops: Counter = Counter()
    for e in events:
        if e.is_user_annotation or e.thread != thread:
            continue
        if e.cpu_parent is not None and not e.cpu_parent.is_user_annotation:
            continue  # not a top-level op
        parent = e.cpu_parent
        if parent is None or assign(parent) == REST:
            loop_ops[e.name] += duration(e)
    return totals, loop_ops


def profile_table(probe: EpochProfile, batch_size: int, top_ops: int = 6) -> str:
    """The breakdown of ``probe``'s epoch as a text table: ms per training step and share."""
    window_us = probe.seconds * 1e6
    totals, loop_ops = breakdown(probe.events, window_us)
    steps = max(probe.steps, 1)
    train_us = window_us - totals["validation (per epoch)"] - totals["checkpoints"]
    lines = [
        f"one profiled cnnstress epoch: {probe.steps} steps of {batch_size} images, "
        f"{probe.seconds:.1f} s ({probe.steps * batch_size / (train_us / 1e6):.0f} training "
        "images/s without validation and checkpoints)",
        f"{'component':34s} {'ms/step':>9s} {'share':>7s}",
    ]
    for name in ORDER:
        lines.append(
            f"{name:34s} {totals[name] / 1e3 / steps:9.1f} {totals[name] / window_us:7.1%}"
        )
    lines.append(f"{'total (the profiled window)':34s} {window_us / 1e3 / steps:9.1f} {1:7.1%}")
    if loop_ops:
        lines.append(f"torch ops in the Lightning loop's own time (top {top_ops}, ms/step):")
        for name, us in loop_ops.most_common(top_ops):
            lines.append(f"    {name:50s} {us / 1e3 / steps:7.2f}")
    return "\n".join(lines)
