"""Output directories and the resolvers conf/ uses (cnnstress.core.resolvers): a run or sweep
claims its directory when it starts, a second one in the same second gets ``<time>-1``, a
directory named on the command line or a resumed run's directory is used as it is."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from cnnstress.core.errors import UserError
from cnnstress.core.resolvers import (
    ClaimOutputDir,
    claim_unique_dir,
    register_resolvers,
    resumed_run_dir,
    stdout_isatty,
)


# -- claiming a directory -----------------------------------------------------------------------
def test_a_second_and_third_claim_of_the_same_second_get_suffixes(tmp_path):
    base = tmp_path / "runs" / "2024-01-02" / "10-11-12"  # parents do not exist yet
    claimed = [claim_unique_dir(base) for _ in range(3)]
    assert claimed == [str(base), f"{base}-1", f"{base}-2"]
    assert all(Path(p).is_dir() for p in claimed)
    assert sorted(p.name for p in base.parent.iterdir()) == ["10-11-12", "10-11-12-1", "10-11-12-2"]


def test_a_file_in_the_way_is_skipped_like_a_taken_directory(tmp_path):
    (tmp_path / "10-11-12").write_text("not a run")
    assert claim_unique_dir(tmp_path / "10-11-12") == str(tmp_path / "10-11-12-1")


def test_a_parent_that_cannot_be_created_is_one_user_error_line(tmp_path):
    (tmp_path / "outputs").write_text("a file where the outputs folder should be")
    base = tmp_path / "outputs" / "runs" / "10-11-12"
    with pytest.raises(UserError) as err:
        claim_unique_dir(base)
    assert str(err.value) == f"cannot create an output directory at {base}: Not a directory"


# -- the resumed run's directory ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"train": True, "ckpt_path": "/o/runs/d/t/checkpoints/last.ckpt"}, "/o/runs/d/t"),
        ({"train": False, "ckpt_path": "/o/runs/d/t/checkpoints/last.ckpt"}, None),
        ({"train": True, "ckpt_path": "/somewhere/model.ckpt"}, None),
        ({"train": True, "ckpt_path": None}, None),
        ({"train": True}, None),
    ],
)
def test_only_training_from_a_run_checkpoint_resumes_in_that_run(config, expected):
    assert resumed_run_dir(OmegaConf.create(config)) == expected


# -- the Hydra callback -------------------------------------------------------------------------
def hydra_config(tmp_path: Path, overrides: list[str] = (), **top: object) -> DictConfig:
    """The part of a Hydra config ClaimOutputDir reads, read-only as Hydra hands it over."""
    config = OmegaConf.create({
        **top,
        "hydra": {
            "run": {"dir": str(tmp_path / "runs" / "10-11-12")},
            "sweep": {"dir": str(tmp_path / "multiruns" / "10-11-12")},
            "overrides": {"hydra": list(overrides)},
        },
    })  # fmt: skip
    OmegaConf.set_readonly(config, True)
    return config


def test_a_run_claims_its_directory_when_it_starts(tmp_path):
    first, second = hydra_config(tmp_path), hydra_config(tmp_path)
    ClaimOutputDir().on_run_start(first)
    ClaimOutputDir().on_run_start(second)
    assert first.hydra.run.dir == str(tmp_path / "runs" / "10-11-12")
    assert second.hydra.run.dir == str(tmp_path / "runs" / "10-11-12-1")
    assert Path(second.hydra.run.dir).is_dir()


def test_a_run_directory_named_on_the_command_line_is_used_as_given(tmp_path):
    named = tmp_path / "mine"
    config = hydra_config(tmp_path, [f"hydra.run.dir={named}"])
    OmegaConf.set_readonly(config, False)
    config.hydra.run.dir = str(named)
    ClaimOutputDir().on_run_start(config)
    assert config.hydra.run.dir == str(named)
    assert not named.exists() and not (tmp_path / "runs").exists()  # nothing claimed


def test_a_resumed_training_run_keeps_its_directory(tmp_path):
    run = tmp_path / "runs" / "earlier"
    config = hydra_config(tmp_path, train=True, ckpt_path=str(run / "checkpoints" / "last.ckpt"))
    ClaimOutputDir().on_run_start(config)
    assert config.hydra.run.dir == str(run)
    assert not (tmp_path / "runs" / "10-11-12").exists()


def test_a_sweep_claims_its_directory_and_passes_it_to_every_job(tmp_path):
    (tmp_path / "multiruns" / "10-11-12").mkdir(parents=True)  # another sweep, same second
    config = hydra_config(tmp_path, ["hydra/launcher=basic"])
    ClaimOutputDir().on_multirun_start(config)
    claimed = str(tmp_path / "multiruns" / "10-11-12-1")
    assert config.hydra.sweep.dir == claimed and Path(claimed).is_dir()
    assert list(config.hydra.overrides.hydra) == [
        "hydra/launcher=basic",
        f"hydra.sweep.dir={claimed}",
    ]


def test_a_sweep_directory_named_on_the_command_line_is_used_as_given(tmp_path):
    config = hydra_config(tmp_path, ["+hydra.sweep.dir=/given"])
    ClaimOutputDir().on_multirun_start(config)
    assert config.hydra.sweep.dir == str(tmp_path / "multiruns" / "10-11-12")
    assert list(config.hydra.overrides.hydra) == ["+hydra.sweep.dir=/given"]
    assert not (tmp_path / "multiruns").exists()


# -- resolvers ----------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stdout_isatty_says_whether_standard_output_is_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert stdout_isatty() is False
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert stdout_isatty() is True


def test_registered_resolvers_resolve_in_a_config_and_registering_twice_is_harmless(monkeypatch):
    register_resolvers()
    register_resolvers()
    monkeypatch.setattr(sys, "stdout", Terminal())
    cfg = OmegaConf.create(
        {"bar": "${stdout_isatty:}", "devices": "0,1", "gpus": "${slurm_gpus:${devices}}"}
    )
    assert cfg.bar is True
    assert cfg.gpus == 2  # two GPUs listed: two per node (cnnstress.core.slurm)
