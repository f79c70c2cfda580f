"""CAM/saliency computation and the Grad-CAM callback: localisation, and the model untouched."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cnnstress.app.train import run_training
from cnnstress.core.cam import METHODS, compute_heatmaps, hook_snapshot, predict_probs
from cnnstress.core.config import build
from cnnstress.core.data.classes import CIFAR10_CLASSES
from cnnstress.core.errors import ConfigError
from cnnstress.core.run_dir import read_metrics
from cnnstress.train.callbacks import GradCAMGrids
from cnnstress.train.training import build_datamodule, build_module, build_trainer
from tests.conftest import prepared


class LeftHalf(nn.Module):
    """Zero the right half (columns >= W/2) of a feature map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(x)
        mask[..., : x.shape[-1] // 2] = 1
        return x * mask


class LeftHalfNet(nn.Module):
    """Logits that depend only on the left half of the image (receptive field aside)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), LeftHalf()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():  # positive weights: every class logit grows with the features
            self.features[0].weight.abs_()
            self.features[0].bias.fill_(0.1)
            self.fc.weight.abs_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def model_state(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": hook_snapshot(model),
        "buffers": {k: v.clone() for k, v in model.state_dict().items()},
        "rng": torch.get_rng_state(),
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["modes"] == before["modes"]
    assert after["flags"] == before["flags"]
    assert after["hooks"] == before["hooks"]
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for key, value in before["buffers"].items():
        assert torch.equal(value, after["buffers"][key]), key
    assert torch.equal(after["rng"], before["rng"])


@pytest.fixture
def left_model_and_images():
    torch.manual_seed(0)
    model = LeftHalfNet()
    images = torch.rand(4, 3, 32, 32)
    return model, images


LOCALISING = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "scorecam", "saliency")


@pytest.mark.parametrize("method", LOCALISING)
def test_heatmap_mass_lies_in_the_left_half(left_model_and_images, method, capsys):
    model, images = left_model_and_images
    maps = compute_heatmaps(model, images, [3, 3, 7, 7], method, "features")
    assert capsys.readouterr().err == ""  # no progress bar (ScoreCAM draws one by default)
    assert maps.shape == (4, 32, 32) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    total = maps.sum(dim=(1, 2))
    assert (total > 0).all()
    left = maps[..., :16].sum(dim=(1, 2))
    assert (left / total > 0.95).all(), (left / total).tolist()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_leaves_the_model_as_found(left_model_and_images, method):
    model, images = left_model_and_images
    model.train()
    model.features[1].eval()  # mixed modes
    model.fc.bias.requires_grad_(False)  # a frozen parameter
    model.features[0].weight.grad = torch.full_like(model.features[0].weight, 0.5)
    user_hook = model.fc.register_forward_hook(lambda *args: None)  # must survive
    before = model_state(model)
    maps = compute_heatmaps(model, images, [1, 2, 3, 4], method, "features")
    assert maps.shape == (4, 32, 32) and torch.isfinite(maps).all()
    assert_same_state(before, model_state(model))
    assert len(model.fc._forward_hooks) == 1
    user_hook.remove()


def test_works_inside_inference_mode_autocast_and_channels_last(left_model_and_images):
    model, images = left_model_and_images
    model.eval()
    reference = compute_heatmaps(model, images, [1, 2, 3, 4], "gradcam", "features")
    with torch.inference_mode():  # as inside Lightning's validation and test loops
        frozen = images.clone()
        inside = compute_heatmaps(model, frozen, [1, 2, 3, 4], "gradcam", "features")
    torch.testing.assert_close(inside, reference)
    assert inside.sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # computed in float32 regardless
        mixed = compute_heatmaps(model, images, [1, 2, 3, 4], "gradcam", "features")
    torch.testing.assert_close(mixed, reference)
    model.to(memory_format=torch.channels_last)
    cl = compute_heatmaps(model, images, [1, 2, 3, 4], "gradcam", "features", channels_last=True)
    torch.testing.assert_close(cl, reference, atol=1e-4, rtol=1e-4)
    probs = predict_probs(model, images, channels_last=True)
    torch.testing.assert_close(probs.sum(1), torch.ones(4))


def test_unknown_layer_and_method_are_config_errors(left_model_and_images):
    model, images = left_model_and_images
    with pytest.raises(ConfigError, match="children are: features, pool, fc"):
        compute_heatmaps(model, images, [0] * 4, "gradcam", "layer9")
    with pytest.raises(ConfigError, match=r"features has no child 'nope'.* are: 0, 1, 2, 3"):
        compute_heatmaps(model, images, [0] * 4, "gradcam", "features.nope")
    with pytest.raises(ConfigError, match=r"must be one of gradcam, gradcam\+\+.*saliency"):
        compute_heatmaps(model, images, [0] * 4, "gradcamm", "features")


def test_bad_callback_settings_fail_at_start_up(make_config, tiny_cifar10_zip, tmp_path):
    with pytest.raises(ConfigError, match=r"callbacks.gradcam.method must be one of gradcam"):
        make_config("callbacks.gradcam.method=nope")
    with pytest.raises(
        ConfigError, match=r"callbacks.gradcam.threshold must be a probability in \[0, 1\]"
    ):
        make_config("callbacks.gradcam.threshold=2")
    cfg = make_config(f"dataset.root={tiny_cifar10_zip}", "callbacks.gradcam.target_layer=block9")
    with pytest.raises(ConfigError, match="children are: block1, block2, block3, fc"):
        run_training(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists(), "must fail before training"
    cfg = make_config(f"dataset.root={tiny_cifar10_zip}", "callbacks.gradcam.indices=[80]")
    with pytest.raises(ConfigError, match=r"indices \[80\] out of range.*valid 0\.\.79"):
        run_training(cfg)


def test_callback_leaves_the_trained_module_as_found(make_config, tiny_cifar10_zip, tmp_path):
    cfg = make_config(
        f"dataset.root={tiny_cifar10_zip}",
        "dataset.val_size=32",
        "callbacks.gradcam.threshold=0",
        "callbacks.gradcam.indices=[0,9]",
        "callbacks.gradcam.every_n_epochs=0",
        "trainer.limit_train_batches=2",
    )
    prepared(cfg)
    datamodule, module = build_datamodule(cfg), build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule)
    callback = next(c for c in trainer.callbacks if isinstance(c, GradCAMGrids))
    assert [p.split("/")[-1] for p in callback.written] == ["epoch_000.png"]

    module.train()
    module.net.block2.eval()
    module.net.fc.weight.requires_grad_(False)
    module.net.block1[0].weight.grad = torch.ones_like(module.net.block1[0].weight)
    before = model_state(module)
    callback._rendered_step = None
    callback.on_train_end(trainer, module)  # renders the validation failures + fixed images
    assert len(callback.written) == 2
    assert_same_state(before, model_state(module))
    assert all(not any(kinds) for kinds in hook_snapshot(module).values())


def test_callback_config_defaults(make_config):
    callback = build(make_config().callbacks.gradcam)
    assert isinstance(callback, GradCAMGrids)
    assert (callback.method, callback.target_layer) == ("gradcam", "block3")  # simple_cnn's


# Metrics that measure the machine, not the model.
TIMING = ("time/wall_seconds", "train/images_per_sec")


def test_default_callbacks_end_to_end_and_gradcam_changes_no_metric(
    make_config, tiny_cifar10_zip, tmp_path
):
    common = (
        f"dataset.root={tiny_cifar10_zip}",
        "dataset.val_size=32",
        "trainer.max_epochs=2",
        "callbacks.high_conf_failures.threshold=0.1",  # a barely trained model: few confident
        "callbacks.gradcam.threshold=0.1",
        "callbacks.gradcam.every_n_epochs=1",
        "callbacks.gradcam.indices=[3]",
    )
    with_cam = run_training(make_config(*common, output_dir=tmp_path / "cam"))
    run = tmp_path / "cam"
    for name in (
        "failures/failures.json",
        "failures/failures_grid.png",
        "failures/val_failures.json",
        "gradcam/epoch_000.png",
        "gradcam/epoch_001.png",
        "gradcam/test.png",
        "confusion_matrix.png",
        "confusion_matrix.json",
        "reliability.png",
        "reliability.json",
    ):
        assert (run / name).is_file(), name
    on_disk = read_metrics(run)
    for key in ("test/high_conf_failures", "test/ece", "val/high_conf_failures"):
        assert key in on_disk
    assert {f"test/acc_class/{name}" for name in CIFAR10_CLASSES} <= set(on_disk)
    failures = json.loads((run / "failures" / "failures.json").read_text())
    assert on_disk["test/high_conf_failures"] == failures["count"]

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"val/high_conf_failures", "test/high_conf_failures", "test/ece"} <= scalars
    assert {
        "val/high_conf_failures_grid",
        "test/high_conf_failures_grid",
        "val/gradcam",
        "test/gradcam",
        "test/confusion_matrix",
        "test/reliability",
    } <= images
    assert len(events.Images("val/gradcam")) == 2  # epochs 0 and 1; not again at train end

    without = run_training(
        make_config(*common, "callbacks.gradcam=null", output_dir=tmp_path / "plain")
    )
    assert not (tmp_path / "plain" / "gradcam").exists()
    drop = lambda m: {k: v for k, v in m.items() if k not in TIMING}  # noqa: E731
    assert drop(with_cam) == drop(without)
