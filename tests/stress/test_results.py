"""stress.json (format 2): entries round-trip, a re-run replaces only its own entry, and every
malformed file is one DataError naming the file."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from cnnstress.core.errors import DataError
from cnnstress.stress.results import (
    FORMAT,
    Measurement,
    StoredStress,
    measure,
    read_stored,
    settings_record,
    write_stored,
)


def entry(name: str = "corruptions", acc: float = 0.5, **changes) -> StoredStress:
    rows = (
        measure("clean_acc", np.float32(0.75), headline=True),
        measure("acc", acc, corruption="fog", severity=3),
        measure("acc", float("nan"), corruption="fog", severity=4),  # undefined: null
        measure("acc", torch.tensor(0.25), attack="pgd", eps=8 / 255),
    )
    fields = dict(
        name=name, settings={"types": ["fog"], "severities": [3, 4], "root": None},
        computed_by="analyze.py", time="2025-01-02T03:04:05+00:00", device="cpu",
        checkpoint="checkpoints/best.ckpt", info={"source": "generated", "num_images": 80},
        measurements=rows,
    )  # fmt: skip
    return StoredStress(**{**fields, **changes})


def test_measure_keeps_plain_numbers_and_sorted_coordinates():
    m = measure("acc", np.float64(0.5), headline=True, severity=np.int64(3), corruption="fog")
    assert m == Measurement("acc", 0.5, (("corruption", "fog"), ("severity", 3)), True)
    assert type(m.at("severity")) is int and m.at("eps") is None
    assert measure("acc", float("inf")).value is None and measure("acc", None).value is None
    for bad in (True, [1, 2], None):
        with pytest.raises(TypeError, match="must be str or int or float"):
            measure("acc", 0.5, corruption=bad)
    for bad in (True, "3", 3.0):  # the analysis computes with severities: integers only
        with pytest.raises(TypeError, match="coordinate severity=.* must be int"):
            measure("acc", 0.5, severity=bad)
    with pytest.raises(TypeError, match="must be int or float"):
        measure("acc", 0.5, eps="8/255")


def test_entries_round_trip_through_the_file(tmp_path):
    written = {"corruptions": entry(), "calibration": entry("calibration", computed_by="train.py")}
    assert write_stored(tmp_path, written) == written
    assert read_stored(tmp_path) == written
    data = json.loads((tmp_path / "stress.json").read_text())
    assert data["format"] == FORMAT and list(data["stresses"]) == ["calibration", "corruptions"]
    rows = data["stresses"]["corruptions"]["measurements"]
    where = {"corruption": "fog", "severity": 4}
    assert rows[2] == {"metric": "acc", "value": None, "where": where, "headline": False}
    assert read_stored(tmp_path / "elsewhere") == {}  # no file: nothing stored


def test_a_rerun_replaces_its_entry_and_keeps_the_others(tmp_path):
    write_stored(tmp_path, {"corruptions": entry(), "shift": entry("shift")})
    again = entry(acc=0.125, time="2025-02-02T00:00:00+00:00", info={"source": "files"})
    kept = write_stored(tmp_path, {"corruptions": again})
    assert kept == read_stored(tmp_path) == {"corruptions": again, "shift": entry("shift")}


@dataclass
class Knobs:
    eps: tuple = (0.5, 1)
    seed: np.int64 = field(default_factory=lambda: np.int64(3))


def test_settings_record_is_plain_json():
    assert settings_record(Knobs()) == {"eps": [0.5, 1], "seed": 3}


def bad_entry(**row_changes) -> dict:
    good = entry().to_json()
    good["measurements"][0].update(row_changes)
    return {"format": FORMAT, "stresses": {"corruptions": good}}


MALFORMED = {
    "not JSON": "{ not json",
    "format 1 (flat keys)": json.dumps({"corruptions/fog/3/acc": 0.5, "calibration/device": "cpu"}),
    "a value that is a string": json.dumps(bad_entry(value="0.5")),
    "where with a list": json.dumps(bad_entry(where={"severity": [1, 2]})),
    "a boolean coordinate": json.dumps(bad_entry(where={"severity": True})),
    # the analysis and its figures compute with these: a text severity or eps is refused here
    "a text severity": json.dumps(bad_entry(where={"corruption": "fog", "severity": "3"})),
    "a text eps": json.dumps(bad_entry(where={"attack": "pgd", "eps": "8/255"})),
    "a float step": json.dumps(bad_entry(where={"step": 1.5, "block": "fc"})),
    "headline not a boolean": json.dumps(bad_entry(headline="yes")),
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "stresses not a mapping": json.dumps({"format": FORMAT, "stresses": []}),
    "info holding a list": json.dumps(
        {"format": FORMAT, "stresses": {"x": {**entry().to_json(), "info": {"a": [1]}}}}
    ),
    "not UTF-8": b"\xff\xfe\x00{",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_file_is_one_data_error_naming_it(tmp_path, case):
    path = tmp_path / "stress.json"
    content = MALFORMED[case]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=str(path)):
        read_stored(tmp_path)


def test_writing_over_a_malformed_file_says_so(tmp_path, caplog):
    (tmp_path / "stress.json").write_text(MALFORMED["format 1 (flat keys)"])
    with caplog.at_level(logging.WARNING, logger="cnnstress.stress.results"):
        kept = write_stored(tmp_path, {"shift": entry("shift")})
    assert kept == read_stored(tmp_path) == {"shift": entry("shift")}
    assert "replacing the whole stress.json" in caplog.text and "format 2" in caplog.text
