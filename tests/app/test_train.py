"""End-to-end training runs composed from the real configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnstress.app.train import run_training
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.run_dir import read_metrics, read_predictions, read_record
from tests.conftest import NO_REAL_DATA, REAL_CIFAR10_ZIP, ROOT, TINY_RUN, compose_train_config

# Metrics that measure the machine, not the model.
TIMING = ("time/wall_seconds", "train/images_per_sec")


def model_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in TIMING}


@pytest.mark.slow
def test_tiny_run_writes_every_run_file(make_config, tiny_cifar10_zip, tmp_path):
    cfg = make_config(f"dataset.root={tiny_cifar10_zip}", "dataset.val_size=32")
    metrics = run_training(cfg)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    on_disk = read_metrics(run)
    assert on_disk == pytest.approx(metrics)
    for key in ("test/acc", "test/loss", "test/acc_top5", "val/acc", "train/loss", *TIMING):
        assert key in on_disk
    assert on_disk["train/images_per_sec"] > 0
    preds = read_predictions(run)
    assert preds["probs"].shape == (80, 10) and preds["probs"].dtype == np.float32
    np.testing.assert_array_equal(preds["index"], np.arange(80))
    np.testing.assert_array_equal(preds["target"], np.repeat(np.arange(10), 8))
    np.testing.assert_allclose(preds["probs"].sum(1), 1.0, rtol=1e-5)
    accuracy = (preds["probs"].argmax(1) == preds["target"]).mean()
    assert on_disk["test/acc"] == pytest.approx(accuracy)
    log_probs = np.log(preds["probs"][np.arange(80), preds["target"]])
    assert on_disk["test/loss"] == pytest.approx(-log_probs.mean(), rel=1e-4)

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/acc", "val/loss", "test/acc", "test/loss"} <= scalars
    assert "train/lr" in scalars and not any(tag.startswith("lr-") for tag in scalars)
    assert on_disk["train/lr"] == pytest.approx(on_disk["train/base_lr"]) == cfg.module.optimizer.lr
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_differs(make_config, tiny_cifar10_zip, tmp_path):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        cfg = make_config(
            f"dataset.root={tiny_cifar10_zip}", f"seed={seed}", output_dir=tmp_path / name
        )
        runs[name] = model_metrics(run_training(cfg))
    assert runs["a"] == runs["b"]
    assert runs["a"]["test/loss"] != runs["c"]["test/loss"]


@pytest.mark.slow
def test_resume_after_a_crash_matches_an_uninterrupted_run(make_config, tiny_cifar10_zip, tmp_path):
    common = (f"dataset.root={tiny_cifar10_zip}", "trainer.max_epochs=3", "dataset.val_size=32")
    full = model_metrics(run_training(make_config(*common, output_dir=tmp_path / "full")))

    crashed = tmp_path / "crashed"
    crash = ("+callbacks.crash._target_=tests.helpers.CrashAtEpoch", "+callbacks.crash.epoch=2")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(make_config(*common, *crash, output_dir=crashed))
    assert not (crashed / "metrics.json").exists(), "a failed run must not claim success"
    last = crashed / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1  # the latest epoch, best or not

    # Resuming continues in the crashed run's directory (see conf/hydra/default.yaml).
    resumed = model_metrics(
        run_training(make_config(*common, f"ckpt_path={last}", output_dir=crashed))
    )
    assert resumed == full
    np.testing.assert_array_equal(
        read_predictions(crashed)["probs"], read_predictions(tmp_path / "full")["probs"]
    )


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("module.optimizer.lr=-0.1", ConfigError, "optimizer.lr must be a number > 0, got -0.1"),
        ("dataset.batch_size=-4", ConfigError, "dataset.batch_size must be an integer >= 1"),
        ("module.loss.label_smoothing=1.5", ConfigError, "module.loss.label_smoothing"),
        ("augmentation.flip.p=1.5", ConfigError, "augmentation.flip.p must be a probability"),
        ("ckpt_path=/no/such.ckpt", ConfigError, "ckpt_path=/no/such.ckpt does not exist"),
        (
            "dataset.root=/no/such/copy.zip",
            DataError,
            "pass a local copy of cifar10 as dataset.root=PATH",
        ),
    ],
)
def test_user_mistakes_raise_clear_errors(make_config, tmp_path, override, error, message):
    with pytest.raises(error, match=message):  # composing, or running, the config
        run_training(make_config(override))
    assert not (tmp_path / "run" / "metrics.json").exists()


def run_train_py(*overrides: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY_RUN, *overrides],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_user_error_is_one_line_without_traceback(tiny_cifar10_zip, tmp_path):
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(tiny_cifar10_zip.read_bytes()[:3000])
    result = run_train_py(f"dataset.root={corrupt}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("cnnstress: error")]
    assert len(errors) == 1 and "cannot read zip" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=resnet1000", "unknown model option 'resnet1000'; valid choices: fast_net, "
         "preact_resnet18, resnet18, simple_cnn, wide_resnet"),
        ("augmentation=[crop,blur]", "unknown augmentation option 'blur'; valid choices: "
         "color_jitter, crop, cutmix, cutout, erasing, flip, mixup, rotation"),
    ],
    ids=["option", "option in a list"],
)  # fmt: skip
def test_cli_unknown_option_lists_valid_choices(tmp_path, override, message):
    result = run_train_py(override, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"cnnstress: error: {message}"


@pytest.mark.slow
def test_cli_cifar100_run_leaves_every_file(tiny_cifar100_zip, tmp_path):
    run = tmp_path / "run"
    result = run_train_py(
        "dataset=cifar100", f"dataset.root={tiny_cifar100_zip}", "trainer.limit_train_batches=4",
        f"hydra.run.dir={run}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = read_metrics(run)
    assert {"test/acc", "test/loss", "test/acc_top5", *TIMING} <= set(metrics)
    preds = read_predictions(run)
    assert preds["probs"].shape == (100, 100)
    np.testing.assert_array_equal(preds["target"], np.arange(100))


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CIFAR10_ZIP.is_file(), reason=NO_REAL_DATA)
def test_simple_cnn_learns_on_real_images(make_config, real_cifar10_subset_zip):
    cfg = make_config(
        f"dataset.root={real_cifar10_subset_zip}", "model.net.width=32", "dataset.batch_size=64"
    )
    metrics = run_training(cfg)
    # 3,000 real training images, one epoch: chance is 0.10.
    assert metrics["test/acc"] > 0.25, metrics


def test_bad_trainer_argument_is_a_config_error(make_config):
    with pytest.raises(ConfigError, match=r"^bad trainer setting: .*gradient_clip_algorithm"):
        run_training(make_config("+trainer.gradient_clip_algorithm=foo"))


@pytest.mark.slow
def test_run_without_logger_still_writes_run_files(make_config, tiny_cifar10_zip, tmp_path):
    run_training(make_config(f"dataset.root={tiny_cifar10_zip}", "~logger"))
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.parametrize(
    "overrides",
    [[], ["dataset=cifar100"], ["experiment=simple_cnn_cifar10"], ["experiment=resnet18_cifar10"],
     ["experiment=resnet18_cifar100"], ["experiment=fast_cifar10"], ["experiment=fast_cifar100"]],
)  # fmt: skip
def test_validation_split_is_on_by_default_and_in_every_recipe(tmp_path, overrides):
    cfg = compose_train_config(tmp_path, overrides)
    assert cfg.dataset.val_size == 5000 and cfg.dataset.val_seed == 0


@pytest.mark.slow
def test_a_redirected_log_is_a_short_readable_record(tiny_cifar10_zip, tmp_path):
    """Output to a pipe (not a terminal): no progress bar, one line per epoch, no library
    noise the user cannot act on, no line printed twice."""
    tiny = [o for o in TINY_RUN if not o.startswith("trainer.enable_progress_bar")]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *tiny, f"dataset.root={tiny_cifar10_zip}",
         "trainer.max_epochs=2", "dataset.val_size=32", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout + result.stderr
    assert "\r" not in out and "it/s" not in out
    epochs = [line for line in out.splitlines() if "cnnstress.train.callbacks.progress" in line]
    assert [line.split("] - ")[1].split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("img/s" in line and "val loss" in line and "ETA" in line for line in epochs)
    for noise in ("litlogger", "LeafSpec", "does not have many workers", "Test metric"):
        assert noise not in out, noise
    assert out.count("GPU available") == 1
    assert "test: acc " in out
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("cnnstress.train.callbacks.progress") == 2 and "\r" not in log
    assert read_record(tmp_path / "run").config["trainer"]["enable_progress_bar"] is False
