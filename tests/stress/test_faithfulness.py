"""Faithfulness on planted models whose right answer is known: ROAD and the randomisation cascade
on a net that sees only the left half."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnstress.core.models import SimpleCNN, resnet18
from cnnstress.stress import faithfulness
from cnnstress.stress.faithfulness import cascade, cascade_units, heatmaps, randomized_copy
from tests.stress.planted import LeftHalfNet, context
from tests.stress_rows import row, value

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_road_removing_the_most_relevant_pixels_hurts_more(seed, tmp_path):
    torch.manual_seed(seed)
    ctx = context(LeftHalfNet(), tmp=tmp_path)
    settings = faithfulness.FaithfulnessSettings(
        num_failures=16, num_images=16, road_percentiles=[20, 40]
    )
    out = faithfulness.evaluate(ctx, settings)
    assert out.info["num_failures"] == 16
    # Grad-CAM of this net is 0 on the right half, which the net ignores: removing the least
    # relevant pixels first barely moves the prediction, the most relevant first does.
    morf, lerf = value(out, "road", order="morf"), value(out, "road", order="lerf")
    assert morf < lerf - 0.05
    assert value(out, "road", order="combined") == pytest.approx((lerf - morf) / 2)
    assert value(out, "road", order="combined") > 0.02
    assert all(row(out, "road", order=o).headline for o in ("morf", "lerf", "combined"))


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
    assert out.info["cascade_steps"] == 2
    steps = [value(out, "spearman", step=1, block="fc"),
             value(out, "spearman", step=2, block="features")]  # fmt: skip
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
    assert value(out, "randomization_spearman") == steps[-1]
    # every map of this net has mass: every correlation is defined
    assert value(out, "undefined", step=2, block="features") == 0.0
    assert value(out, "randomization_undefined") == 0.0
    assert row(out, "randomization_undefined").headline
    assert not any(m.metric == "road" for m in out.measurements)  # no failures asked for
    assert list(tmp_path.iterdir()) == []  # a stress writes nothing
