"""A table of bad inputs, each answered by one line, the right exit status, nothing written and
nothing executed (issue 21): config values, data files, run directories, checkpoints and output
paths, checked where the entry points check them; a few rows also through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from cnnstress.analysis import collect_runs
from cnnstress.app.configs import precheck
from cnnstress.app.train import run_training
from cnnstress.core.data.sources import load_split
from cnnstress.core.errors import UserError
from tests.conftest import ROOT, TINY_RUN, compose_train_config

# (overrides, the one line's message): refused by the entry point before Hydra creates anything.
CONFIG_VALUES = [
    (["seed=-1"], "seed must be an integer in [0, 4294967295], got -1"),
    (["seed=abc"], "seed must be an integer in [0, 4294967295], got 'abc'"),
    (["seed=99999999999999"], "seed must be an integer in [0, 4294967295], got 99999999999999"),
    (["seed=1.5"], "seed must be an integer in [0, 4294967295], got '1.5'"),
    (["+sed=3"], "unknown key sed; the top-level keys are seed, train"),
    (["+foo=1"], "unknown key foo;"),
    (["module.tta_val=maybe"], "module.tta_val must be true or false, got 'maybe'"),
    (["skip_completed=maybe"], "skip_completed must be true or false, got 'maybe'"),
    (["dataset.num_workers=-1"], "dataset.num_workers must be an integer >= 0, got -1"),
    (["model.net.width=0"], "model.net.width must be an integer >= 1, got 0"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches must be null, a number"),
    (["module.optimizer.lr=-1"], "module.optimizer.lr must be a number > 0, got -1.0"),
    (["optimizer.lr=0.1"], "unknown key optimizer.lr"),
    (["=simple_cnn"], "override '=simple_cnn' has no key"),
    (["model=resnet1000"], "unknown model option 'resnet1000'; valid choices: fast_net,"),
    (["augmentation.crop.paddng=3"], "unknown key augmentation.crop.paddng"),
    (["stress=[shift]"], "stress.shift.root is not set"),
    (["stress=[adversarial]", "stress.adversarial.eps=[8]"], "stress.adversarial.eps must be"),
    (["module.optimizer.lr=0.1,-1"], "module.optimizer.lr must be a number > 0, got -1"),
    (["hydra.run.dir=/proc/cnnstress/run"], "cannot write into /proc/cnnstress/run"),
    ([f"hydra.run.dir=/tmp/{'x' * 300}"], "is too long"),
    (["paths.log_dir=/proc/nowhere"], "cannot write into /proc/nowhere"),
]


@pytest.mark.parametrize(("overrides", "message"), CONFIG_VALUES)
def test_config_values_are_refused_in_one_line(overrides, message, tmp_path):
    args = [*TINY_RUN, f"paths.log_dir={tmp_path / 'outputs'}", *overrides]
    with pytest.raises(UserError) as caught:
        precheck("train", args)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["device=bogus"], "device must be a torch device available here"),
        (["latest=0"], "latest must be an integer >= 1, got 0"),
        (["thresholds=[1.5]"], "thresholds must be a non-empty list"),
        (["gradcam.method=nope"], "gradcam.method must be one of"),
    ],
)
def test_analysis_settings_are_refused_in_one_line(overrides, message, tmp_path):
    with pytest.raises(UserError, match=message):
        precheck("analyze", [f"paths.log_dir={tmp_path / 'outputs'}", *overrides])
    assert not (tmp_path / "outputs").exists()


def _zip_with(source: Path, target: Path, **entries: bytes) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        for name, data in entries.items():
            dst.writestr(name.replace("__", "/"), data)
    return target


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"test__cat__9999.png": b"not an image"}, "cannot decode image"),
        ({"test__cat__9998.jpg": b"\xff\xd8\xff\xe0 truncated"}, "cannot decode image"),
        ({"test__unicorn__0000.png": b""}, "do not match the official cifar10 classes"),
    ],
)
def test_data_files_are_refused_in_one_line(tiny_cifar10_zip, tmp_path, entries, message):
    bad = _zip_with(tiny_cifar10_zip, tmp_path / "bad.zip", **entries)
    with pytest.raises(UserError, match=message) as caught:
        load_split(bad, "cifar10", "test")
    assert "\n" not in str(caught.value)


def test_a_truncated_zip_and_a_missing_root_are_one_line(tiny_cifar10_zip, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(tiny_cifar10_zip.read_bytes()[:5000])
    with pytest.raises(UserError, match="cannot read zip"):
        load_split(truncated, "cifar10", "test")
    cfg = compose_train_config(tmp_path / "run", [*TINY_RUN, f"dataset.root={tmp_path / 'no'}"])
    with pytest.raises(UserError, match="pass a local copy of cifar10"):
        run_training(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_cifar10_zip: Path) -> Path:
    out = tmp_path_factory.mktemp("bad") / "run"
    run_training(compose_train_config(out, [*TINY_RUN, f"dataset.root={tiny_cifar10_zip}"]))
    return out


def _broken_run(finished: Path, target: Path, case: str) -> Path:
    run = shutil.copytree(finished, target)
    record = json.loads((run / "run.json").read_text())
    if case == "interpolation":
        record["config"]["dataset"]["name"] = "${oc.env:HOME}"
    elif case == "seed_list":
        record["config"]["seed"] = [1, 2]
    elif case == "improvement_text":
        record["improvement"] = "cutout"
    elif case == "not_json":
        (run / "run.json").write_text("{")
        return run
    elif case == "metrics_list":
        (run / "metrics.json").write_text("[1, 2]")
    elif case == "npz_pickle":
        import numpy as np

        with (run / "predictions.npz").open("wb") as f:  # an object array: unpickled on load
            np.savez(f, index=np.array([object()], dtype=object))
    (run / "run.json").write_text(json.dumps(record))
    return run


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("interpolation", "holds an interpolation"),
        ("seed_list", "is not an integer"),
        ("improvement_text", "improvement is not a mapping"),
        ("not_json", "run.json is unreadable"),
        ("metrics_list", "metrics.json is not a mapping"),
        ("npz_pickle", "predictions.npz is unreadable"),
    ],
)
def test_run_directories_are_skipped_with_their_reason(finished, tmp_path, case, reason):
    _broken_run(finished, tmp_path / "sweep" / "bad", case)
    shutil.copytree(finished, tmp_path / "sweep" / "good")
    collection = collect_runs(sweep=tmp_path / "sweep")
    assert [r.path.name for r in collection.runs] == ["good"]
    (skipped,) = collection.skipped
    assert reason in skipped.reason and "\n" not in skipped.reason


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint", "cannot read checkpoint"),
        ({"state_dict": {"net.fc.weight": torch.zeros(2, 2)}}, "does not fit the run's model.net"),
        ([1, 2], "is not a Lightning checkpoint"),
    ],
)
def test_checkpoints_to_resume_or_evaluate_are_refused_before_training(
    make_config, tiny_cifar10_zip, tmp_path, content, message
):
    ckpt = tmp_path / "weights.ckpt"
    if isinstance(content, bytes):
        ckpt.write_bytes(content)
    else:
        torch.save(content, ckpt)
    for train in ("true", "false"):
        cfg = make_config(f"dataset.root={tiny_cifar10_zip}", f"ckpt_path={ckpt}", f"train={train}")
        with pytest.raises(UserError, match=f"ckpt_path: .*{message}"):
            run_training(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def _cli(script: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, script, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("train.py", ["seed=-1"], "seed must be an integer"),
        ("train.py", ["+trainer.gradient_clip_algorithm=foo"], "bad trainer setting"),
        ("analyze.py", ["device=bogus"], "device must be a torch device"),
        ("analyze.py", ["sweep=/no/such/folder"], "sweep=/no/such/folder is not a directory"),
    ],
)
def test_the_cli_answers_one_line_and_exit_status_2(tmp_path, tiny_cifar10_zip, script, args,
                                                    message):  # fmt: skip
    logs = tmp_path / "outputs"
    common = [f"paths.log_dir={logs}"]
    if script == "train.py":
        common += [*TINY_RUN, f"dataset.root={tiny_cifar10_zip}"]
    result = _cli(script, *common, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("cnnstress: error")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(logs.rglob("metrics.json")) and not list(logs.rglob("*.ckpt"))
