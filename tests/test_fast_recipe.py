"""The fast recipe (issue 17): airbench's net, whitening init, lookahead/EMA, TTA, the recipe."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict

from cnnstress.app.train import run_training
from cnnstress.core.augment import RandomCrop, drop_unlisted_ops
from cnnstress.core.checkpoints import load_backbone
from cnnstress.core.config import build
from cnnstress.core.data.sources import load_split
from cnnstress.core.errors import ConfigError
from cnnstress.core.identity import run_identity
from cnnstress.core.models import FastNet, fast_net
from cnnstress.core.models.airbench import (
    BN_EPS,
    BN_MOMENTUM,
    WHITEN_EPS,
    patches,
    whitening_filters,
)
from cnnstress.core.run_dir import read_metrics, read_predictions
from cnnstress.stress.faithfulness import cascade_units
from cnnstress.train.callbacks import WeightAverage
from cnnstress.train.training import build_datamodule, build_module
from cnnstress.train.tta import tta_logits
from tests.conftest import NO_REAL_DATA, REAL_CIFAR10_ZIP, compose_train_config
from tests.test_training import model_metrics

CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)

# The recipe, made tiny: narrow net, small batches, 3 epochs, lookahead every 2 steps.
FAST_TINY = (
    "experiment=fast_cifar10",
    "model.net.widths=[8,16,16]",
    "model.net.init_images=64",
    "model.net.whiten_bias_epochs=1",
    "trainer=cpu",
    "trainer.precision=bf16-mixed",
    "module.channels_last=true",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=64",
    "dataset.val_size=32",
    "dataset.pin_memory=false",
    "callbacks.weight_averaging.every_n_steps=2",
)


def fast_config(out: Path, *overrides: str):
    out.mkdir(parents=True, exist_ok=True)
    return compose_train_config(out, [*FAST_TINY, *overrides])


# -- the network --------------------------------------------------------------------------------
def test_fast_net_shapes_parameters_and_blocks():
    net = fast_net(num_classes=10)
    assert sum(p.numel() for p in net.parameters()) == 1_972_792
    # whitening conv: 24 filters of 3x2x2 + bias; 3 groups of two 3x3 convs and two BNs; head
    expected = (24 * 12 + 24) + (24 * 64 + 64 * 64) * 9 + (64 * 256 + 256 * 256) * 9
    expected += 2 * 256 * 256 * 9 + 2 * 2 * (64 + 256 + 256) + 256 * 10
    assert expected == 1_972_792
    shapes = {}
    for name in ("whiten", "group1", "group2", "group3", "pool", "head"):
        module = net.get_submodule(name)
        module.register_forward_hook(lambda m, i, o, n=name: shapes.update({n: tuple(o.shape)}))
    net(torch.randn(2, 3, 32, 32))
    assert shapes == {
        "whiten": (2, 24, 31, 31),
        "group1": (2, 64, 15, 15),
        "group2": (2, 256, 7, 7),
        "group3": (2, 256, 3, 3),
        "pool": (2, 256, 1, 1),
        "head": (2, 10),
    }
    assert net.head.bias is None and not net.whiten.weight.requires_grad
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6
    assert all(m.momentum == BN_MOMENTUM == 0.4 and m.eps == BN_EPS for m in norms)
    assert all(not m.weight.requires_grad and torch.all(m.weight == 1) for m in norms)
    # conv filters start with a partial identity (dirac) as airbench's
    conv = net.group2.conv2.weight
    assert torch.equal(conv[:256, :, 1, 1], torch.eye(256))
    # the faithfulness cascade sees the groups as blocks; the default CAM layer is one of them
    assert cascade_units(net) == ["whiten", "group1", "group2", "group3", "head"]
    with pytest.raises(ConfigError, match=r"model\.net\.widths"):
        FastNet(widths=(64, 256))


def test_whitening_bias_trains_only_in_its_first_epochs():
    net = fast_net(whiten_bias_epochs=3)
    for epoch, trains in [(0, True), (2, True), (3, False), (9, False)]:
        net.on_train_epoch_start(epoch)
        # frozen through the optimizer (tests/test_ddp_fast_recipe.py): it keeps its gradient
        assert net.whiten.bias.requires_grad
        assert any(p is net.whiten.bias for p in net.frozen_parameters()) is not trains
    assert fast_net(whiten_bias_epochs=0).frozen_parameters() == []
    assert not fast_net(whiten_bias_epochs=0).whiten.bias.requires_grad


@pytest.mark.skipif(not REAL_CIFAR10_ZIP.is_file(), reason=NO_REAL_DATA)
def test_whitening_init_whitens_patches_of_real_images(real_cifar10_subset_zip):
    images = load_split(real_cifar10_subset_zip, "cifar10", "train").images
    x = (images.float() / 255 - CIFAR_MEAN) / CIFAR_STD
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    fit, held_out = x[order[:500]], x[order[500:1000]]

    def covariance(filters: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(images.double(), filters[:12].double())  # (N, 12, 31, 31)
        rows = out.permute(0, 2, 3, 1).reshape(-1, 12)
        return rows.T @ rows / rows.shape[0]

    raw = patches(fit.double())
    eigenvalues = torch.linalg.eigvalsh(raw.T @ raw / raw.shape[0]).flip(0)
    assert eigenvalues[0] / eigenvalues[-1] > 1e4  # raw 2x2 patches: far from white
    # Without regularisation the whitened patches of the fitted images are exactly white.
    exact = covariance(whitening_filters(fit, eps=0.0), fit)
    torch.testing.assert_close(exact, torch.eye(12, dtype=exact.dtype), atol=1e-4, rtol=0)
    # airbench's eps shrinks only the weakest components, to lambda / (lambda + eps).
    net = fast_net()
    net.init_from_data(fit)
    weights = net.whiten.weight
    torch.testing.assert_close(weights[12:], -weights[:12])
    fitted = covariance(weights, fit)
    shrink = (eigenvalues / (eigenvalues + WHITEN_EPS)).to(fitted.dtype)
    torch.testing.assert_close(fitted, torch.diag(shrink), atol=1e-5, rtol=1e-4)
    assert shrink[:6].min() > 0.9  # the strongest components (99.9% of the variance) are white
    # On other images of the same data the covariance stays near the identity.
    other = covariance(weights, held_out)
    spread = torch.linalg.eigvalsh(other)
    assert spread.min() > 0.1 and spread.max() < 2.0, spread
    assert (other.diag()[:6] - 1).abs().max() < 0.5


# -- test-time augmentation ---------------------------------------------------------------------
def by_hand_shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., i, j] = images[..., r(i - dy), r(j - dx)]``, r reflecting at the border."""
    h, w = images.shape[-2:]

    def reflect(i: torch.Tensor, n: int) -> torch.Tensor:
        return torch.where(i < 0, -i, torch.where(i >= n, 2 * (n - 1) - i, i))

    rows = reflect(torch.arange(h) - dy, h)
    cols = reflect(torch.arange(w) - dx, w)
    return images[..., rows[:, None], cols[None, :]]


def test_tta_is_the_weighted_mean_of_the_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)
    ).eval()
    images = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        plain = model(images)
        flip = model(images.flip(-1))
        views = [plain, flip]
        for dy in (1, -1):
            shifted = by_hand_shift(images, dy, dy)
            views += [model(shifted), model(shifted.flip(-1))]
        torch.testing.assert_close(tta_logits(model, images, None), plain)
        torch.testing.assert_close(tta_logits(model, images, "flip"), (plain + flip) / 2)
        weights = [1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8]
        expected = sum(w * v for w, v in zip(weights, views, strict=True))
        torch.testing.assert_close(tta_logits(model, images, "flip_translate"), expected)
    # a one-pixel shift of a ramp moves it by one, the border reflected
    ramp = torch.arange(5.0).expand(1, 1, 5, 5)
    assert by_hand_shift(ramp, 0, 1)[0, 0, 0].tolist() == [1, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown test-time augmentation 'mirror'"):
        tta_logits(model, images, "mirror")


# -- the recipe's config --------------------------------------------------------------------------
def test_recipe_settings_and_improvements_compose(tmp_path):
    base = compose_train_config(tmp_path, ["experiment=fast_cifar10"])
    assert base.model.name == "fast_net" and base.dataset.batch_size == 1024
    assert base.dataset.val_size == 5000 and base.trainer.max_epochs == 10
    module = base.module
    assert module.optimizer.lr == 1.5 and module.optimizer.momentum == 0.85
    assert module.optimizer.nesterov is True
    # airbench's per-1024-example summed-loss values translated to the mean loss
    assert module.optimizer.lr == pytest.approx(11.5 / (1 + 1 / (1 - 0.85)))
    assert module.optimizer.weight_decay == pytest.approx(0.0153 / 11.5, rel=1e-4)
    assert module.param_groups.norm_bias == {"lr_scale": 64.0, "weight_decay_scale": 1 / 64}
    assert base.augmentation.crop == {"padding": 2, "p": 1.0, "padding_mode": "reflect"}
    assert module.loss.label_smoothing == 0.0 and module.tta == "flip_translate"
    assert module.tta_val is False  # validation with 6 views would cost a quarter of training
    averaging = build(base.callbacks.weight_averaging)
    assert isinstance(averaging, WeightAverage) and averaging.decay == 0.7737809375

    cutout = compose_train_config(tmp_path, ["experiment=fast_cifar10", "improvement=cutout"])
    assert set(cutout.augmentation) == {"crop", "flip", "cutout"}
    assert cutout.augmentation.crop == base.augmentation.crop
    smoothing = compose_train_config(
        tmp_path, ["experiment=fast_cifar10", "improvement=label_smoothing"]
    )
    assert smoothing.module.loss.label_smoothing == 0.1
    for improved in (cutout, smoothing):  # the recipe's training choices stay
        for key in ("optimizer", "scheduler", "param_groups", "tta"):
            assert improved.module[key] == base.module[key], key
        assert improved.dataset == base.dataset and improved.trainer == base.trainer
    c100 = compose_train_config(tmp_path, ["experiment=fast_cifar100"])
    assert c100.dataset.name == "cifar100" and build(c100.model.net).head.out_features == 100
    # the averaging callback is part of a run's identity
    fast = run_identity(OmegaConf.to_container(base, resolve=True))
    assert fast["module.tta"] == "flip_translate"
    assert fast["callbacks.weight_averaging.lookahead"] is True


def test_recipe_crop_settings_do_not_add_a_crop_to_other_lists(tmp_path):
    none = compose_train_config(tmp_path, ["experiment=fast_cifar10", "augmentation=[]"])
    assert set(none.augmentation) == {"crop"}  # only the recipe's two crop settings
    assert drop_unlisted_ops(none) == ["crop"] and not none.augmentation
    crop = compose_train_config(tmp_path, ["experiment=fast_cifar10", "augmentation=[crop]"])
    assert drop_unlisted_ops(crop) == []
    assert crop.augmentation.crop == {"padding": 2, "p": 1.0, "padding_mode": "reflect"}


def test_tta_applies_to_test_and_optionally_to_validation(tmp_path):
    cfg = compose_train_config(tmp_path, ["experiment=fast_cifar10", "model.net.widths=[8,8,8]"])
    module = build_module(cfg)
    assert (module.tta_mode("test"), module.tta_mode("val")) == ("flip_translate", None)
    with open_dict(cfg):
        cfg.module.tta_val = True
    assert build_module(cfg).tta_mode("val") == "flip_translate"


def test_norm_biases_get_scaled_rates_also_under_one_cycle(tmp_path):
    cfg = compose_train_config(tmp_path, ["experiment=fast_cifar10", "model.net.widths=[8,8,8]"])
    module = build_module(cfg)
    module._trainer = SimpleNamespace(estimated_stepping_batches=100)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    default, norm_bias = optimizer.param_groups
    biases = {id(m.bias) for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in norm_bias["params"]} == biases
    assert len(default["params"]) + len(biases) == len(list(module.parameters()))
    assert norm_bias["weight_decay"] == pytest.approx(default["weight_decay"] / 64)
    # airbench's triangle: 0.2 x peak at the start, the peak after 23% of the steps, 0.07 x peak
    rates = []
    for _ in range(100):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    rates = np.array(rates)
    np.testing.assert_allclose(rates[:, 1], 64 * rates[:, 0])
    assert rates[0, 0] == pytest.approx(0.2 * 1.5)
    assert rates[:, 0].max() == pytest.approx(1.5) and rates[:, 0].argmax() == 22
    assert rates[-1, 0] == pytest.approx(0.07 * 1.5, rel=0.05)
    assert optimizer.param_groups[0]["momentum"] == 0.85  # OneCycle leaves the momentum alone


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+module.param_groups.conv.lr_scale=2", r"unknown key module\.param_groups\.conv"),
        (
            "module.param_groups.norm_bias.lr_scale=0",
            r"module\.param_groups\.norm_bias\.lr_scale must be a number > 0, got 0",
        ),
    ],
)
def test_bad_parameter_groups_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        compose_train_config(tmp_path, ["experiment=fast_cifar10", override])


def test_reflect_crop_moves_images_without_zero_borders():
    images = torch.rand(64, 3, 8, 8) + 0.5  # no zeros anywhere
    generator = torch.Generator().manual_seed(0)
    out = RandomCrop(padding=2, padding_mode="reflect")(images, generator)
    assert out.min() > 0  # zero padding would show
    # every output is one of the 25 reflect-padded shifts of its input
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    shifts = torch.stack(
        [padded[..., i : i + 8, j : j + 8] for i in range(5) for j in range(5)], dim=1
    )
    matches = (shifts == out[:, None]).flatten(2).all(-1)
    assert matches.any(1).all() and matches.float().argmax(1).unique().numel() > 10
    with pytest.raises(ConfigError, match="must be < the image size"):
        RandomCrop(padding=8, padding_mode="reflect")(images, generator)


# -- averaged weights -----------------------------------------------------------------------------
def test_averaged_weights_are_what_is_evaluated_and_checkpointed(tiny_cifar10_zip, tmp_path):
    run = tmp_path / "ema"
    cfg = fast_config(
        run,
        f"dataset.root={tiny_cifar10_zip}",
        "module.tta=null",
        "trainer.precision=32-true",  # float32, so predictions can be compared closely
        "callbacks.weight_averaging.lookahead=false",
        "callbacks.weight_averaging.every_n_steps=1",
        "callbacks.weight_averaging.decay_power=0",
        "callbacks.weight_averaging.decay=0.8",
    )
    metrics = run_training(cfg)
    assert metrics["test/tta_views"] == 1
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    averaged, current = best["state_dict"], best["current_model_state"]
    assert not torch.equal(averaged["net.group1.conv1.weight"], current["net.group1.conv1.weight"])

    # The tested predictions are those of the averaged weights in best.ckpt, not the training ones.
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    test_set = datamodule.test_set
    x = datamodule.normalize(test_set.images[test_set.indices])
    net, _ = load_backbone(run, ckpt=run / "checkpoints" / "best.ckpt")
    with torch.no_grad():
        probs = net(x).softmax(1)
        net.load_state_dict({k[4:]: v for k, v in current.items() if k.startswith("net.")})
        current_probs = net(x).softmax(1)
    saved = read_predictions(run)["probs"]
    np.testing.assert_allclose(saved, probs.numpy(), atol=1e-5)
    assert np.abs(saved - current_probs.numpy()).max() > 1e-2


def test_recipe_is_deterministic_and_resumes_exactly_with_lookahead(tiny_cifar10_zip, tmp_path):
    common = (f"dataset.root={tiny_cifar10_zip}", "module.tta=flip")
    full = model_metrics(run_training(fast_config(tmp_path / "full", *common)))
    again = model_metrics(run_training(fast_config(tmp_path / "again", *common)))
    assert full == again
    assert full["test/tta_views"] == 2 and full["val/tta_views"] == 1  # the recipe: tta_val=false

    crashed = tmp_path / "crashed"
    crash = ("+callbacks.crash._target_=tests.helpers.CrashAtEpoch", "+callbacks.crash.epoch=2")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(fast_config(crashed, *common, *crash))
    last = crashed / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert {"current_model_state", "averaging_state"} <= set(state)
    assert state["global_step"] == 16  # after epoch 1: 8 steps per epoch, an update every 2
    assert state["callbacks"]["WeightAverage"]["latest_update_step"] == state["global_step"]
    assert int(state["averaging_state"]["n_averaged"]) == state["global_step"] // 2
    resumed = model_metrics(run_training(fast_config(crashed, *common, f"ckpt_path={last}")))
    assert resumed == full
    np.testing.assert_array_equal(
        read_predictions(crashed)["probs"], read_predictions(tmp_path / "full")["probs"]
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("callbacks.weight_averaging.decay=1.5", r"callbacks\.weight_averaging\.decay must be"),
        (
            "callbacks.weight_averaging.every_n_steps=0",
            r"callbacks\.weight_averaging\.every_n_steps must be an integer >= 1",
        ),
    ],
)
def test_weight_average_rejects_bad_settings(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        compose_train_config(tmp_path, ["experiment=fast_cifar10", override])


# -- it learns -------------------------------------------------------------------------------------
@pytest.mark.skipif(not REAL_CIFAR10_ZIP.is_file(), reason=NO_REAL_DATA)
def test_fast_recipe_learns_on_real_images(real_cifar10_subset_zip, tmp_path):
    cfg = fast_config(
        tmp_path / "run",
        f"dataset.root={real_cifar10_subset_zip}",
        "model.net.widths=[32,64,64]",
        "model.net.init_images=1000",
        "dataset.batch_size=256",
        "dataset.val_size=500",
        "callbacks.weight_averaging.every_n_steps=5",
        "callbacks.gradcam=null",
    )
    metrics = run_training(cfg)
    # 2,500 real training images, 3 epochs of 9 steps: chance is 0.10.
    assert metrics["test/acc"] > 0.3, metrics
    assert read_metrics(tmp_path / "run")["test/tta_views"] == 6
