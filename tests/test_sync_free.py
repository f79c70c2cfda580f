"""A sync-free training step (issue 24): no host-device synchronisation per training step in
the baseline and in the fast recipe with CutMix and colour jitter, audited on real training
iterations on the CPU (cnnstress.train.sync_audit), and an audit that does catch planted ones."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from cnnstress.app.train import run_training
from cnnstress.train.callbacks import WeightAverage
from cnnstress.train.sync_audit import SyncAudit, SyncAuditCallback
from tests.conftest import TINY_RUN, compose_train_config

AUDIT = "+callbacks.sync_audit._target_=cnnstress.train.sync_audit.SyncAuditCallback"
# The fast recipe made tiny (tests/test_fast_recipe.py), lookahead every 2 steps.
FAST = (
    "experiment=fast_cifar10", "model.net.widths=[8,16,16]", "model.net.init_images=64",
    "model.net.whiten_bias_epochs=1", "trainer=cpu", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "dataset.batch_size=16", "dataset.eval_batch_size=64",
    "dataset.val_size=0", "dataset.pin_memory=false",
    "callbacks.weight_averaging.every_n_steps=2",
)  # fmt: skip


def audited(tmp_path: Path, data: Path, *overrides: str):
    """Train with the sync audit and return its report (the fast recipe's overrides replace the
    tiny run's settings, as in tests/test_fast_recipe.py)."""
    base = () if "experiment=fast_cifar10" in overrides else TINY_RUN
    cfg = compose_train_config(tmp_path / "run", [*base, f"dataset.root={data}", AUDIT, *overrides])
    run_training(cfg)
    report = SyncAuditCallback.last.report
    assert report is not None and report.steps >= 8, report
    return report


@pytest.mark.parametrize(
    "overrides",
    [
        ("trainer.max_epochs=2",),  # the baseline: simple CNN, Adam, crop + flip
        (*FAST, "trainer.max_epochs=2", "augmentation=[crop,flip,color_jitter,cutmix]"),
        (*FAST, "trainer.max_epochs=1", "augmentation=[crop,flip,mixup,rotation,erasing]"),
    ],
    ids=["baseline", "fast_cutmix_jitter_lookahead", "fast_mixup_rotation_erasing"],
)
def test_a_training_step_never_waits_for_the_device(tmp_path, tiny_cifar10_zip, overrides):
    report = audited(tmp_path, tiny_cifar10_zip, *overrides)
    assert report.syncs == 0, report.by_place  # before issue 24: 5 and 9 per step
    assert report.transfers_per_step == 3  # image, target, index: the host loader's batch


def test_with_data_on_the_device_a_step_copies_nothing(tmp_path, tiny_cifar10_zip):
    report = audited(
        tmp_path, tiny_cifar10_zip, *FAST, "trainer.max_epochs=1", "dataset.on_device=true",
        "augmentation=[crop,flip,color_jitter,cutmix]",
    )  # fmt: skip
    assert report.syncs == 0, report.by_place
    assert report.transfers_per_step == 0


@pytest.mark.parametrize(
    ("kind", "audit_kind"),
    [("item", "sync"), ("bool", "sync"), ("tolist", "sync"), ("cpu", "sync"), ("mask", "shape"),
     ("tensor", "h2d"), ("to", "h2d")],
)  # fmt: skip
def test_the_audit_catches_a_planted_synchronisation(tmp_path, tiny_cifar10_zip, kind, audit_kind):
    report = audited(
        tmp_path, tiny_cifar10_zip, "trainer.max_epochs=1",
        "+callbacks.plant._target_=tests.device_helpers.PlantSync",
        f"+callbacks.plant.kind={kind}",
    )  # fmt: skip
    assert report.per_step == 1.0, report
    assert report.by_kind == {audit_kind: report.steps}
    (place,) = report.by_place
    assert "device_helpers.py" in place  # it names where the synchronisation is


def test_device_placement_is_tracked_as_a_gpu_would_have_it():
    audit = SyncAudit("cpu")
    weight = torch.ones(3)
    audit.mark([weight])
    host = torch.arange(3.0)
    with audit:
        audit.counting = True
        on_device = host.to(weight.device)  # a copy of host data
        (weight * on_device).sum().item()  # reading a device value
        step = torch.tensor(0.0, device="cpu")  # "cpu" written out: the host, as torch.optim
        step.item()  # not a synchronisation
        torch.zeros(2, device=weight.device).to("cpu")  # a copy to the host
        weight.to(weight.device)  # already there
    assert [e.kind for e in audit.events] == ["h2d", "sync", "d2h"]
    assert not audit.is_on_device(host)  # the host tensor stays where it was


def test_weight_average_update_matches_averaged_model_bit_for_bit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(2, 3, 8, 8))
    callback = WeightAverage(every_n_steps=1, decay=0.9, decay_power=1.0, lookahead=False)
    callback._average_model = AveragedModel(copy.deepcopy(net), use_buffers=True)
    reference = AveragedModel(
        copy.deepcopy(net), use_buffers=True, avg_fn=callback._average
    )  # what Lightning's WeightAveraging would run
    for step in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(4, 3, 8, 8))  # moves the BatchNorm statistics
        callback._current_decay = 0.9 * step / 4
        callback._update_average(net)
        reference.update_parameters(net)
    ours = callback._average_model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours[key], value), key
    assert int(ours["n_averaged"]) == 4
