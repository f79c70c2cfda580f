"""Sweeps, DDP and launchers: Hydra multirun, 2-process CPU DDP (gloo), SLURM config."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from cnnstress.app.analyze import analyze
from cnnstress.app.train import run_training
from cnnstress.core.run_dir import read_metrics, read_predictions
from tests.conftest import ROOT, TINY_RUN, compose_train_config


def run_sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *TINY_RUN, *overrides,
         f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def zip_with_81_test_images(source: Path, target: Path) -> Path:
    """``source`` plus one more airplane test image: 81 test images, odd on 2 ranks."""
    shutil.copy(source, target)
    with zipfile.ZipFile(target, "a") as archive:
        archive.writestr("test/airplane/0008.png", archive.read("test/airplane/0000.png"))
    return target


def test_ddp_job_in_a_multirun_equals_single_process_evaluation(
    make_config, tiny_cifar10_zip, tmp_path
):
    # 81 test images and 33 validation images on 2 ranks: the distributed sampler pads both
    # splits with a duplicate, which must never be counted.
    data = zip_with_81_test_images(tiny_cifar10_zip, tmp_path / "odd.zip")
    sweep = tmp_path / "sweep"
    run_sweep(
        sweep, f"dataset.root={data}", "seed=3", "trainer=ddp", "trainer.accelerator=cpu",
        "trainer.devices=2", "dataset.val_size=33",
    )  # fmt: skip
    # One job, both ranks in its directory, one set of files (rank 0 writes).
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]
    run = sweep / "0"
    assert (run / "train_ddp_process_1.log").is_file()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 1
    assert not list(run.glob("tensorboard/version_*")) and not (ROOT / "multirun").exists()
    ddp = read_metrics(run)
    assert ddp["train/effective_batch_size"] == 2 * 16

    val = json.loads((run / "failures" / "val_failures.json").read_text())
    assert val["num_images"] == 33  # not 34: the padded duplicate is dropped
    evaluation = tmp_path / "eval"
    single = run_training(
        make_config(
            f"dataset.root={data}", "train=false", "dataset.val_size=33",
            f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", output_dir=evaluation,
        )
    )  # fmt: skip
    for key in ("test/acc", "test/acc_top5", "test/high_conf_failures"):
        assert ddp[key] == single[key], key
    assert ddp["test/loss"] == pytest.approx(single["test/loss"], rel=1e-5)
    a, b = read_predictions(run), read_predictions(evaluation)
    assert a["probs"].shape == (81, 10)  # padding the sampler added is not counted
    assert len(np.unique(a["index"])) == 81
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["target"], b["target"])
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
    matrix = "confusion_matrix.json"
    assert json.loads((run / matrix).read_text()) == json.loads((evaluation / matrix).read_text())


def test_multirun_sweep_runs_every_job_and_resumes(tiny_cifar10_zip, tmp_path):
    sweep = tmp_path / "sweep"
    args = (f"dataset.root={tiny_cifar10_zip}", "improvement=baseline,label_smoothing", "seed=0,1")
    run_sweep(sweep, *args)
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1", "2", "3"]
    jobs = set()
    for run in runs:
        assert (run / "metrics.json").is_file() and (run / "predictions.npz").is_file()
        assert (run / "checkpoints" / "last.ckpt").is_file()
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        jobs.add((cfg.improvement, cfg.seed))
    assert jobs == {(i, s) for i in ("baseline", "label_smoothing") for s in (0, 1)}

    # Re-running the same sweep into the same directory redoes only the incomplete job.
    (runs[2] / "metrics.json").unlink()
    before = {run: (run / "metrics.json").stat().st_mtime_ns for run in runs if run != runs[2]}
    result = run_sweep(sweep, *args)
    assert (runs[2] / "metrics.json").is_file()
    assert {run: (run / "metrics.json").stat().st_mtime_ns for run in before} == before
    assert (
        result.stderr.count("already holds this finished run: skipping it")
        + result.stdout.count("already holds this finished run: skipping it")
        == 3
    )

    # analyze.py reads the sweep directory: two groups of two seeds.
    report = analyze(compose_train_config(tmp_path / "report", [f"sweep={sweep}"], "analyze"))
    with (report / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["name"] for row in rows) == ["baseline", "label_smoothing"]
    assert {row["n_seeds"] for row in rows} == {"2"}


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm", "local_parallel"])
def test_launcher_configs_compose_without_a_cluster(tmp_path, launcher):
    cfg = compose_train_config(
        tmp_path, [f"hydra/launcher={launcher}", "trainer=ddp", "trainer.devices=4"],
        keep_hydra=True,
    )  # fmt: skip
    target = cfg.hydra.launcher._target_
    if launcher == "local_parallel":
        assert target.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    else:
        assert target.endswith("submitit_launcher.SlurmLauncher")
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 4 == cfg.hydra.launcher.tasks_per_node
