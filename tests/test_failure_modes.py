"""Failure modes of a run: planted slices, attributes, embeddings, determinism, the callback."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cnnstress.callbacks import FailureModesCallback
from cnnstress.cam import hook_snapshot
from cnnstress.config import instantiate
from cnnstress.data.classes import CIFAR10_CLASSES
from cnnstress.errors import ConfigError, DataError
from cnnstress.failure_modes import FailureModeSettings, find_failure_modes, from_json
from cnnstress.failure_modes.attributes import ATTRIBUTES, image_attributes
from cnnstress.failure_modes.clustering import cluster_errors
from cnnstress.failure_modes.embeddings import embed, head_layer
from cnnstress.failure_modes.run import (
    FIGURE_FILE,
    JSON_FILE,
    check_model,
    failure_modes_of_run,
    read_failure_modes,
)
from cnnstress.models import SimpleCNN, fast_net, preact_resnet18, resnet18, wide_resnet
from cnnstress.training import build_trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")

SHIP, AIRPLANE = 8, 0


def orange_surround(images: torch.Tensor) -> torch.Tensor:
    """The planted feature: the surround (outside the centred 16x16 square) half orange."""
    out = images.float()
    surround = torch.ones(32, 32, dtype=torch.bool)
    surround[8:24, 8:24] = False
    orange = torch.tensor([255.0, 140.0, 0.0]).view(1, 3, 1, 1)
    return torch.where(surround, 0.5 * out + 0.5 * orange, out).round().to(torch.uint8)


def planted_split(seed: int = 0, per_class: int = 50, planted: int = 30, natural: int = 15):
    """A 10-class test split with a planted slice: ``planted`` ships with an orange surround,
    predicted airplane, whose embeddings sit around one centre, and ``natural`` other ship ->
    airplane errors around another; plus scattered errors elsewhere. Returns the arrays, the
    images and the planted test indices."""
    rng = np.random.default_rng(seed)
    n = 10 * per_class
    target = np.repeat(np.arange(10), per_class)
    index = np.arange(n) * 3 + 7  # official-looking indices, not positions
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    pred = target.copy()
    ships = np.flatnonzero(target == SHIP)
    slice_rows, natural_rows = ships[:planted], ships[planted : planted + natural]
    pred[slice_rows] = AIRPLANE
    pred[natural_rows] = AIRPLANE
    images[torch.from_numpy(slice_rows)] = orange_surround(images[torch.from_numpy(slice_rows)])
    others = rng.choice(np.flatnonzero(target != SHIP), 40, replace=False)
    pred[others] = (target[others] + 1 + rng.integers(0, 9, others.size)) % 10
    probs = np.full((n, 10), 0.02, np.float32)
    probs[np.arange(n), pred] = 0.82
    dim = 64
    embeddings = rng.normal(0, 1.0, (n, dim))
    embeddings[:, :10] += 8 * np.eye(10)[pred]  # the head reads the predicted class
    embeddings[slice_rows, 10] += 6.0  # the planted slice: a direction of its own
    embeddings[natural_rows, 11] += 6.0
    return index, target, probs, images, embeddings.astype(np.float32), set(index[slice_rows])


def best_match(modes, planted: set[int]) -> tuple[float, float]:
    """Precision and recall of the mode with the best F1 against the planted images."""
    best = (0.0, 0.0, 0.0)
    for mode in modes:
        hit = len(planted & set(mode.members))
        p, r = hit / mode.size, hit / len(planted)
        f = 2 * p * r / (p + r) if hit else 0.0
        best = max(best, (f, p, r))
    return best[1], best[2]


def test_a_planted_slice_is_recovered_and_described():
    index, target, probs, images, embeddings, planted = planted_split()
    result = find_failure_modes(
        index,
        target,
        probs,
        images,
        embeddings,
        classes=CIFAR10_CLASSES,
        settings=FailureModeSettings(threshold=0.8),
    )
    for grouping in (result.errors, result.confident):  # every error here is confident
        precision, recall = best_match(grouping.modes, planted)
        assert precision == 1.0 and recall == 1.0
    mode = next(m for m in result.errors.modes if set(m.members) == planted)
    assert (mode.true, mode.predicted, mode.size, mode.purity) == (SHIP, AIRPLANE, 30, 1.0)
    assert mode.class_share == pytest.approx(30 / 50)
    assert mode.mean_confidence == pytest.approx(0.82)
    assert mode.label_errors is None and mode.cam_outside is None
    # the orange surround stands out against the other ships: redder, less blue, saturated
    assert "surround" in mode.traits[0] and "redder" in mode.traits[0]
    assert mode.description.startswith("ship -> airplane, 30 images (60.0% of class ship): ")
    natural = next(m for m in result.errors.modes if m.true == SHIP and set(m.members) != planted)
    assert natural.size == 15 and not (set(natural.members) & planted)
    # the 40 scattered errors fall into pairs of fewer than min_size: in no mode
    assigned = {i for m in result.errors.modes for i in m.members}
    assert len(assigned) + len(result.errors.unassigned) == result.errors.num_errors == 85


def test_modes_are_identical_for_identical_inputs_and_survive_json():
    index, target, probs, images, embeddings, _ = planted_split(seed=3)
    kwargs = {"classes": CIFAR10_CLASSES, "settings": FailureModeSettings(min_size=3)}
    first = find_failure_modes(index, target, probs, images, embeddings, **kwargs)
    again = find_failure_modes(index, target, probs, images.clone(), embeddings.copy(), **kwargs)
    assert first.to_json() == again.to_json()
    text = json.dumps(first.to_json())  # valid JSON: no NaN
    assert "NaN" not in text
    assert from_json(json.loads(text)).to_json() == first.to_json()
    with pytest.raises(DataError, match="malformed"):
        from_json({**first.to_json(), "errors": {"name": "errors"}})
    with pytest.raises(DataError, match="schema version 99"):
        from_json({**first.to_json(), "version": 99})


def test_cam_shares_are_measured_on_the_most_typical_members_only():
    index, target, probs, images, embeddings, _ = planted_split()
    asked = []

    def cams(rows: np.ndarray) -> np.ndarray:
        asked.append(rows.copy())
        return np.full(rows.size, 0.8)

    settings = FailureModeSettings(cam_per_mode=4)
    result = find_failure_modes(
        index,
        target,
        probs,
        images,
        embeddings,
        classes=CIFAR10_CLASSES,
        settings=settings,
        cam_outside=cams,
    )
    assert len(asked) == 1  # one call for every mode of both groupings
    for mode in result.errors.modes:
        assert mode.cam_outside == pytest.approx(0.8) and mode.cam_images == min(4, mode.size)
        assert set(index[asked[0]]) >= set(mode.members[:4])
        assert "CAM 0.80 outside the centre" in mode.description


def test_every_error_needs_an_embedding():
    index, target, probs, images, embeddings, _ = planted_split()
    rows = np.flatnonzero(probs.argmax(1) != target)[1:]
    with pytest.raises(ValueError, match="misses some errors"):
        find_failure_modes(
            index, target, probs, images, embeddings[rows], rows, classes=CIFAR10_CLASSES
        )


def test_clustering_splits_a_pair_only_where_the_embeddings_do():
    rng = np.random.default_rng(0)
    one = rng.normal(0, 1, (60, 8)) + np.eye(8)[0] * 10
    two = np.concatenate(
        [
            rng.normal(0, 1, (40, 8)) + np.eye(8)[1] * 10,
            rng.normal(0, 1, (40, 8)) + np.eye(8)[2] * 10,
        ]
    )
    embeddings = np.concatenate([one, two])
    true = np.array([3] * 60 + [5] * 80)
    pred = np.array([4] * 60 + [6] * 80)
    fit = cluster_errors(embeddings, true, pred)
    assert fit.num_modes == 3
    assert len(set(fit.labels[:60])) == 1  # one blob, one mode
    assert set(fit.labels[60:100]).isdisjoint(fit.labels[100:])  # two blobs, two modes
    assert [(p.true, p.predicted, p.components) for p in fit.pairs] == [(3, 4, 1), (5, 6, 2)]
    fixed = cluster_errors(embeddings, true, pred, modes_per_pair=1)
    assert fixed.num_modes == 2


def test_scattered_errors_form_no_mode():
    rng = np.random.default_rng(0)
    true, pred = np.array([0, 1, 2, 3, 0]), np.array([1, 2, 3, 4, 2])  # five pairs of one
    fit = cluster_errors(rng.normal(size=(5, 8)), true, pred)
    assert fit.num_modes == 0 and fit.labels.tolist() == [-1] * 5
    assert [p.components for p in fit.pairs] == [0] * 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one error: no PCA of a single row
        single = cluster_errors(rng.normal(size=(1, 100)), true[:1], pred[:1])
    assert single.labels.tolist() == [-1]
    empty = cluster_errors(np.zeros((0, 8)), np.zeros(0), np.zeros(0))
    assert empty.num_modes == 0 and empty.labels.shape == (0,) and empty.pairs == ()


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


@pytest.mark.parametrize(
    "make",
    [
        lambda: SimpleCNN(10, 8),
        lambda: fast_net(10, widths=(8, 16, 16)),
        lambda: resnet18(10),
        lambda: preact_resnet18(10),
        lambda: wide_resnet(depth=10, widen=1),
    ],
    ids=["simple_cnn", "fast_net", "resnet18", "preact_resnet18", "wide_resnet"],
)
def test_embeddings_are_the_head_input_of_every_backbone(make):
    torch.manual_seed(0)
    model = make().train()
    images = torch.randn(3, 3, 32, 32)
    _, head = head_layer(model)
    seen = []
    handle = head.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    before = hook_snapshot(model)
    grads = [p.grad for p in model.parameters()]
    features = embed(model, images)
    assert hook_snapshot(model) == before  # its own hook gone, the user's kept
    handle.remove()
    assert features.shape == (3, head.in_features)
    np.testing.assert_allclose(features, seen[0].numpy(), rtol=1e-5, atol=1e-5)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert all(g is None for g in grads) and all(p.grad is None for p in model.parameters())


def test_a_named_layer_is_spatially_averaged_and_a_bad_one_is_one_line():
    model = SimpleCNN(10, 8)
    images = torch.randn(2, 3, 32, 32)
    assert embed(model, images, "block2").shape == (2, 16)
    with pytest.raises(ConfigError, match=r"embedding_layer='block9'.*children are: block1"):
        check_model(model, FailureModeSettings(embedding_layer="block9"))
    with pytest.raises(ConfigError, match=r"embedding_layer=head: .*no nn\.Linear head"):
        check_model(nn.Sequential(nn.Conv2d(3, 4, 3)), FailureModeSettings())


def test_bad_knobs_are_one_line_at_start_up(make_config):
    cases = {
        "callbacks.failure_modes.min_size=1": r"callbacks.failure_modes.min_size must be an "
        r"integer >= 2, got 1",
        "callbacks.failure_modes.pca_dim=0": r"pca_dim must be an integer >= 1",
        "callbacks.failure_modes.threshold=1.5": r"threshold must be a number in \[0, 1\]",
        "callbacks.failure_modes.cam_method=nope": r"cam_method must be one of gradcam",
        "callbacks.failure_modes.centre_size=40": r"centre_size must be an integer in \[1, 31\]",
        "callbacks.failure_modes.modes_per_pair=9": r"modes_per_pair \(9\) must not exceed",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message) as caught:
            build_trainer(make_config(override), has_val=False)
        assert "\n" not in str(caught.value)


def test_callback_config_follows_the_run(make_config):
    callback = instantiate(make_config().callbacks.failure_modes)
    assert isinstance(callback, FailureModesCallback)
    assert (callback.cam_method, callback.cam_layer, callback.threshold) == (
        "gradcam",
        "block3",
        0.8,
    )
    callback = instantiate(
        make_config(
            "callbacks.gradcam=null", "callbacks.high_conf_failures.threshold=0.6"
        ).callbacks.failure_modes
    )
    assert (callback.cam_method, callback.cam_layer, callback.threshold) == (
        "gradcam",
        "block3",
        0.6,
    )


def test_callback_writes_its_files_on_a_tiny_run_and_the_checkpoint_gives_the_same(
    make_config, tiny_cifar10_zip, tmp_path
):
    cfg = make_config(
        f"dataset.root={tiny_cifar10_zip}",
        "callbacks.gradcam=null",
        "callbacks.failure_modes.min_size=2",
        "callbacks.failure_modes.cam_per_mode=3",
    )
    train(cfg)
    run = tmp_path / "run"
    assert (run / JSON_FILE).is_file() and (run / FIGURE_FILE).is_file()
    written = read_failure_modes(run)
    predictions = np.load(run / "predictions.npz")
    wrong = int((predictions["probs"].argmax(1) != predictions["target"]).sum())
    assert written.errors.num_errors == wrong > 0 and written.num_images == 80
    assert written.errors.modes and written.cam_method == "gradcam"
    assert all(m.cam_images == min(3, m.size) for m in written.errors.modes)
    assert written.embedding_layer == "fc (input)" and written.embedding_dim == 32 * 4 * 4
    events = EventAccumulator(str(next((run / "tensorboard").rglob("events.*")).parent))
    events.Reload()
    assert "test/failure_modes" in events.Tags()["images"]
    # the same modes from the checkpoint, for runs trained before the callback existed
    again, images, index = failure_modes_of_run(run)
    assert again.settings == written.settings and "dirpath" not in again.settings
    assert [m.members for m in again.errors.modes] == [m.members for m in written.errors.modes]
    assert [m.description for m in again.confident.modes] == [
        m.description for m in written.confident.modes
    ]
    for mode, same in zip(again.errors.modes, written.errors.modes, strict=True):
        # float32 CAMs in another memory format (channels_last in training): rounding only
        assert mode.cam_outside == pytest.approx(same.cam_outside, abs=1e-6)
    assert images.shape == (80, 3, 32, 32) and index.shape == (80,)
