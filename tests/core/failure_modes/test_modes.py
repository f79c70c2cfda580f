"""The modes of a run: a planted slice recovered and described, deterministic, CAM budget."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnstress.core.data.classes import CIFAR10_CLASSES
from cnnstress.core.errors import DataError
from cnnstress.core.failure_modes import FailureModeSettings, find_failure_modes, from_json
from tests.core.failure_modes.planted import AIRPLANE, SHIP, best_match, planted_split

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_planted_slice_is_recovered_and_described():
    *split, planted = planted_split()
    result = find_failure_modes(
        *split, classes=CIFAR10_CLASSES, settings=FailureModeSettings(threshold=0.8)
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
    kwargs = {
        "classes": CIFAR10_CLASSES,
        "settings": FailureModeSettings(threshold=0.8, min_size=3),
    }
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
    *split, _ = planted_split()
    index = split[0]
    asked = []

    def cams(rows: np.ndarray) -> np.ndarray:
        asked.append(rows.copy())
        return np.full(rows.size, 0.8)

    settings = FailureModeSettings(threshold=0.8, cam_per_mode=4)
    result = find_failure_modes(
        *split, classes=CIFAR10_CLASSES, settings=settings, cam_outside=cams
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
            index,
            target,
            probs,
            images,
            embeddings[rows],
            rows,
            classes=CIFAR10_CLASSES,
            settings=FailureModeSettings(threshold=0.8),
        )
