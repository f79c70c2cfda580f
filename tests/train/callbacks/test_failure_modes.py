"""FailureModesCallback: its knobs checked at compose time, its files on a tiny run, the same
modes from the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnstress.core.config import build
from cnnstress.core.errors import ConfigError
from cnnstress.core.failure_modes.run import cam_settings, failure_modes_of_run, read_failure_modes
from cnnstress.core.run_dir import RunDir
from cnnstress.train.callbacks import FailureModesCallback
from cnnstress.train.training import train
from tests.conftest import prepared

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bad_knobs_are_one_line_at_compose_time(make_config):
    cases = {
        "callbacks.failure_modes.min_size=1": r"callbacks.failure_modes.min_size must be an "
        r"integer >= 2, got 1",
        "callbacks.failure_modes.pca_dim=0": r"pca_dim must be an integer >= 1",
        "callbacks.failure_modes.threshold=1.5": r"threshold must be a probability in \[0, 1\]",
        "callbacks.failure_modes.cam_method=nope": r"cam_method must be one of gradcam",
        "callbacks.failure_modes.centre_size=40": r"centre_size must be an integer in \[1, 31\]",
        "callbacks.failure_modes.modes_per_pair=9": r"modes_per_pair \(9\) must not exceed",
        "callbacks.failure_modes.pca_dims=3": r"unknown key callbacks.failure_modes.pca_dims",
        "callbacks.failure_modes.seed=-1": r"seed must be an integer >= 0, got -1",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message) as caught:
            make_config(override)
        assert "\n" not in str(caught.value)


def test_callback_config_follows_the_run(make_config):
    callback = build(make_config().callbacks.failure_modes)
    assert isinstance(callback, FailureModesCallback)
    assert (callback.cam_method, callback.cam_layer, callback.threshold) == (
        "gradcam",
        "block3",
        0.8,
    )
    cfg = make_config("callbacks.gradcam=null", "confidence_threshold=0.6")
    callback = build(cfg.callbacks.failure_modes)
    assert (callback.cam_method, callback.cam_layer, callback.threshold) == (None, "block3", 0.6)
    assert cam_settings(callback) == ("gradcam", "block3")  # the default method


def test_callback_writes_its_files_on_a_tiny_run_and_the_checkpoint_gives_the_same(
    make_config, tiny_cifar10_zip, tmp_path
):
    cfg = make_config(
        f"dataset.root={tiny_cifar10_zip}",
        "callbacks.gradcam=null",
        "callbacks.failure_modes.min_size=2",
        "callbacks.failure_modes.cam_per_mode=3",
    )
    train(prepared(cfg))
    run = tmp_path / "run"
    assert RunDir(run).failure_modes.is_file() and RunDir(run).failure_modes_figure.is_file()
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
