"""Run directories and checkpoints are untrusted: nothing in them runs code or reaches the
analyst's environment, and a broken one is skipped with its reason (issue 21)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cnnstress.analysis import collect_runs
from cnnstress.app.analyze import analyze
from cnnstress.app.train import run_training
from cnnstress.core.checkpoints import load_backbone
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.run_dir import RunDir, read_predictions, read_record
from tests.conftest import ROOT, TINY_RUN, compose_train_config


class Payload:
    """Unpickling this creates ``path``: proof that a pickle ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_cifar10_zip: Path) -> Path:
    """One finished tiny run (last.ckpt, run.json, predictions.npz)."""
    out = tmp_path_factory.mktemp("runs") / "seed1"
    cfg = compose_train_config(out, [*TINY_RUN, f"dataset.root={tiny_cifar10_zip}", "seed=1"])
    run_training(cfg)
    return out


def copy_run(source: Path, target: Path, label: str | None = None, **changes: object) -> Path:
    """Copy a run, name its improvement ``label`` and set dotted keys (``a__b``) of its recorded
    config, unresolved."""
    shutil.copytree(source, target)
    record = json.loads((target / "run.json").read_text())
    if label is not None:
        record["improvement"]["name"] = record["config"]["improvement"] = label
    for key, value in changes.items():
        node = record["config"]
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (target / "run.json").write_text(json.dumps(record))
    return target


def test_a_locator_walk_to_torch_load_never_runs_the_payload(finished, tmp_path):
    marker = tmp_path / "pwned"
    payload = tmp_path / "payload.pt"
    torch.save(Payload(marker), payload)
    evil = copy_run(
        finished, tmp_path / "sweep" / "evil", "cutout",
        model__net={"_target_": "cnnstress.core.models.simple_cnn.torch.load", "f": str(payload),
                    "weights_only": False},
    )  # fmt: skip
    with pytest.raises(DataError, match=r"refusing to rebuild model\.net"):
        load_backbone(evil)
    # The whole analysis (Grad-CAM side by side rebuilds every backbone) goes through.
    shutil.copytree(finished, tmp_path / "sweep" / "baseline")
    out = tmp_path / "report"
    analyze(compose_train_config(out, [f"sweep={tmp_path / 'sweep'}"], "analyze"))
    assert not marker.exists()
    assert "refusing to rebuild model.net" in (out / "report.md").read_text()


def test_a_pickled_checkpoint_is_refused_not_run(finished, tmp_path):
    marker = tmp_path / "pwned"
    run = copy_run(finished, tmp_path / "run")
    torch.save({"state_dict": Payload(marker)}, run / "checkpoints" / "last.ckpt")
    with pytest.raises(DataError, match=r"cannot read checkpoint .*UnpicklingError"):
        load_backbone(run)
    assert not marker.exists()


def test_interpolations_in_a_record_are_never_resolved(finished, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNSTRESS_TEST_SECRET", "hunter2")
    copy_run(finished, tmp_path / "sweep" / "env", dataset__name="${oc.env:CNNSTRESS_TEST_SECRET}")
    copy_run(finished, tmp_path / "sweep" / "made", model__name="${oc.create:{a: 1}}")
    copy_run(finished, tmp_path / "sweep" / "missing", dataset__root="???")
    copy_run(finished, tmp_path / "sweep" / "good", seed=1)
    collection = collect_runs(sweep=tmp_path / "sweep")
    reasons = {s.path.name: s.reason for s in collection.skipped}
    assert [r.path.name for r in collection.runs] == ["good"]
    assert all("holds an interpolation or missing value" in reasons[n] for n in reasons)
    out = tmp_path / "report"
    analyze(compose_train_config(out, [f"sweep={tmp_path / 'sweep'}"], "analyze"))
    for name in ("report.md", "report.html", "summary.md", "summary.csv"):
        assert "hunter2" not in (out / name).read_text()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"improvement": ["not", "a", "mapping"]}, "improvement is not a mapping"),
        ({"seed": [1, 2]}, "seed [1, 2] is not an integer"),
        ({"seed": "one"}, "seed 'one' is not an integer"),
        ({"seed": 2**40}, "is not an integer in [0, 2^32)"),
        ({"overrides": "seed=1"}, "overrides is not a list of strings"),
        ({"checkpoint": "../../etc/passwd"}, "is not a path inside the run"),
    ],
)
def test_malformed_records_are_skipped_with_a_reason(finished, tmp_path, change, reason):
    run = shutil.copytree(finished, tmp_path / "sweep" / "bad")
    record = json.loads((run / "run.json").read_text())
    for key, value in change.items():
        if key == "improvement":
            record["improvement"] = value
        elif key in ("overrides", "checkpoint"):
            record[key] = value
        else:
            record["config"][key] = value
    (run / "run.json").write_text(json.dumps(record))
    shutil.copytree(finished, tmp_path / "sweep" / "good")
    collection = collect_runs(sweep=tmp_path / "sweep")
    assert [r.path.name for r in collection.runs] == ["good"]
    assert reason in collection.skipped[0].reason


def test_predictions_outside_the_classes_are_skipped(finished, tmp_path):
    run = shutil.copytree(finished, tmp_path / "sweep" / "bad")
    arrays = read_predictions(run)
    arrays["target"][0] = 11
    np.savez(run / "predictions.npz", **arrays)
    shutil.copytree(finished, tmp_path / "sweep" / "good")
    collection = collect_runs(sweep=tmp_path / "sweep")
    assert [r.path.name for r in collection.runs] == ["good"]
    assert "targets lie outside the 10 classes" in collection.skipped[0].reason


@pytest.mark.parametrize(
    ("checkpoint", "reason"),
    [
        ({"state_dict": {"net.fc.weight": torch.zeros(3, 3)}}, "does not fit the run's model.net"),
        ([1, 2, 3], "is not a Lightning checkpoint"),
        ("text", "is not a Lightning checkpoint"),
    ],
)
def test_an_unusable_checkpoint_costs_only_its_cams(finished, tmp_path, checkpoint, reason):
    bad = copy_run(finished, tmp_path / "sweep" / "smooth", "ls", loss__label_smoothing=0.1)
    torch.save(checkpoint, bad / "checkpoints" / "last.ckpt")
    shutil.copytree(finished, tmp_path / "sweep" / "baseline")
    with pytest.raises(DataError, match=reason):
        load_backbone(bad)
    out = tmp_path / "report"
    analyze(compose_train_config(out, [f"sweep={tmp_path / 'sweep'}"], "analyze"))
    report = (out / "report.md").read_text()
    assert "no CAM column" in report and reason in report
    assert (out / "gradcam_side_by_side.png").is_file()  # the reference's column is drawn


def test_a_rerun_into_an_unfinished_directory_starts_clean(tiny_cifar10_zip, tmp_path):
    run = tmp_path / "run"
    crash = ["+callbacks.crash._target_=tests.helpers.CrashAtEpoch", "+callbacks.crash.epoch=1"]
    first = [*TINY_RUN, f"dataset.root={tiny_cifar10_zip}", "dataset.val_size=32",
             "trainer.max_epochs=2", "seed=1"]  # fmt: skip
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(compose_train_config(run, [*first, *crash]))
    stale = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert (run / "tensorboard").is_dir()
    events_before = sorted(p.name for p in (run / "tensorboard").rglob("events.*"))
    run_training(compose_train_config(run, [*first[:-1], "seed=2"]))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert read_record(run).checkpoint == "checkpoints/best.ckpt"
    fresh = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(stale["net.fc.weight"], fresh["net.fc.weight"])
    assert not set(events_before) & {p.name for p in (run / "tensorboard").rglob("events.*")}
    # What the analysis loads is what the test used.
    net, _ = load_backbone(run)
    assert torch.equal(net.state_dict()["fc.weight"], fresh["net.fc.weight"])


def test_extending_a_finished_run_equals_an_uninterrupted_longer_one(tiny_cifar10_zip, tmp_path):
    base = [*TINY_RUN, f"dataset.root={tiny_cifar10_zip}", "seed=3"]
    run = tmp_path / "run"
    run_training(compose_train_config(run, base))
    last = run / "checkpoints" / "last.ckpt"
    extended = run_training(
        compose_train_config(
            run, [*base, "trainer.max_epochs=2", f"ckpt_path={last}", "skip_completed=false"]
        )
    )
    straight = run_training(
        compose_train_config(tmp_path / "straight", [*base, "trainer.max_epochs=2"])
    )
    assert extended["test/acc"] == straight["test/acc"]
    assert extended["test/loss"] == pytest.approx(straight["test/loss"], rel=1e-6)
    assert read_record(run).config["trainer"]["max_epochs"] == 2
    np.testing.assert_array_equal(
        read_predictions(run)["probs"], read_predictions(tmp_path / "straight")["probs"]
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches must be null, a number"),
        ("trainer.max_steps=0", "trainer.max_steps must be one of -1 or an integer >= 1"),
        ("dataset.batch_size=1000", "dataset.batch_size=1000 is larger than the training split"),
        ("trainer.limit_train_batches=0.001", r"bad trainer setting: .*0\.001 \* 10 < 1"),
    ],
)
def test_a_run_without_a_training_step_is_never_finished(
    make_config, tiny_cifar10_zip, tmp_path, override, message
):
    with pytest.raises(ConfigError, match=message):
        run_training(make_config(f"dataset.root={tiny_cifar10_zip}", override))
    assert not RunDir(tmp_path / "run").finished


def test_analyze_without_arguments_takes_the_sweep_just_made(tiny_cifar10_zip, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = tmp_path / "outputs"
    sweep = subprocess.run(
        [sys.executable, "train.py", "-m", *TINY_RUN, f"dataset.root={tiny_cifar10_zip}",
         f"paths.log_dir={logs}", "seed=1,2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    (sweep_dir,) = (logs / "multiruns").glob("*/*")
    out = subprocess.run(
        [sys.executable, "analyze.py", f"paths.log_dir={logs}", "gradcam.top_n=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(sweep_dir) in out.stderr + out.stdout
    # Composing the analysis config created no multirun directory of its own.
    assert list((logs / "multiruns").glob("*/*")) == [sweep_dir]
    (report,) = (logs / "analysis").glob("*/*/report.md")
    assert "seed" in report.read_text()


def test_an_analysis_never_writes_over_another_report(finished, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.html").write_text("an earlier report")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "analyze.py", f"runs=[{finished}]", f"hydra.run.dir={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"cnnstress: error: {out} already holds an analysis (report.html); give another "
        "hydra.run.dir, or leave it out for a new directory"
    ]
    assert (out / "report.html").read_text() == "an earlier report"
    assert not (out / ".hydra").exists()


def test_record_written_with_checkpoint_path(finished):
    record = read_record(finished)
    assert record.checkpoint == "checkpoints/last.ckpt"
    assert OmegaConf.create(record.config).model.name == "simple_cnn"
    assert pickle.dumps(record)  # plain data


# -- data files ---------------------------------------------------------------------------------
def _copy_zip(source: Path, target: Path, edit) -> Path:
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        edit(dst)
    return target


def test_a_zip_made_on_macos_reads(tiny_cifar10_zip, tmp_path):
    from cnnstress.core.data.sources import load_split

    def add_metadata(archive):
        archive.writestr("__MACOSX/test/cat/._0000.png", b"\x00\x05\x16\x07 resource fork")
        archive.writestr("test/cat/.DS_Store", b"junk")

    mac = _copy_zip(tiny_cifar10_zip, tmp_path / "mac.zip", add_metadata)
    assert len(load_split(mac, "cifar10", "test")) == 80


def test_a_corrupt_deflate_stream_is_one_line(tiny_cifar10_zip, tmp_path):
    import zipfile

    from cnnstress.core.data.sources import load_split

    path = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(tiny_cifar10_zip) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    start = data.index(b"test/cat/0003.png") + len(b"test/cat/0003.png")
    data[start + 40 : start + 80] = bytes(range(40))  # scramble the compressed bytes
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"cannot read zip|cannot decode image"):
        load_split(path, "cifar10", "test")


def test_an_unreadable_folder_entry_is_one_line(tiny_cifar10_zip, tmp_path):
    import zipfile

    from cnnstress.core.data.sources import load_split

    with zipfile.ZipFile(tiny_cifar10_zip) as archive:
        archive.extractall(tmp_path / "tree")
    (tmp_path / "tree" / "test" / "cat" / "0099.png").mkdir()  # a folder where a file should be
    with pytest.raises(DataError, match=r"cannot read .*0099\.png"):
        load_split(tmp_path / "tree", "cifar10", "test")
