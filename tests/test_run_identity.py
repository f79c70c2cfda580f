"""Run identity: run.json, skipping only identical runs, unique run directories, sweeps over
augmentation lists, sweeps that keep going, the override pre-check, OneCycle with scaling."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnnstress.app.analyze import analyze
from cnnstress.app.train import run_training
from cnnstress.core.errors import ConfigError
from cnnstress.core.identity import fingerprint, run_identity
from cnnstress.core.overrides import check_group_choices
from cnnstress.core.resolvers import claim_unique_dir
from cnnstress.core.run_dir import read_metrics, read_record
from cnnstress.train.training import build_datamodule, build_module
from tests.conftest import ROOT, TINY_RUN, compose_train_config


def run_cli(*args: str, multirun: bool = False, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), *TINY_RUN, *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: int = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_run_json_records_the_resolved_config_and_its_fingerprint(make_config, tiny_cifar10_zip,
                                                                  tmp_path):  # fmt: skip
    cfg = make_config(f"dataset.root={tiny_cifar10_zip}")
    run_training(cfg)
    record = read_record(tmp_path / "run")
    assert record.config["dataset"]["root"] == str(tiny_cifar10_zip)
    assert record.config["seed"] == 42 and record.improvement == "baseline"
    assert record.fingerprint == fingerprint(run_identity(record.config))
    identity = run_identity(record.config)
    # Outputs, logging, observers and the label are not part of what the run is.
    assert not any(k.startswith(("paths.", "logger.", "callbacks.gradcam")) for k in identity)
    assert "improvement" not in identity and "trainer.enable_progress_bar" not in identity
    assert identity["trainer.max_epochs"] == 1 and identity["augmentation.crop.padding"] == 4


def test_rerun_into_a_finished_directory(make_config, tiny_cifar10_zip, tmp_path):
    run = tmp_path / "run"
    first = run_training(make_config(f"dataset.root={tiny_cifar10_zip}"))
    stamp = (run / "metrics.json").stat().st_mtime_ns

    # The same config: skipped, nothing rewritten.
    assert run_training(make_config(f"dataset.root={tiny_cifar10_zip}")) == pytest.approx(first)
    assert (run / "metrics.json").stat().st_mtime_ns == stamp

    # Another config into the finished directory: refused with the differing keys.
    changed = make_config(f"dataset.root={tiny_cifar10_zip}", "trainer.max_epochs=2")
    with pytest.raises(ConfigError) as err:
        run_training(changed)
    assert str(err.value) == (
        f"{run} holds a finished run of another config (trainer.max_epochs: 1 -> 2); use "
        "another hydra.sweep.dir (or hydra.run.dir), or skip_completed=false to replace it"
    )
    assert (run / "metrics.json").stat().st_mtime_ns == stamp

    # skip_completed=false replaces it, and the record says what ran.
    run_training(make_config(f"dataset.root={tiny_cifar10_zip}", "trainer.max_epochs=2",
                      "skip_completed=false"))  # fmt: skip
    assert read_record(run).config["trainer"]["max_epochs"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]


def test_a_finished_run_without_a_record_is_not_reused(make_config, tiny_cifar10_zip, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
    with pytest.raises(ConfigError, match=r"finished run without a readable run\.json"):
        run_training(make_config(f"dataset.root={tiny_cifar10_zip}"))


def test_no_augmentation_run(make_config, tiny_cifar10_zip, tmp_path):
    cfg = make_config(f"dataset.root={tiny_cifar10_zip}", "augmentation=[]")
    augment = build_datamodule(cfg).augment
    assert augment.image_ops == [] and augment.mix_op is None
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out, soft = augment(images, torch.zeros(4, dtype=torch.long), torch.Generator())
    assert soft is None and torch.equal(out, images.float() / 255)
    run_training(cfg)
    record = read_record(tmp_path / "run")
    assert (record.improvement, record.changed_by) == ("baseline", ("augmentation=[]",))
    assert "augmentation.crop.padding" not in run_identity(record.config)


def test_override_precheck_uses_hydras_parser():
    check_group_choices(["augmentation=[],[crop,flip]", "model=simple_cnn,resnet18", "-m"])
    check_group_choices(["+callbacks.crash.epoch=5,0", "~logger", "augmentation.cutout.size=8"])
    with pytest.raises(ConfigError, match="unknown augmentation option 'blurr'; valid choices"):
        check_group_choices(["augmentation=[],[crop,blurr]"])
    with pytest.raises(ConfigError, match="unknown model option 'nope'"):
        check_group_choices(["model=simple_cnn,nope"])


def test_claim_unique_dir_never_hands_out_a_directory_twice(tmp_path):
    base = str(tmp_path / "runs" / "12-00-00")
    claimed = [claim_unique_dir(base) for _ in range(3)]
    assert claimed == [base, f"{base}-1", f"{base}-2"]
    assert all(Path(p).is_dir() for p in claimed)


@pytest.mark.slow
def test_two_runs_started_at_once_get_their_own_directories(tiny_cifar10_zip, tmp_path):
    log_dir = tmp_path / "outputs"
    common = (f"dataset.root={tiny_cifar10_zip}", f"paths.log_dir={log_dir}")
    processes = [run_cli(*common, f"seed={seed}") for seed in (1, 2)]
    results = [finish(p) for p in processes]
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    runs = sorted(p for p in (log_dir / "runs").glob("*/*") if p.is_dir())
    assert len(runs) == 2
    assert sorted(read_record(r).config["seed"] for r in runs) == [1, 2]
    assert not (log_dir / "multiruns").exists()


@pytest.mark.slow
def test_sweep_over_augmentation_lists_and_its_analysis(tiny_cifar10_zip, tmp_path):
    sweep = tmp_path / "sweep"
    sweep_args = ("augmentation=[],[crop,flip]", f"hydra.sweep.dir={sweep}")
    rc, _, err = finish(run_cli(f"dataset.root={tiny_cifar10_zip}", *sweep_args, multirun=True))
    assert rc == 0, err[-3000:]
    records = [read_record(sweep / job) for job in ("0", "1")]
    # [crop,flip] is exactly the baseline's augmentation: the run is the baseline.
    assert [r.changed_by for r in records] == [("augmentation=[]",), ()]
    report = analyze(compose_train_config(tmp_path / "report", [f"sweep={sweep}"], "analyze"))
    rows = {r["name"]: r for r in csv.DictReader((report / "summary.csv").open())}
    assert set(rows) == {"augmentation=[]", "baseline"}
    assert rows["augmentation=[]"]["reference"] == "cifar10/simple_cnn/baseline"
    # reference= accepts any group name, e.g. the run without augmentation.
    other = analyze(compose_train_config(
        tmp_path / "report2", [f"sweep={sweep}", 'reference="augmentation=[]"'], "analyze"
    ))  # fmt: skip
    rows = list(csv.DictReader((other / "summary.csv").open()))
    (compared,) = [r for r in rows if r["reference"]]
    assert compared["reference"] == "cifar10/simple_cnn/augmentation=[]"
    assert compared["constrained"] == "1"
    assert compared["differs_in"].startswith("augmentation")


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep(tiny_cifar10_zip, tmp_path):
    sweep = tmp_path / "sweep"
    crash = ("+callbacks.crash._target_=tests.helpers.CrashAtEpoch", "+callbacks.crash.epoch=0,5")
    roots = f"dataset.root={tiny_cifar10_zip},{tmp_path / 'missing.zip'}"
    rc, _, err = finish(run_cli(roots, *crash, f"hydra.sweep.dir={sweep}", multirun=True))
    assert rc == 1
    finished = sorted(p.name for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert finished == ["1"]  # epoch 5 is never reached in a 1-epoch run; no data for 2 and 3
    failed = [line for line in err.splitlines() if line.startswith("cnnstress: failed: ")]
    assert failed[0] == (
        f"cnnstress: failed: {sweep / '0'}: RuntimeError: simulated crash at the start of "
        "epoch 0 (traceback in the job's log)"
    )
    assert [line.split(": ")[2] for line in failed[1:]] == [str(sweep / "2"), str(sweep / "3")]
    assert all("pass a local copy of cifar10" in line for line in failed[1:])
    assert "Traceback" in (sweep / "0" / "train.log").read_text()


def test_a_bad_value_in_a_sweep_stops_it_before_any_job(tiny_cifar10_zip, tmp_path):
    sweep = tmp_path / "sweep"
    rc, _, err = finish(run_cli(f"dataset.root={tiny_cifar10_zip}", "module.optimizer.lr=1e-3,-1",
                                f"hydra.sweep.dir={sweep}", multirun=True))  # fmt: skip
    assert rc == 2 and not sweep.exists()
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("cnnstress: error: module.optimizer.lr must be a number > 0, got -1.0 (job ")
    )


def test_one_cycle_peak_follows_the_scaled_learning_rate(tmp_path):
    overrides = ["scheduler=onecycle", "module.optimizer.lr=0.01", "module.lr_scaling.rule=linear"]
    cfg = compose_train_config(tmp_path, [*TINY_RUN, *overrides])
    module = build_module(cfg)
    # batch 64 on 8 processes: 512 images per step, 4x the reference batch (128)
    module._trainer = SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=64), world_size=8, accumulate_grad_batches=1,
        estimated_stepping_batches=10,
    )  # fmt: skip
    optimizer = module.configure_optimizers()["optimizer"]
    assert module.base_lr() == pytest.approx(0.04)
    assert optimizer.param_groups[0]["max_lr"] == pytest.approx(0.04)
    assert cfg.module.optimizer.lr == 0.01  # the config is untouched


def test_scaled_rate_is_logged(make_config, tiny_cifar10_zip, tmp_path):
    cfg = make_config(f"dataset.root={tiny_cifar10_zip}", "scheduler=onecycle",
                      "module.optimizer.lr=0.01", "module.lr_scaling.rule=linear",
                      "module.lr_scaling.reference_batch_size=8")  # fmt: skip
    metrics = run_training(cfg)
    assert metrics["train/base_lr"] == pytest.approx(0.02)  # batch 16 / reference 8
    # OneCycle starts at max_lr / div_factor (25): the logged rate is the one really used.
    assert read_metrics(tmp_path / "run")["train/lr"] == pytest.approx(0.02 / 25, rel=1e-5)
