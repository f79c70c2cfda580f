"""Measured image attributes, centre vs surround."""

from __future__ import annotations

import pytest
import torch

from cnnstress.core.failure_modes.attributes import ATTRIBUTES, image_attributes


def test_attributes_measure_what_they_say():
    grey = torch.full((1, 3, 32, 32), 100, dtype=torch.uint8)
    bright_surround = grey.clone()
    bright_surround[..., :8, :] = 250  # the top rows belong to the surround
    blue = grey.clone()
    blue[:, 2] = 200
    checker = ((torch.arange(32).view(-1, 1) + torch.arange(32)) % 2 * 255).to(torch.uint8)
    checker = checker.expand(1, 3, 32, 32).clone()
    values = image_attributes(torch.cat([grey, bright_surround, blue, checker]))
    assert set(values) == set(ATTRIBUTES)
    assert values["saturation_centre"][0] == 0 and values["saturation_centre"][2] > 0.4
    assert values["brightness_surround"][1] > values["brightness_surround"][0]
    assert values["brightness_centre"][1] == pytest.approx(values["brightness_centre"][0])
    assert values["blue_surround"][2] == pytest.approx(100 / 255)
    assert values["contrast"][0] == 0 and values["high_frequency"][0] == 0
    assert values["high_frequency"][3] == pytest.approx(1.0)  # all power at Nyquist
