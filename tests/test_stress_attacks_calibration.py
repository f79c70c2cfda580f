"""FGSM / PGD against hand-computed gradients and their constraints; temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnstress.core.errors import ConfigError
from cnnstress.stress.adversarial import eps_key, fgsm, parse_eps, pgd
from cnnstress.stress.calibration import (
    calibration_error,
    fit_temperature,
    logit_bins,
    nll,
)
from cnnstress.stress.context import NormalizedModel

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_model(num_classes: int, seed: int = 0) -> NormalizedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))
    with torch.no_grad():  # moderate margins: no softmax probability rounds to 0 or 1
        net[1].weight.mul_(0.05)
    return NormalizedModel(net, MEAN, STD).eval()


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    """Images in [0, 1] including exact 0 and 1 pixels (where clamping matters)."""
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    images[:, 0, :4] = 0.0
    images[:, 1, :4] = 1.0
    return images


def test_fgsm_on_a_binary_linear_model_is_the_closed_form():
    model = linear_model(2)
    x = pixels(6)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    w = model.net[1].weight.detach().view(2, 3, 32, 32)
    # d CE / d x = p_other (w_other - w_y) / std: its sign is that of w_other - w_y.
    direction = torch.stack([(w[1 - c] - w[c]).sign() for c in y.tolist()])
    for eps in (1 / 255, 8 / 255):
        expected = (x + eps * direction).clamp(0, 1)
        torch.testing.assert_close(fgsm(model, x, y, eps), expected, rtol=0, atol=1e-6)


def test_fgsm_follows_the_hand_computed_gradient_with_many_classes():
    model = linear_model(10)
    x, y = pixels(8), torch.arange(8)
    weight = model.net[1].weight.detach()
    with torch.no_grad():
        probs = model(x).softmax(1)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    grad = ((probs - onehot) @ weight).view(8, 3, 32, 32) / torch.tensor(STD).view(1, 3, 1, 1)
    expected = (x + (2 / 255) * grad.sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, 2 / 255), expected, rtol=0, atol=1e-6)
    assert not any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_the_eps_ball_and_in_pixel_range_and_hurts_more_than_clean(random_start):
    model = linear_model(10, seed=1)
    x, y = pixels(16, seed=1), torch.arange(16) % 10
    loss = torch.nn.functional.cross_entropy
    for eps in (1 / 255, 8 / 255):
        generator = torch.Generator().manual_seed(0)
        adv = pgd(model, x, y, eps, steps=5, random_start=random_start, generator=generator)
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        with torch.no_grad():
            assert loss(model(adv), y) > loss(model(x), y)
        again = pgd(model, x, y, eps, 5, None, random_start, torch.Generator().manual_seed(0))
        assert torch.equal(adv, again)


def test_adversarial_radii_are_numbers_or_fractions():
    assert [parse_eps(e) for e in ["8/255", 0.01]] == [pytest.approx(8 / 255), 0.01]
    assert [eps_key(parse_eps(e)) for e in ["8/255", 0.01]] == ["eps8", "eps2.55"]
    assert parse_eps("1/255") == pytest.approx(1 / 255)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+stress.adversarial.epsilon=[1]",
            r"unknown key stress\.adversarial\.epsilon; valid keys",
        ),
        (
            "stress.adversarial.eps=[8]",
            r"adversarial.eps must be a non-empty list, each item a number in \[0, 1\] or",
        ),
        (
            "stress.adversarial.attacks=[cw]",
            r"attacks must be a non-empty list, each item one of fgsm, pgd",
        ),
    ],
)
def test_bad_adversarial_settings_are_config_errors(make_config, override, message):
    with pytest.raises(ConfigError, match=message):
        make_config("stress=[adversarial]", override)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(temperature):
    g = torch.Generator().manual_seed(0)
    true_logits = 2.0 * torch.randn(20000, 10, generator=g)
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=g).squeeze(1)
    observed = true_logits * temperature  # over-confident for T > 1
    fitted = fit_temperature(observed, labels)
    assert fitted == pytest.approx(temperature, rel=0.05)
    assert nll(observed / fitted, labels) <= nll(observed, labels) + 1e-9
    if temperature != 1.0:
        assert calibration_error(observed / fitted, labels) < calibration_error(observed, labels)


def test_reliability_bins_reproduce_torchmetrics_ece():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(5000, 10, generator=g)
    labels = torch.randint(0, 10, (5000,), generator=g)
    bins = logit_bins(logits, labels, 15)
    weights = bins["count"] / bins["count"].sum()
    gaps = np.nan_to_num(np.abs(bins["accuracy"] - bins["confidence"]))
    assert bins["count"].sum() == 5000
    assert float((weights * gaps).sum()) == pytest.approx(
        calibration_error(logits, labels, 15), abs=1e-5
    )
