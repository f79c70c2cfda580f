"""Temperature scaling: a known temperature recovered, an over-confident planted net fixed."""

from __future__ import annotations

import pytest
import torch

from cnnstress.core.data.sources import LabeledImages
from cnnstress.stress import calibration
from cnnstress.stress.calibration import (
    calibration_error,
    fit_temperature,
    nll,
)
from tests.stress.planted import ScaledLinear, context
from tests.stress_rows import value

pytestmark = pytest.mark.usefixtures("one_thread")


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
    assert out.info == {"fit_split": "test_half", "fit_images": 1000, "eval_images": 1000}
    assert value(out, "temperature") == pytest.approx(4.0, rel=0.15)
    assert value(out, "nll_after") < value(out, "nll_before") - 0.5
    assert value(out, "ece_after") < 0.05 < value(out, "ece_before")
    assert out.arrays["bins_before"]["count"].sum() == 1000
    assert list(tmp_path.iterdir()) == []
