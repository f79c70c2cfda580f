"""The stress methods on planted models whose right answer is known: ROAD and the randomisation
cascade (a net that sees only the left half), temperature scaling (an over-confident net),
FGSM/PGD (eps 0 and the eps ball)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnnstress.core.data.sources import LabeledImages
from cnnstress.core.models import SimpleCNN, resnet18
from cnnstress.stress import adversarial, calibration, faithfulness
from cnnstress.stress.context import StressContext, accuracy
from cnnstress.stress.faithfulness import cascade, cascade_units, heatmaps, randomized_copy

pytestmark = pytest.mark.usefixtures("one_thread")


class LeftHalfNet(nn.Module):
    """Sees only the left half of the image: the right half is multiplied by 0 before a
    bias-free convolution, so its activations, gradients and CAMs there are 0."""

    def __init__(self, num_classes: int = 10, scale: float = 20.0) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)
        with torch.no_grad():
            self.fc.weight.mul_(scale)  # confident: the softmax reacts to what is removed
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., :16] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x * self.mask).mean((2, 3)))


def context(net: nn.Module, n: int = 64, tmp: Path | None = None, seed: int = 1) -> StressContext:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    cfg = OmegaConf.create({
        "dataset": {"name": "cifar10", "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3,
                    "eval_batch_size": 64, "val_size": 0},
        "model": {"target_layer": "features"},
    })  # fmt: skip
    return StressContext(tmp or Path("."), net.eval(), cfg, torch.device("cpu"),
                         LabeledImages(images, labels), "")  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_road_removing_the_most_relevant_pixels_hurts_more(seed, tmp_path):
    torch.manual_seed(seed)
    ctx = context(LeftHalfNet(), tmp=tmp_path)
    settings = faithfulness.FaithfulnessSettings(
        num_failures=16, num_images=16, road_percentiles=[20, 40]
    )
    out = faithfulness.evaluate(ctx, settings)
    assert out["faithfulness/num_failures"] == 16
    # Grad-CAM of this net is 0 on the right half, which the net ignores: removing the least
    # relevant pixels first barely moves the prediction, the most relevant first does.
    assert out["faithfulness/road/morf"] < out["faithfulness/road/lerf"] - 0.05
    assert out["faithfulness/road/combined"] > 0.02


def test_planted_cams_sit_on_the_half_the_net_sees():
    torch.manual_seed(0)
    net = LeftHalfNet().eval()
    images = torch.randn(8, 3, 32, 32)
    maps = heatmaps(net, images, net(images).argmax(1).tolist(), "gradcam", "features", 8)
    assert np.abs(maps[..., 17:]).max() == 0  # column 16 sees column 15 through the kernel
    assert maps[..., :16].max() > 0


def test_cascade_units_are_blocks_in_forward_order():
    assert cascade_units(SimpleCNN(width=4)) == ["block1", "block2", "block3", "fc"]
    units = cascade_units(resnet18())
    assert units == ["conv1", "bn1", "layer1.0", "layer1.1", "layer2.0", "layer2.1",
                     "layer3.0", "layer3.1", "layer4.0", "layer4.1", "fc"]  # fmt: skip
    # From the output down to the target layer's block, one block per step (Adebayo et al.).
    assert cascade(resnet18(), "layer3") == ["fc", "layer4.1", "layer4.0", "layer3.1", "layer3.0"]
    assert cascade(resnet18(), "layer3.1.conv2") == ["fc", "layer4.1", "layer4.0", "layer3.1"]
    assert cascade(SimpleCNN(width=4), "block3") == ["fc", "block3"]


def test_cascade_correlation_falls_from_one_once_weights_are_randomised(tmp_path):
    torch.manual_seed(0)
    net = LeftHalfNet()
    ctx = context(net, tmp=tmp_path)
    out = faithfulness.evaluate(
        ctx, faithfulness.FaithfulnessSettings(num_failures=0, num_images=32)
    )
    assert out["faithfulness/cascade_steps"] == 2
    steps = [out["faithfulness/cascade/01/fc/spearman"],
             out["faithfulness/cascade/02/features/spearman"]]  # fmt: skip
    # Control: an untouched copy explains exactly as the trained net (correlation 1).
    images = torch.randn(16, 3, 32, 32)
    classes = net(images).argmax(1).tolist()
    same = faithfulness.rank_correlations(
        heatmaps(net, images, classes, "gradcam", "features", 16),
        heatmaps(randomized_copy(net, [], 0), images, classes, "gradcam", "features", 16),
    )
    assert np.allclose(same, 1.0)
    # Re-initialising the head, then the features, moves the maps far from the trained ones.
    assert all(rho < 0.7 for rho in steps), steps
    assert out["faithfulness/randomization_spearman"] == steps[-1]
    assert (tmp_path / "stress_faithfulness.png").stat().st_size > 0


class ScaledLinear(nn.Module):
    """Logits ``scale * W x`` of a fixed random linear classifier."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.fc = nn.Linear(3 * 32 * 32, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.fc(x.flatten(1))


def test_temperature_scaling_fixes_an_over_confident_model(tmp_path):
    torch.manual_seed(0)
    net = ScaledLinear()
    ctx = context(net, n=2000, tmp=tmp_path)
    logits = ctx.clean_logits()
    net.scale = 2.0 / logits.std().item()  # logits of spread 2: a range of confidences
    ctx._clean_logits = None
    # Labels drawn from softmax(logits): at this scale the model is calibrated by construction.
    calibrated = ctx.clean_logits()
    g = torch.Generator().manual_seed(3)
    labels = torch.multinomial(calibrated.softmax(1), 1, generator=g)[:, 0]
    ctx.test = LabeledImages(ctx.test.images, labels)
    net.scale *= 4.0  # the same predictions, four times too sharp: temperature 4 undoes it
    ctx._clean_logits = None
    out = calibration.evaluate(ctx)
    assert out["calibration/fit_split"] == "test_half"
    assert out["calibration/temperature"] == pytest.approx(4.0, rel=0.15)
    assert out["calibration/nll_after"] < out["calibration/nll_before"] - 0.5
    assert out["calibration/ece_after"] < 0.05 < out["calibration/ece_before"]
    assert (tmp_path / "stress_calibration.png").stat().st_size > 0


def test_attacks_stay_in_the_eps_ball_and_eps_zero_is_clean(tmp_path):
    torch.manual_seed(0)
    net = SimpleCNN(width=4).eval()
    ctx = context(net, n=48, tmp=tmp_path)
    x = ctx.test.images.float() / 255
    y = ctx.test.labels
    model = ctx.model
    for eps in (0.0, 2 / 255, 8 / 255):
        for adv in (
            adversarial.fgsm(model, x, y, eps),
            adversarial.pgd(model, x, y, eps, steps=3, generator=torch.Generator().manual_seed(0)),
        ):
            assert adv.min() >= 0 and adv.max() <= 1
            assert (adv - x).abs().max() <= eps + 1e-6
    out = adversarial.evaluate(
        ctx, adversarial.AdversarialSettings(eps=[0], max_images=None, pgd_steps=2)
    )
    clean = accuracy(ctx.clean_logits(), y)
    assert out["adversarial/fgsm/eps0/acc"] == clean == out["adversarial/pgd/eps0/acc"]
    assert out["adversarial/clean_acc"] == clean
