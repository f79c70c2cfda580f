"""SLURM (issue 24): GPUs per node from any ``trainer.devices`` (or one line), a requeued job
resumes from ``last.ckpt``, and a job the scheduler ends without a result is one ``failed:`` line
of the sweep, tested with submitit's local executor on the CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from cnnstress.app.train import run_training
from cnnstress.core.errors import ConfigError
from cnnstress.core.run_dir import read_metrics
from cnnstress.core.slurm import requeued_checkpoint, slurm_gpus
from tests.conftest import ROOT, TINY_RUN, compose_train_config
from tests.test_training import model_metrics


@pytest.mark.parametrize(
    ("devices", "expected"),
    [(4, 4), ("2", 2), ([0, 1], 2), (OmegaConf.create([2, 3, 5]), 3), ("0,1", 2)],
)
def test_gpus_per_node_follow_trainer_devices(devices, expected):
    assert slurm_gpus(devices) == expected


@pytest.mark.parametrize("devices", ["auto", -1, "-1", 0])
def test_devices_slurm_cannot_know_are_one_line(devices):
    with pytest.raises(ConfigError, match="cannot tell SLURM how many GPUs to ask for"):
        slurm_gpus(devices)


@pytest.mark.parametrize(("devices", "expected"), [("[0,1]", 2), ("3", 3)])
def test_slurm_launcher_config_composes_with_a_list_of_devices(tmp_path, devices, expected):
    cfg = compose_train_config(
        tmp_path, ["hydra/launcher=slurm", "trainer=ddp", f"trainer.devices={devices}"],
        keep_hydra=True,
    )  # fmt: skip
    launcher = cfg.hydra.launcher
    assert launcher.gpus_per_node == expected == launcher.tasks_per_node
    assert launcher.max_num_timeout >= 1  # a job at its time limit is requeued, not failed
    assert launcher.signal_delay_s >= 60


def test_auto_devices_with_the_slurm_launcher_need_the_gpus_per_node(tmp_path):
    cfg = compose_train_config(
        tmp_path, ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=auto"], keep_hydra=True
    )
    with pytest.raises(Exception, match=r"ConfigError raised .* cannot tell SLURM"):
        _ = cfg.hydra.launcher.gpus_per_node
    given = compose_train_config(
        tmp_path,
        ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=auto",
         "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4"],
        keep_hydra=True,
    )  # fmt: skip
    assert given.hydra.launcher.gpus_per_node == 4 and given.trainer.devices == "auto"


def test_a_sweep_with_auto_devices_on_slurm_stops_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm",
         "trainer.devices=auto", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cnnstress: error: trainer.devices=auto cannot tell SLURM how many GPUs to ask for: pass "
        "trainer.devices=N (GPUs per node), or hydra.launcher.gpus_per_node=N and "
        "hydra.launcher.tasks_per_node=N to keep trainer.devices=auto"
    ]


def test_only_a_requeued_job_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert requeued_checkpoint(tmp_path) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_checkpoint(tmp_path) is None  # requeued before its first epoch ended
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert requeued_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert requeued_checkpoint(tmp_path) is None


def test_a_requeued_job_continues_where_it_stopped(
    make_config, tiny_cifar10_zip, tmp_path, monkeypatch
):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    common = (f"dataset.root={tiny_cifar10_zip}", "trainer.max_epochs=3", "seed=2")
    uninterrupted = run_training(make_config(*common, output_dir=tmp_path / "whole"))
    run = tmp_path / "requeued"
    crash = "+callbacks.crash._target_=tests.helpers.CrashAtEpoch"
    # the job is stopped at its time limit during epoch 2 (last.ckpt: end of epoch 1) ...
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(make_config(*common, crash, "+callbacks.crash.epoch=2", output_dir=run))
    assert not (run / "metrics.json").exists()
    # ... and SLURM starts it again, in the same directory, with the same command; it would
    # crash if it trained epoch 0 or 1 again
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    resumed = run_training(make_config(*common, crash, "+callbacks.crash.epoch=1", output_dir=run))
    assert model_metrics(resumed) == model_metrics(uninterrupted)
    assert read_metrics(run)["test/acc"] == uninterrupted["test/acc"]


@pytest.mark.slow
def test_a_job_lost_to_the_scheduler_is_one_failed_line(tiny_cifar10_zip, tmp_path):
    # submitit's local executor runs each job in a process of its own, as SLURM does; job 1 is
    # killed (SIGKILL, as the out-of-memory killer or a time limit does): it leaves no result
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=submitit_local",
         *TINY_RUN, f"dataset.root={tiny_cifar10_zip}", "callbacks.gradcam=null",
         "+callbacks.kill._target_=tests.device_helpers.KillProcess",
         "+callbacks.kill.signal_number=0,9", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("cnnstress: failed:")]
    assert len(failed) == 1, done.stderr[-3000:]
    assert failed[0].startswith(f"cnnstress: failed: {sweep / '1'}: the local job ")
    assert "ended without a result" in failed[0] and "_log.err" in failed[0]
    assert (sweep / "0" / "metrics.json").is_file()  # the other job ran to its end
    assert not (sweep / "1" / "metrics.json").exists()
