"""A run directory's paths and files (cnnstress.core.run_dir): atomic writes, and reading the
untrusted record, metrics and predictions (a malformed file is one DataError line naming it;
the callers put the run directory in front)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnstress import __version__
from cnnstress.core.errors import DataError
from cnnstress.core.identity import fingerprint, run_identity
from cnnstress.core.run_dir import (
    LEGACY_THRESHOLD,
    RunDir,
    read_metrics,
    read_predictions,
    read_record,
    run_threshold,
    write_json,
    write_metrics,
    write_predictions,
    write_record,
)
from cnnstress.core.run_dir import tested_checkpoint as checkpoint_of_test

CONFIG = {
    "seed": 3,
    "improvement": "cutout",
    "trainer": {"max_epochs": 2},
    "confidence_threshold": 0.7,
}


def error(call, *args) -> str:
    with pytest.raises(DataError) as err:
        call(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


# -- paths --------------------------------------------------------------------------------------
def test_run_dir_names_every_file_without_creating_anything(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    assert run.path == tmp_path / "run"
    names = {
        "record": "run.json", "metrics": "metrics.json", "predictions": "predictions.npz",
        "stress": "stress.json", "checkpoints": "checkpoints", "tensorboard": "tensorboard",
        "failures": "failures", "gradcam": "gradcam", "hydra": ".hydra",
    }  # fmt: skip
    for attribute, name in names.items():
        assert getattr(run, attribute) == tmp_path / "run" / name
    assert run.stress_figure("corruptions") == tmp_path / "run" / "stress_corruptions.png"
    assert run.file("reliability.json") == tmp_path / "run" / "reliability.json"
    assert not run.path.exists() and not run.finished and run.outputs() == []


def test_outputs_lists_what_a_run_wrote_and_remove_outputs_can_keep_a_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    write_metrics(tmp_path, {"test/acc": 0.5})
    (run.checkpoints).mkdir()
    for name in ("last.ckpt", "best.ckpt"):
        (run.checkpoints / name).write_bytes(b"x")
    run.stress_figure("b").write_bytes(b"png")
    run.stress_figure("a").write_bytes(b"png")
    (run.hydra).mkdir()
    (tmp_path / "train.log").write_text("log")
    assert run.finished
    assert run.outputs() == [run.metrics, run.checkpoints, run.stress_figure("a"),
                             run.stress_figure("b")]  # fmt: skip
    removed = run.remove_outputs(keep=run.checkpoints / "last.ckpt")
    assert sorted(removed) == sorted([run.metrics, run.checkpoints / "best.ckpt",
                                      run.stress_figure("a"), run.stress_figure("b")])  # fmt: skip
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        ".hydra", "checkpoints", "last.ckpt", "train.log",
    ]  # fmt: skip


# -- writing ------------------------------------------------------------------------------------
def test_write_json_creates_the_parent_and_replaces_the_file_whole(tmp_path):
    path = tmp_path / "deep" / "er" / "x.json"
    assert write_json(path, {"b": 1, "a": [1, 2]}) == path
    assert json.loads(path.read_text()) == {"b": 1, "a": [1, 2]}
    assert path.read_text().startswith('{\n  "b": 1,')  # indented, in the given order
    write_json(str(path), {"b": 2, "a": None}, sort_keys=True)
    assert path.read_text().index('"a"') < path.read_text().index('"b"')
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temporary left


def test_a_failed_write_json_leaves_the_old_file_as_it_was(tmp_path):
    path = write_json(tmp_path / "x.json", {"kept": True})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"kept": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_write_metrics_sorts_keys_and_writes_non_finite_values_as_null(tmp_path):
    write_metrics(tmp_path, {"test/loss": float("nan"), "test/acc": 1, "x": float("inf")})
    assert RunDir(tmp_path).metrics.read_text().index("test/acc") < (
        RunDir(tmp_path).metrics.read_text().index("test/loss")
    )
    assert read_metrics(tmp_path) == {"test/acc": 1.0, "test/loss": None, "x": None}


def test_predictions_round_trip_with_their_dtypes(tmp_path):
    probs = np.array([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]], np.float64)
    write_predictions(tmp_path, np.array([7, 3, 9], np.int32), np.array([1, 0, 0]), probs, True)
    arrays = read_predictions(tmp_path)
    assert sorted(arrays) == ["index", "official_index", "probs", "target"]
    assert arrays["index"].tolist() == [7, 3, 9] and arrays["index"].dtype == np.int64
    assert arrays["target"].tolist() == [1, 0, 0] and arrays["target"].dtype == np.int64
    assert arrays["probs"].dtype == np.float32 and np.array_equal(arrays["probs"], probs)
    assert arrays["official_index"].shape == () and bool(arrays["official_index"]) is True


def test_write_record_keeps_the_config_overrides_and_a_checkpoint_inside_the_run(tmp_path):
    inside = tmp_path / "checkpoints" / "best.ckpt"
    write_record(tmp_path, CONFIG, ["seed=3"], ["augmentation=[]"], inside)
    written = json.loads(RunDir(tmp_path).record.read_text())
    assert written["fingerprint"] == fingerprint(run_identity(CONFIG))
    assert written["cnnstress_version"] == __version__
    assert written["improvement"] == {"name": "cutout", "changed_by": ["augmentation=[]"]}
    record = read_record(tmp_path)
    assert record.config == CONFIG and record.overrides == ("seed=3",)
    assert record.improvement == "cutout" and record.changed_by == ("augmentation=[]",)
    assert record.checkpoint == "checkpoints/best.ckpt"
    assert record.fingerprint == written["fingerprint"]
    assert record.confidence_threshold == 0.7
    write_record(tmp_path, CONFIG, checkpoint=tmp_path.parent / "elsewhere.ckpt")
    assert read_record(tmp_path).checkpoint is None  # outside the run: not recorded


# -- reading untrusted files --------------------------------------------------------------------
def test_missing_files_are_named(tmp_path):
    assert error(read_metrics, tmp_path) == "no metrics.json"
    assert error(read_record, tmp_path) == "no run.json"
    assert error(read_predictions, tmp_path) == "no predictions.npz"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "metrics.json is unreadable (JSONDecodeError: Expecting property name "
         "enclosed in double quotes: line 1 column 2 (char 1))"),
        ("[1, 2]", "metrics.json is not a mapping"),
        ("3", "metrics.json is not a mapping"),
    ],
)  # fmt: skip
def test_malformed_metrics_are_one_data_error_line(tmp_path, text, expected):
    RunDir(tmp_path).metrics.write_text(text)
    assert error(read_metrics, tmp_path) == expected


def test_unreadable_bytes_and_deep_nesting_are_data_errors(tmp_path):
    RunDir(tmp_path).metrics.write_bytes(b"\xff\xfe{}")
    assert error(read_metrics, tmp_path).startswith(
        "metrics.json is unreadable (UnicodeDecodeError"
    )
    RunDir(tmp_path).metrics.write_text("[" * 100_000 + "]" * 100_000)
    assert error(read_metrics, tmp_path).startswith("metrics.json is unreadable (RecursionError")


def test_malformed_predictions_are_one_data_error_line(tmp_path):
    path = RunDir(tmp_path).predictions
    path.write_bytes(b"PK\x03\x04 truncated")
    assert error(read_predictions, tmp_path).startswith("predictions.npz is unreadable (")
    np.savez(path.open("wb"), index=np.arange(3), probs=np.ones((3, 2)))
    assert error(read_predictions, tmp_path) == "predictions.npz has no target array"
    objects = np.array([{"a": 1}, None], dtype=object)  # would need unpickling
    with path.open("wb") as f:
        np.savez(f, index=objects, target=np.arange(2), probs=np.ones((2, 2)))
    message = error(read_predictions, tmp_path)
    assert message.startswith("predictions.npz is unreadable (ValueError: ") and "pickle" in message


def test_predictions_written_before_official_index_existed_read_as_not_official(tmp_path):
    with RunDir(tmp_path).predictions.open("wb") as f:
        np.savez(f, index=np.arange(2), target=np.arange(2), probs=np.eye(2))
    assert bool(read_predictions(tmp_path)["official_index"]) is False


def write_raw_record(run: Path, record: object) -> None:
    RunDir(run).record.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ([1], "run.json has no config mapping"),
        ({"config": "seed=1"}, "run.json has no config mapping"),
        ({"config": {"paths": {"secret": "${oc.env:SECRET}"}}},
         "run.json holds an interpolation or missing value at config.paths.secret: records are "
         "written resolved, so this one was edited; not read"),
        ({"config": {"a": [1, "???"]}},
         "run.json holds an interpolation or missing value at config.a[1]: records are "
         "written resolved, so this one was edited; not read"),
        ({"config": {}, "overrides": ["${oc.env:X}"]},
         "run.json holds an interpolation or missing value at overrides[0]: records are "
         "written resolved, so this one was edited; not read"),
        ({"config": {}, "improvement": "cutout"}, "run.json improvement is not a mapping"),
        ({"config": {}, "improvement": {"name": 3}}, "run.json improvement name 3 is not a string"),
        ({"config": {}, "checkpoint": "/etc/passwd"},
         "run.json checkpoint '/etc/passwd' is not a path inside the run"),
        ({"config": {}, "checkpoint": "../other/best.ckpt"},
         "run.json checkpoint '../other/best.ckpt' is not a path inside the run"),
        ({"config": {}, "checkpoint": 5}, "run.json checkpoint 5 is not a path inside the run"),
        ({"config": {}, "overrides": "seed=1"}, "run.json overrides is not a list of strings"),
        ({"config": {}, "improvement": {"changed_by": [1]}},
         "run.json improvement.changed_by is not a list of strings"),
    ],
)  # fmt: skip
def test_a_malformed_record_is_refused_in_one_line(tmp_path, record, expected):
    write_raw_record(tmp_path, record)
    assert error(read_record, tmp_path) == expected


def test_an_older_minimal_record_reads_with_defaults(tmp_path):
    write_raw_record(tmp_path, {"config": {"seed": 1}, "fingerprint": 12})
    record = read_record(tmp_path)
    assert (record.fingerprint, record.overrides, record.improvement, record.changed_by,
            record.checkpoint) == ("", (), None, (), None)  # fmt: skip
    assert record.confidence_threshold == LEGACY_THRESHOLD


# -- the confidence threshold -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"confidence_threshold": 0.9}, 0.9),
        ({"confidence_threshold": 1}, 1.0),
        # before confidence_threshold existed: the failures callback's, else 0.8
        ({"callbacks": {"high_conf_failures": {"threshold": 0.7}}}, 0.7),
        ({"confidence_threshold": None,
          "callbacks": {"high_conf_failures": {"threshold": 0}}}, 0.0),
        ({"callbacks": {"high_conf_failures": {"every_n_epochs": 1}}}, 0.8),
        ({"callbacks": {"high_conf_failures": None}}, 0.8),
        ({"callbacks": None}, 0.8),
        ({}, 0.8),
    ],
)  # fmt: skip
def test_run_threshold_of_current_and_legacy_configs(config, expected):
    value = run_threshold(config)
    assert value == expected and type(value) is float


@pytest.mark.parametrize(
    ("config", "shown"),
    [
        ({"confidence_threshold": 1.5}, "1.5"),
        ({"confidence_threshold": True}, "True"),
        ({"confidence_threshold": "0.8"}, "'0.8'"),
        ({"callbacks": {"high_conf_failures": {"threshold": -0.1}}}, "-0.1"),
        ({"callbacks": {"high_conf_failures": [0.8]}}, "None"),
        ({"callbacks": [0.8]}, "None"),  # run.json is untrusted: not a mapping either
        ({"callbacks": "high_conf_failures"}, "None"),
    ],
)
def test_a_threshold_that_is_no_number_in_the_unit_interval_is_a_data_error(config, shown):
    assert error(run_threshold, config) == (
        f"the run's confidence threshold {shown} is not a number in [0, 1]"
    )


# -- the tested checkpoint ----------------------------------------------------------------------
def test_tested_checkpoint_is_the_recorded_one_else_best_else_last(tmp_path):
    run = RunDir(tmp_path)
    assert error(checkpoint_of_test, tmp_path) == (
        f"no checkpoint in {run.checkpoints} (expected best.ckpt or last.ckpt)"
    )
    run.checkpoints.mkdir()
    (run.checkpoints / "last.ckpt").write_bytes(b"x")
    assert checkpoint_of_test(tmp_path) == run.checkpoints / "last.ckpt"
    (run.checkpoints / "best.ckpt").write_bytes(b"x")
    assert checkpoint_of_test(tmp_path) == run.checkpoints / "best.ckpt"
    write_record(tmp_path, CONFIG, checkpoint=run.checkpoints / "last.ckpt")
    assert checkpoint_of_test(tmp_path, read_record(tmp_path)) == run.checkpoints / "last.ckpt"
    (run.checkpoints / "last.ckpt").unlink()
    assert error(checkpoint_of_test, tmp_path, read_record(tmp_path)) == (
        f"the checkpoint run.json names is missing: {run.checkpoints / 'last.ckpt'}"
    )
