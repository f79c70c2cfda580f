"""The background stress: planted nets that see only the centre or only the surround decide the
expected numbers; composites pixel by pixel; partners; determinism; config errors; train.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cnnstress.app.train import run_training
from cnnstress.core.config import build
from cnnstress.core.data.classes import CIFAR10_CLASSES
from cnnstress.core.data.sources import LabeledImages
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.models import SimpleCNN
from cnnstress.stress import read_stress, run_stress
from cnnstress.stress.background import (
    CLASSES_FILE,
    EXAMPLES_FILE,
    BackgroundSettings,
    centre_mask,
    draw_partners,
    evaluate,
    make_variants,
    outside_share,
)
from cnnstress.stress.context import StressContext, to_unit
from tests.conftest import compose_train_config

pytestmark = pytest.mark.usefixtures("one_thread")

# Ten colours of distinct directions: a pixel's class is its nearest direction (cosine).
PALETTE = torch.tensor([
    [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1],
    [0, 1, 1], [1, 1, 1], [1, 0.5, 0], [0, 1, 0.5], [0.5, 0, 1],
])  # fmt: skip
GREY_CLASS = 6  # a flat grey region is classified as (1, 1, 1)
CENTRE = centre_mask(32, 32, 16)
MISLABELLED = torch.arange(0, 60, 10)  # six images labelled with the next class (failures)


class RegionNet(nn.Module):
    """Sees only the pixels of ``visible`` ``(32, 32)``: a 1x1 conv scores every pixel's colour
    against :data:`PALETTE` by cosine, and the logits are the ReLU'd scores summed over the
    visible region. Input: pixels in [0, 1] (the context's mean 0 / std 1 keeps them so)."""

    def __init__(self, visible: torch.Tensor, scale: float = 200.0) -> None:
        super().__init__()
        self.register_buffer("visible", visible.float().view(1, 1, 32, 32))
        self.colour = nn.Conv2d(3, 10, kernel_size=1, bias=False)
        with torch.no_grad():
            self.colour.weight.copy_(
                (PALETTE / PALETTE.norm(dim=1, keepdim=True)).view(10, 3, 1, 1)
            )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = F.relu(self.colour(x * self.visible))
        return scores.sum((2, 3)) / self.visible.sum() * self.scale


def colour_images(per_class: int = 6, seed: int = 0) -> LabeledImages:
    """Class ``k`` images: the whole image in colour ``0.8 * PALETTE[k]`` plus noise; the
    images of :data:`MISLABELLED` carry the next class's label (confident failures)."""
    labels = torch.arange(10).repeat_interleave(per_class)
    gen = torch.Generator().manual_seed(seed)
    colour = (0.8 * PALETTE[labels] * 255).view(-1, 3, 1, 1)
    noise = torch.randn(len(labels), 3, 32, 32, generator=gen) * 8
    images = (colour + noise).round().clamp(0, 255).to(torch.uint8)
    wrong = MISLABELLED[MISLABELLED.lt(len(labels))]
    labels[wrong] = (labels[wrong] + 1) % 10
    return LabeledImages(images, labels)


def context(net: nn.Module, test: LabeledImages, run_dir: Path, layer: str = "colour"):
    cfg = OmegaConf.create({
        "dataset": {"name": "cifar10", "num_classes": 10, "mean": [0.0, 0.0, 0.0],
                    "std": [1.0, 1.0, 1.0], "eval_batch_size": 16},
        "model": {"target_layer": layer},
    })  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    return StressContext(run_dir, net.eval(), cfg, torch.device("cpu"), test, "")


def _frac(values: torch.Tensor) -> float:
    return float(values.double().mean())


@pytest.mark.parametrize("sees", ["surround", "centre"])
def test_planted_nets_get_the_numbers_their_region_decides(sees, tmp_path):
    test = colour_images()
    labels = test.labels
    net = RegionNet(~CENTRE if sees == "surround" else CENTRE)
    ctx = context(net, test, tmp_path / sees)
    settings = {"fill": 0.5, "batch_size": 16, "seed": 3}
    out = evaluate(ctx, BackgroundSettings(**settings))

    clean = ctx.clean_logits().argmax(1)
    assert torch.equal(clean, torch.arange(60) // 6)  # the colour class: mislabelled ones fail
    clean_acc = _frac(clean == labels)
    assert out["background/clean_acc"] == pytest.approx(clean_acc) == pytest.approx(0.9)
    b = draw_partners(labels, seed=3)["conflict"]
    same, rand = (draw_partners(labels, seed=3)[k] for k in ("mixed_same", "mixed_rand"))
    if sees == "surround":
        # It never sees the centre: only_surround changes nothing, the surround decides.
        assert out["background/only_surround/acc"] == pytest.approx(clean_acc)
        assert out["background/only_centre/acc"] == pytest.approx(_frac(labels == GREY_CLASS))
        decided = clean[b]  # the prediction of the image whose surround it sees
        expected_rand = _frac(clean[rand] == labels)
        assert out["background/mixed_same/acc"] == pytest.approx(_frac(clean[same] == labels))
    else:
        assert out["background/only_centre/acc"] == pytest.approx(clean_acc)
        assert out["background/only_surround/acc"] == pytest.approx(_frac(labels == GREY_CLASS))
        decided = clean
        expected_rand = clean_acc
        assert out["background/mixed_same/acc"] == pytest.approx(clean_acc)
    follows_surround, follows_centre = _frac(decided == labels[b]), _frac(decided == labels)
    assert out["background/conflict/follows_surround"] == pytest.approx(follows_surround)
    assert out["background/conflict/follows_centre"] == pytest.approx(follows_centre)
    assert out["background/conflict/neither"] == pytest.approx(
        1 - follows_surround - follows_centre
    )
    share = follows_surround / (follows_surround + follows_centre)
    assert out["background/surround_share"] == pytest.approx(share)
    assert out["background/mixed_rand/acc"] == pytest.approx(expected_rand)
    assert out["background/bg_gap"] == pytest.approx(
        out["background/mixed_same/acc"] - expected_rand
    )

    # Grad-CAM of the 1x1 conv: no mass at all where the net does not look.
    inside = 1.0 if sees == "surround" else 0.0
    assert out["background/cam/method"] == "gradcam"
    assert out["background/cam/target_layer"] == "colour"
    assert out["background/cam/num_images"] == 60 and out["background/cam/undefined"] == 0
    assert out["background/cam/num_correct"] == 54
    assert out["background/cam/num_confident_failures"] == 6  # every mislabelled image
    for key in ("all", "correct", "confident_failures"):
        assert out[f"background/cam/outside_{key}"] == pytest.approx(inside, abs=1e-9)
    assert out["background/cam/outside_uniform"] == 0.75

    for k, name in enumerate(CIFAR10_CLASSES):
        own = labels == k
        if sees == "surround":
            only_surround = _frac(clean[own] == k)  # its clean per-class accuracy
        else:
            only_surround = 1.0 if k == GREY_CLASS else 0.0  # a grey centre: always class 6
        assert out[f"background/class/{name}/only_surround"] == pytest.approx(only_surround)
        from_k = labels[b] == k  # conflicts whose surround comes from class k
        s_k, c_k = _frac(decided[from_k] == k), _frac(decided[from_k] == labels[from_k])
        expected = s_k / (s_k + c_k) if s_k + c_k else None
        got = out[f"background/class/{name}/surround_share"]
        assert got == pytest.approx(expected) if expected is not None else got != got
        assert out[f"background/class/{name}/cam_outside"] == pytest.approx(inside, abs=1e-9)

    if sees == "surround":
        assert 0.85 < out["background/surround_share"] <= 1.0
        # The per-image mean fill reveals a colour-coded class: both partial images classify.
        mean_fill = evaluate(ctx, BackgroundSettings(**{**settings, "fill": "mean"}))
        assert mean_fill["background/only_surround/acc"] == pytest.approx(clean_acc)
    else:
        assert out["background/surround_share"] < 0.15
        assert out["background/bg_gap"] == 0
    for name in (EXAMPLES_FILE, CLASSES_FILE):
        assert (ctx.run_dir / name).stat().st_size > 10_000


def test_composites_pixel_by_pixel():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4])
    partners = draw_partners(labels, seed=1)
    positions = torch.tensor([0, 4, 7, 11])
    mask = centre_mask(32, 32, 16)
    rows, cols = slice(8, 24), slice(8, 24)
    assert mask.sum() == 256 and mask[rows, cols].all()
    dataset_mean = [0.2, 0.4, 0.6]
    for fill in ("mean", "dataset_mean", 0.25):
        out = make_variants(images, positions, partners, mask, fill, dataset_mean)
        for i, p in enumerate(positions.tolist()):
            a = to_unit(images[p])
            for name in ("conflict", "mixed_same", "mixed_rand"):
                composite, b = out[name][i], to_unit(images[partners[name][p]])
                assert torch.equal(composite[:, rows, cols], a[:, rows, cols])
                assert torch.equal(composite[:, ~mask], b[:, ~mask])
            only_centre, only_surround = out["only_centre"][i], out["only_surround"][i]
            assert torch.equal(only_centre[:, mask], a[:, mask])
            assert torch.equal(only_surround[:, ~mask], a[:, ~mask])
            if fill == "mean":  # the mean colour of the part that stays visible
                fills = (a[:, mask].mean(1), a[:, ~mask].mean(1))
            elif fill == "dataset_mean":
                fills = (torch.tensor(dataset_mean),) * 2
            else:
                fills = (torch.full((3,), 0.25),) * 2
            for image, region, colour in ((only_centre, ~mask, fills[0]),
                                          (only_surround, mask, fills[1])):  # fmt: skip
                torch.testing.assert_close(
                    image[:, region], colour.view(3, 1).expand(3, int(region.sum()))
                )
    odd = centre_mask(32, 32, 5)
    assert odd.nonzero()[:, 0].unique().tolist() == [13, 14, 15, 16, 17]


def test_partners_never_share_a_class_in_conflict_and_always_in_mixed_same():
    labels = torch.tensor([0] * 5 + [1] + [2] * 7 + [5] * 3)[torch.randperm(16)]
    parts = draw_partners(labels, seed=4)
    assert (labels[parts["conflict"]] != labels).all()
    assert (labels[parts["mixed_same"]] == labels).all()
    singleton = labels == 1
    own = torch.arange(16)
    assert (parts["mixed_same"][singleton] == own[singleton]).all()  # no other image of class 1
    assert (parts["mixed_same"][~singleton] != own[~singleton]).all()
    again, other = draw_partners(labels, seed=4), draw_partners(labels, seed=5)
    assert all(torch.equal(parts[k], again[k]) for k in parts)
    assert any(not torch.equal(parts[k], other[k]) for k in parts)
    with pytest.raises(DataError, match="at least two classes"):
        draw_partners(torch.zeros(4, dtype=torch.long))

    # Classes are drawn uniformly, not in proportion to their image counts.
    labels = torch.tensor([0] * 2000 + [1] * 700 + [2] * 300)
    parts = draw_partners(labels, seed=0)
    partner_class = labels[parts["conflict"]][labels == 0]
    assert abs(_frac(partner_class == 2) - 0.5) < 0.05
    rand_class = labels[parts["mixed_rand"]]
    assert all(abs(_frac(rand_class == k) - 1 / 3) < 0.04 for k in range(3))


def test_outside_share_of_known_maps():
    mask = centre_mask(4, 4, 2)
    maps = torch.zeros(3, 4, 4)
    maps[0] = 1.0  # flat: the surround's share of the area
    maps[1, 1:3, 1:3] = 1.0  # all inside
    maps[2, 0] = 0.5  # all outside
    shares = outside_share(torch.cat([maps, torch.zeros(1, 4, 4)]), mask)
    assert shares[:3].tolist() == [0.75, 0.0, 1.0] and shares[3].isnan()  # no mass: undefined


def test_same_seed_same_numbers_and_a_subset(tmp_path):
    torch.manual_seed(0)
    net = SimpleCNN(width=4)
    test = colour_images(per_class=4)
    settings = BackgroundSettings(
        max_images=30, cam_images=12, batch_size=7, seed=2, fill="dataset_mean"
    )
    first = evaluate(context(net, test, tmp_path / "a" / "run", layer="block3"), settings)
    again = evaluate(context(net, test, tmp_path / "b" / "run", layer="block3"), settings)
    assert first.keys() == again.keys()
    assert all(first[k] == again[k] or first[k] != first[k] != again[k] for k in first)  # NaN
    assert first["background/num_images"] == 30 and first["background/cam/num_images"] == 12
    for name in (EXAMPLES_FILE, CLASSES_FILE):  # the figures too (same run-directory name)
        assert (tmp_path / "a" / "run" / name).read_bytes() == (
            tmp_path / "b" / "run" / name
        ).read_bytes()
    reseeded = dataclasses.replace(settings, seed=9)
    other = evaluate(context(net, test, tmp_path / "c", layer="block3"), reseeded)
    assert other["background/surround_share"] != first["background/surround_share"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fill=black", r"stress.background.fill must be one of mean, dataset_mean or a "),
        ("fill=1.5", r"stress.background.fill must be .* or a number in \[0, 1\], got 1.5"),
        ("threshold=-0.1", r"stress.background.threshold must be a probability in \[0, 1\]"),
        ("method=gradcan", r"stress.background.method must be one of gradcam, gradcam"),
        ("cam_images=-1", r"stress.background.cam_images must be an integer >= 0"),
        ("+stress.background.centre=8", r"unknown key stress.background.centre; valid keys"),
    ],
)
def test_bad_settings_are_one_config_error(make_config, override, message):
    key = override if override.startswith("+") else f"stress.background.{override}"
    with pytest.raises(ConfigError, match=message):
        make_config("stress=[background]", key)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"centre_size": 32}, r"centre_size must be between 1 and 31 for 32x32 images, got 32"),
        ({"target_layer": "block9"}, r"target_layer='block9' is not a module of the model"),
    ],
)
def test_settings_checked_against_the_run_are_config_errors(settings, message, tmp_path):
    ctx = context(SimpleCNN(width=4), colour_images(per_class=2), tmp_path, layer="block3")
    with pytest.raises(ConfigError, match=message):
        evaluate(ctx, BackgroundSettings(**{"cam_images": 4, **settings}))


def test_train_py_logs_the_figures_and_the_checkpoint_reproduces_them(
    make_config, tiny_cifar10_zip, tmp_path
):
    cfg = make_config(
        f"dataset.root={tiny_cifar10_zip}", "stress=[background]",
        "stress.background.cam_images=20", "stress.background.batch_size=32",
    )  # fmt: skip
    run_training(cfg)
    run = tmp_path / "run"
    stress = read_stress(run)
    assert stress["background/num_images"] == 80 and stress["background/cam/num_images"] == 20
    assert stress["background/cam/target_layer"] == "block3"
    assert stress["background/chance"] == pytest.approx(0.1)
    for key in ("only_centre/acc", "only_surround/acc", "surround_share", "cam/outside_all"):
        assert 0 <= stress[f"background/{key}"] <= 1
    assert len([k for k in stress if k.startswith("background/class/")]) == 30
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    images = set(events.Tags()["images"])
    assert {"stress/stress_background_examples", "stress/stress_background_classes"} <= images

    # analyze.py's path: the run's last.ckpt (no validation split: the tested weights).
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml", resolve=True)
    again = run_stress(run, ["background"], build(cfg.stress))
    # equal up to float rounding: training's net is in channels_last (the CPU's auto format)
    numbers = {k for k, v in stress.items() if isinstance(v, float)}
    assert {k: v for k, v in again.items() if k not in numbers} == {
        k: v for k, v in stress.items() if k not in numbers
    }
    assert {k: again[k] for k in numbers} == pytest.approx({k: stress[k] for k in numbers})


def test_analyze_composes_the_background_stress(tmp_path):
    cfg = compose_train_config(
        tmp_path, ["stress=[background]", "stress.background.fill=0.5"], config_name="analyze"
    )
    section = OmegaConf.to_container(cfg.stress)
    assert list(section) == ["background"] and section["background"]["fill"] == 0.5
    assert section["background"]["centre_size"] == BackgroundSettings().centre_size
