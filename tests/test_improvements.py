"""Improvements: configs that differ from the baseline in one named change, and their runs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnnstress.app.train import run_training
from cnnstress.core.augment import Cutout, RandomCrop, RandomHorizontalFlip
from cnnstress.core.config import build
from cnnstress.core.errors import ConfigError
from cnnstress.core.run_dir import read_metrics
from cnnstress.train.module import ClassifierModule, LossConfig, ModuleConfig
from cnnstress.train.training import build_datamodule
from tests.conftest import CONF_DIR, compose_train_config

IMPROVEMENTS = ["baseline", "cutout", "cutmix", "mixup", "augment", "label_smoothing"]
# What each improvement adds to the baseline (augmentation ops, loss.label_smoothing).
CHANGES = {
    "baseline": ([], 0.0),
    "cutout": (["cutout"], 0.0),
    "cutmix": (["cutmix"], 0.0),
    "mixup": (["mixup"], 0.0),
    "augment": (["rotation", "color_jitter", "erasing"], 0.0),
    "label_smoothing": ([], 0.1),
}


def flat(cfg) -> dict[str, object]:
    """The resolved config as ``{"dotted.key": leaf value}``."""
    out: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def test_every_improvement_file_is_listed():
    assert sorted(p.stem for p in (CONF_DIR / "improvement").glob("*.yaml")) == sorted(IMPROVEMENTS)


@pytest.mark.parametrize("name", IMPROVEMENTS)
def test_improvement_differs_from_baseline_only_in_augmentation_and_loss(name, tmp_path):
    baseline = flat(compose_train_config(tmp_path, ["improvement=baseline"]))
    improved = flat(compose_train_config(tmp_path, [f"improvement={name}"]))
    changed = {k for k in baseline.keys() | improved.keys() if baseline.get(k) != improved.get(k)}
    allowed = ("augmentation.", "module.loss.")
    assert all(k.startswith(allowed) or k == "improvement" for k in changed)
    assert improved["improvement"] == name
    ops, smoothing = CHANGES[name]
    assert {k.split(".")[1] for k in changed if k.startswith("augmentation.")} == set(ops)
    assert improved["module.loss.label_smoothing"] == smoothing
    assert baseline["augmentation.crop.padding"] == 4 and baseline["augmentation.flip.p"] == 0.5
    # Each added op comes with its own defaults.
    config = compose_train_config(tmp_path, [f"improvement={name}"])
    for op in ops:
        assert build(config.augmentation[op]) == type(build(config.augmentation[op]))()


def test_published_recipes(tmp_path):
    cutout = compose_train_config(tmp_path, ["improvement=cutout"]).augmentation
    assert cutout.cutout == {"size": 16, "p": 1.0, "fill": 0.0}
    cutmix = compose_train_config(tmp_path, ["improvement=cutmix"]).augmentation
    assert cutmix.cutmix == {"alpha": 1.0, "p": 0.5}


def test_augmentation_list_and_parameters_from_the_command_line(make_config, tiny_cifar10_zip):
    cfg = make_config(
        "augmentation=[cutout,flip,crop]",
        "augmentation.cutout.size=8",
        f"dataset.root={tiny_cifar10_zip}",
    )
    augment = build_datamodule(cfg).augment
    # Registry order, not the order of the list.
    assert [type(op) for op in augment.image_ops] == [RandomCrop, RandomHorizontalFlip, Cutout]
    assert augment.image_ops[2].size == 8 and augment.mix_op is None
    # A command-line augmentation list wins over the improvement's.
    cfg = make_config("improvement=cutmix", "augmentation=[crop,cutmix]", "augmentation.cutmix.p=1")
    assert list(cfg.augmentation) == ["crop", "cutmix"] and cfg.augmentation.cutmix.p == 1


def test_bad_augmentation_value_from_the_command_line_is_a_config_error(make_config):
    with pytest.raises(ConfigError, match=r"augmentation.cutout.size must be an integer >= 1"):
        make_config("improvement=cutout", "augmentation.cutout.size=0")


# -- soft targets in the loss, hard targets in the accuracy ------------------------------------
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_target_loss_equals_hand_computed_value(smoothing):
    # nn.Flatten as the backbone makes the (2, 3, 1, 1) "images" the logits themselves.
    config = ModuleConfig(channels_last=False, loss=LossConfig(label_smoothing=smoothing))
    module = ClassifierModule(nn.Flatten(), config, num_classes=3)
    logits = [[0.0, math.log(2), math.log(5)], [0.0, 0.0, 0.0]]  # softmax 1/8 2/8 5/8; 1/3 each
    soft = [[0.25, 0.75, 0.0], [0.0, 0.4, 0.6]]
    batch = {
        "image": torch.tensor(logits).view(2, 3, 1, 1),
        "target": torch.tensor([2, 1]),  # the hard labels: row 0 right, row 1 wrong (argmax 0)
        "index": torch.tensor([0, 1]),
        "soft_target": torch.tensor(soft),
    }
    log_probs = [[math.log(1 / 8), math.log(2 / 8), math.log(5 / 8)], [math.log(1 / 3)] * 3]
    expected = 0.0
    for row in range(2):
        for k in range(3):
            target = (1 - smoothing) * soft[row][k] + smoothing / 3
            expected -= target * log_probs[row][k] / 2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        loss = module.training_step(batch, 0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Accuracy against the hard target (0.5); against the soft targets' argmax it would be 0.
    assert module.train_acc.compute().item() == pytest.approx(0.5)


# -- augmentation runs in training only, and follows the seed --------------------------------
def _datamodule(make_config, zip_path: Path, *overrides: str):
    cfg = make_config(f"dataset.root={zip_path}", "improvement=cutmix", *overrides)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    datamodule.trainer = trainer
    return datamodule, trainer


def test_only_training_batches_are_augmented(make_config, tiny_cifar10_zip):
    datamodule, trainer = _datamodule(make_config, tiny_cifar10_zip, "augmentation.cutmix.p=1")
    batch = next(iter(datamodule.train_dataloader()))
    clean = datamodule.normalize(batch["image"])
    for stage in ("validating", "testing", "predicting"):
        setattr(trainer, stage, True)
        out = datamodule.on_after_batch_transfer(batch, 0)
        assert torch.equal(out["image"], clean) and "soft_target" not in out, stage
    trainer.training = True
    out = datamodule.on_after_batch_transfer(batch, 0)
    assert not torch.equal(out["image"], clean)
    assert out["soft_target"].shape == (16, 10) and torch.equal(out["target"], batch["target"])


def test_same_seed_gives_the_same_augmented_batches(make_config, tiny_cifar10_zip):
    def first_batch(*overrides: str) -> dict[str, torch.Tensor]:
        datamodule, trainer = _datamodule(make_config, tiny_cifar10_zip, *overrides)
        trainer.training = True
        batch = next(iter(datamodule.train_dataloader()))
        return datamodule.on_after_batch_transfer(batch, 0)

    a, b, c = first_batch("seed=3"), first_batch("seed=3"), first_batch("seed=4")
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["soft_target"], b["soft_target"])
    assert not torch.equal(a["image"], c["image"])


# -- every improvement trains end to end --------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", IMPROVEMENTS)
def test_tiny_run_of_each_improvement_writes_metrics(name, make_config, tiny_cifar10_zip, tmp_path):
    cfg = make_config(
        f"improvement={name}", f"dataset.root={tiny_cifar10_zip}", "trainer.limit_train_batches=4"
    )
    run_training(cfg)
    metrics = read_metrics(tmp_path / "run")
    for key in ("train/loss", "train/acc", "test/acc", "test/loss"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["train/acc"] <= 1.0 and 0.0 <= metrics["test/acc"] <= 1.0
