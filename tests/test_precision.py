"""Precision and memory format: `auto` resolution, bf16 + channels_last runs, torch.compile."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from omegaconf import OmegaConf

import cnnstress.train.precision as precision
from cnnstress.app.train import run_training
from cnnstress.core.checkpoints import load_backbone
from cnnstress.core.errors import ConfigError
from cnnstress.core.run_dir import read_metrics, read_predictions
from cnnstress.stress import read_stress
from cnnstress.train.precision import resolve_auto
from cnnstress.train.training import build_trainer, cheap_cuda_checks

BF16 = ("trainer.precision=bf16-mixed", "module.channels_last=true")
# Metrics that measure the machine, not the model.
TIMING = ("time/wall_seconds", "train/images_per_sec")


def model_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in TIMING}


# -- auto resolution ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("native", "overrides", "expected"),
    [
        (True, (), ("bf16-mixed", True)),
        (False, (), ("32-true", False)),
        (True, ("trainer.precision=32-true", "module.channels_last=false"), ("32-true", False)),
        (True, ("trainer.precision=32-true",), ("32-true", False)),
        (False, ("trainer.precision=bf16-mixed",), ("bf16-mixed", True)),
        (False, ("module.channels_last=true",), ("32-true", True)),
    ],
)
def test_auto_on_the_cpu_follows_native_bf16_and_forced_values_stay(
    make_config, monkeypatch, native, overrides, expected
):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cfg = make_config(*overrides)  # trainer=cpu
    assert resolve_auto(cfg) == expected
    assert (cfg.trainer.precision, cfg.module.channels_last) == expected  # in the config
    assert resolve_auto(cfg) == expected  # idempotent


def test_auto_accelerator_is_the_one_lightning_picks(make_config):
    cfg = make_config("trainer=default")
    assert cfg.trainer.accelerator == "auto"
    device = precision.resolve_accelerator("auto")
    resolve_auto(cfg)
    trainer = build_trainer(cfg)
    assert type(trainer.accelerator).__name__.lower().startswith(device), trainer.accelerator


@pytest.mark.parametrize(("cuda", "expected"), [(False, "cpu"), (True, "cuda")])
def test_auto_and_gpu_accelerators_follow_availability(monkeypatch, cuda, expected):
    for name, available in (("XLA", False), ("MPS", False), ("CUDA", cuda)):
        accelerator = getattr(precision, f"{name}Accelerator")
        monkeypatch.setattr(accelerator, "is_available", staticmethod(lambda a=available: a))
    assert precision.resolve_accelerator("auto") == expected
    assert precision.resolve_accelerator("gpu") == "cuda"
    assert precision.resolve_accelerator("cpu") == "cpu"


def test_native_bf16_detection_reads_the_cpu_capabilities(monkeypatch):
    caps = {"avx512_bf16": False, "amx_bf16": False, "avx2": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert not precision.cpu_has_native_bf16()
    caps["avx512_bf16"] = True
    assert precision.cpu_has_native_bf16()
    caps.update(avx512_bf16=False, amx_bf16=True)
    assert precision.cpu_has_native_bf16()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.precision=fp8", "^trainer.precision must be one of auto, 32-true, .*got 'fp8'$"),
        (
            "module.channels_last=sometimes",
            "^module.channels_last must be true or false or one of auto",
        ),
        ("module.compile=maybe", "^module.compile must be true or false, got 'maybe'$"),
    ],
)
def test_bad_precision_memory_format_or_compile_is_a_config_error(make_config, override, message):
    with pytest.raises(ConfigError, match=message):
        run_training(make_config(override))


# -- bf16 + channels_last end to end --------------------------------------------------------
def test_bf16_channels_last_run_callbacks_stress_and_reevaluation(
    make_config, tiny_cifar10_zip, tmp_path
):
    cfg = make_config(
        f"dataset.root={tiny_cifar10_zip}", *BF16, "dataset.val_size=32",
        "callbacks.gradcam.indices=[0,1]", "stress=[adversarial]",
        "stress.adversarial.max_images=16", "stress.adversarial.pgd_steps=2",
    )  # fmt: skip
    metrics = run_training(cfg)
    run = tmp_path / "run"
    assert (cfg.trainer.precision, cfg.module.channels_last) == ("bf16-mixed", True)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    for key in ("train/loss", "train/acc", "val/acc", "test/acc", "test/loss", "test/ece"):
        assert math.isfinite(metrics[key]), key
    # The callbacks ran under bf16 and wrote their files.
    assert (run / "gradcam" / "test.png").is_file() and (
        run / "gradcam" / "epoch_000.png"
    ).is_file()
    assert (run / "failures" / "failures.json").is_file()
    matrix = json.loads((run / "confusion_matrix.json").read_text())
    assert np.asarray(matrix["matrix"]).sum() == 80
    # The stress (fp32, outside the Trainer) gives finite values.
    stress = read_stress(run)
    assert stress["adversarial/num_images"] == 16
    for key in ("adversarial/clean_acc", "adversarial/fgsm/eps8/acc", "adversarial/pgd/eps8/acc"):
        assert 0.0 <= stress[key] <= 1.0, key
    # Re-evaluating the checkpoint in bf16 reproduces the test metrics exactly.
    evaluation = tmp_path / "eval"
    again = run_training(
        make_config(
            f"dataset.root={tiny_cifar10_zip}", *BF16, "train=false",
            f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", output_dir=evaluation,
        )
    )  # fmt: skip
    test_keys = [k for k in metrics if k.startswith("test/")]
    assert len(test_keys) > 10
    assert {k: again[k] for k in test_keys} == {k: metrics[k] for k in test_keys}
    np.testing.assert_array_equal(
        read_predictions(run)["probs"], read_predictions(evaluation)["probs"]
    )


def test_bf16_same_seed_same_metrics(make_config, tiny_cifar10_zip, tmp_path):
    runs = [
        model_metrics(
            run_training(
                make_config(
                    f"dataset.root={tiny_cifar10_zip}", *BF16, "seed=5", output_dir=tmp_path / n
                )
            )
        )
        for n in ("a", "b")
    ]
    assert runs[0] == runs[1]
    assert read_metrics(tmp_path / "a")["train/loss"] == runs[0]["train/loss"]


# -- torch.compile ----------------------------------------------------------------------------
@pytest.mark.slow
def test_compile_runs_on_the_cpu_and_checkpoints_stay_loadable(
    make_config, tiny_cifar10_zip, tmp_path
):
    # Only the training step is compiled (one graph: one shape, drop_last); 2 batches suffice.
    torch._dynamo.reset()
    cfg = make_config(
        f"dataset.root={tiny_cifar10_zip}", "module.compile=true", "trainer.limit_train_batches=2"
    )
    metrics = run_training(cfg)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert math.isfinite(metrics["test/loss"])
    run = tmp_path / "run"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # as a Hydra run does
    net, _ = load_backbone(run)
    assert not isinstance(net, torch._dynamo.eval_frame.OptimizedModule)


# -- per-step overheads -----------------------------------------------------------------------
def test_a_disabled_progress_bar_is_left_out(make_config):
    cfg = make_config("trainer.enable_progress_bar=false")
    resolve_auto(cfg)
    assert build_trainer(cfg).progress_bar_callback is None  # Lightning refuses it otherwise


@pytest.mark.parametrize(
    ("accelerator", "cuda", "expected"),
    [("cpu", False, "0"), ("cpu", True, "1"), ("gpu", True, "1")],
)
def test_cuda_checks_are_cheap_again_only_on_cpu_runs_without_a_gpu(
    make_config, monkeypatch, accelerator, cuda, expected
):
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as `import lightning` sets it
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: cuda))
    cheap_cuda_checks(make_config(f"trainer.accelerator={accelerator}"))
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == expected


def test_train_loss_is_the_image_weighted_mean_over_the_epoch():

    from cnnstress.train.module import ClassifierModule

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    module = ClassifierModule(net, num_classes=3)
    gen = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.randn(n, 3, 2, 2, generator=gen), "target": torch.arange(n) % 3}
        for n in (5, 2)  # a short last batch weighs less
    ]
    losses = [float(module.training_step(b, i)) for i, b in enumerate(batches)]
    expected = (5 * losses[0] + 2 * losses[1]) / 7
    assert float(module.train_loss.compute()) == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(sum(losses) / 2)
