"""stress_run: the stresses' entries in stress.json (with the settings used) and their per-run
figures in the run directory, at the end of training and afterwards."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.io import decode_png, read_file

from cnnstress.app.stress import stress_run
from cnnstress.report.figures.stress_run import RUN_FIGURES
from cnnstress.stress import read_stored
from cnnstress.stress.background import BackgroundSettings
from cnnstress.stress.corruption_suite import CorruptionSettings
from cnnstress.stress.faithfulness import FaithfulnessSettings
from cnnstress.stress.results import settings_record

pytestmark = pytest.mark.usefixtures("one_thread")


def png_shape(path) -> tuple[int, ...]:
    """(channels, H, W) of a PNG file (fails on anything else); a drawn figure is at least
    100 px a side."""
    shape = tuple(decode_png(read_file(str(path))).shape)
    assert shape[0] in (3, 4) and min(shape[1:]) >= 100, shape
    return shape


@pytest.mark.slow
def test_end_of_training_then_stress_run_write_entries_and_figures(copied_run):
    run = copied_run  # stress=[calibration,adversarial] at the end of training
    calibration = read_stored(run)["calibration"]
    assert calibration.computed_by == "train.py" and calibration.device == "cpu"
    assert calibration.checkpoint == "checkpoints/last.ckpt"
    assert calibration.settings == {"n_bins": 15, "split_seed": 0, "max_iter": 100}
    png_shape(run / "stress_calibration.png")
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert "stress/stress_calibration" in events.Tags()["images"]

    settings = {
        "corruptions": CorruptionSettings(types=["fog"], severities=[2], max_images=20),
        "faithfulness": FaithfulnessSettings(num_failures=2, num_images=4),
        "background": BackgroundSettings(max_images=30, cam_images=6, examples=3),
    }
    stored = stress_run(run, settings, "cpu", computed_by="analyze.py")
    assert list(stored) == ["corruptions", "faithfulness", "background"]
    earlier = {n: e for n, e in read_stored(run).items() if n not in stored}
    assert set(earlier) == {"calibration", "adversarial"}  # the earlier ones kept
    assert earlier["calibration"] == calibration
    for name, entry in stored.items():
        assert entry.settings == settings_record(settings[name])  # defaults included
        assert entry.computed_by == "analyze.py" and entry.checkpoint == calibration.checkpoint
    assert stored["corruptions"].settings["seed"] == 0 and stored["corruptions"].info == {
        **stored["corruptions"].info, "num_images": 20, "num_types": 1, "source": "generated",
    }  # fmt: skip
    files = {f.file for name in settings for f in RUN_FIGURES[name]}
    assert files == {"stress_corruptions.png", "stress_faithfulness.png",
                     "stress_background_examples.png", "stress_background_classes.png"}  # fmt: skip
    for file in files:
        png_shape(run / file)
    # The examples grid: 3 rows of 6 tiles (4x scale) with captions.
    _, height, width = png_shape(run / "stress_background_examples.png")
    assert width >= 6 * 32 * 4 and height >= 3 * 32 * 4
