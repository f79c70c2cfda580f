"""bench/epoch_speed.py (issue 26): the three paths and the profile run end to end on a tiny zip;
the profile's attribution of nested ranges to components."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, record_function

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def epoch_profile(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import epoch_profile

    return epoch_profile


def test_breakdown_gives_each_range_its_own_time_and_sums_to_the_window(epoch_profile):
    # A planted step: Lightning's closure runs inside the optimizer's step, the metrics update
    # inside training_step, an unnamed range inside backward.
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        with record_function("run_training_batch"):
            with record_function("Optimizer.step#SGD.step"):
                with record_function("[Strategy]SingleDeviceStrategy.training_step"):
                    time.sleep(0.02)
                    with record_function(epoch_profile.METRICS_RANGE):
                        time.sleep(0.01)
                with (
                    record_function("[Strategy]SingleDeviceStrategy.backward"),
                    record_function("something unnamed"),
                ):
                    time.sleep(0.015)
            with record_function("[Callback]WeightAverage.on_train_batch_end"):
                time.sleep(0.005)
            with record_function("[Callback]TrainSpeed.on_train_batch_end"):
                time.sleep(0.005)
        window_us = (time.perf_counter() - start) * 1e6
    events = prof.events()
    totals, _ = epoch_profile.breakdown(events, window_us)
    assert sum(totals.values()) == pytest.approx(window_us)
    assert set(totals) == set(epoch_profile.ORDER)
    step_range = next(e for e in events if "training_step" in e.name)
    forward, metrics = totals["forward + loss"], totals["metrics"]
    assert forward >= 20_000 and metrics >= 10_000
    # nested ranges are not counted twice: forward's own time excludes the metrics update
    assert forward + metrics <= step_range.time_range.elapsed_us() + 1
    assert totals["backward"] >= 15_000  # the unnamed range inherits its parent's component
    assert totals["lookahead"] >= 5_000 and totals["callbacks"] >= 5_000
    optimizer_range = next(e for e in events if e.name.startswith("Optimizer.step"))
    assert totals["optimizer (step, zero_grad)"] < optimizer_range.time_range.elapsed_us() / 2
    assert totals["validation (per epoch)"] == 0.0


def test_component_rules(epoch_profile):
    of = epoch_profile.component_of
    assert of("[Callback]HighConfidenceFailures.on_validation_epoch_end") == (
        "validation (per epoch)"
    )
    assert of("[Callback]WeightAverage.on_save_checkpoint") == "checkpoints"
    assert of("[LightningDataModule]CIFARDataModule.on_after_batch_transfer") == (
        "augmentation + normalisation"
    )
    assert of("[_TrainingEpochLoop].train_dataloader_next") == "data (batch gather)"
    assert of("[LightningModule]ClassifierModule.lr_scheduler_step") == "scheduler"
    assert of("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__") is None


@pytest.mark.slow
def test_epoch_speed_runs_the_three_paths_and_the_profile(tiny_cifar10_zip, tmp_path):
    # The recipe, made tiny (fp32: bf16 kernels of 8-channel convolutions are slow on CPUs).
    command = [
        sys.executable, str(BENCH / "epoch_speed.py"), "--train-images", "64", "--rounds", "1",
        "--profile", "--bare-drift", f"dataset.root={tiny_cifar10_zip}",
        "model.net.widths=[8,16,16]", "model.net.init_images=64", "trainer=cpu",
        "trainer.precision=32-true", "module.channels_last=false", "dataset.batch_size=16",
        "dataset.eval_batch_size=64", "dataset.val_size=32", "dataset.pin_memory=false",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))}
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "CPU: " in text and f"torch {torch.__version__}" in text
    assert "1 epoch(s) of 4 batches (64 of the 128 training images)" in text
    row = re.search(
        r"round 1: A cnnstress +([\d.]+) +B plain +([\d.]+) +C bare +([\d.]+) images/s"
        r" +A/B ([\d.]+) +B/C ([\d.]+)",
        text,
    )
    assert row is not None, text
    a, b, c, ab, bc = (float(v) for v in row.groups())
    assert min(a, b, c) > 0
    # (from the printed, rounded speeds)
    assert ab == pytest.approx(a / b, rel=0.02) and bc == pytest.approx(b / c, rel=0.02)
    assert "one profiled cnnstress epoch: 4 steps of 16 images" in text
    shares = re.findall(r"^(\S.*?) +([\d.]+) +([\d.]+)%$", text, flags=re.MULTILINE)
    table = {name.strip(): float(share) for name, _, share in shares}
    assert {"forward + loss", "backward", "lookahead", "Lightning loop (the rest)"} <= set(table)
    assert table["total (the profiled window)"] == 100.0
    parts = sum(v for k, v in table.items() if k != "total (the profiled window)")
    assert parts == pytest.approx(100.0, abs=0.1 * len(table))
    assert re.search(r"bare step: +[\d.]+ images/s at the start, +[\d.]+ at the end", text)
