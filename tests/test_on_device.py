"""``dataset.on_device`` (issue 24): the uint8 splits live on the training device and batches are
gathered there; the same images in the same batches as the host loaders, for every epoch and
rank, and the same run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from cnnstress.app.train import run_training
from cnnstress.core.data import CIFARDataModule
from cnnstress.core.data.datamodule import DatasetConfig, keep_batch
from cnnstress.core.data.device_batches import DeviceBatches
from cnnstress.core.devices import on_device_for
from cnnstress.core.errors import ConfigError
from tests.test_training import model_metrics


def datamodule(root, on_device, world=1, rank=0, val_size=24) -> CIFARDataModule:
    config = DatasetConfig(
        name="cifar10", root=str(root), num_classes=10, mean=[0.5] * 3, std=[0.25] * 3,
        batch_size=16, eval_batch_size=20, val_size=val_size, on_device=on_device,
    )  # fmt: skip
    dm = CIFARDataModule(config, seed=11)
    dm.setup()
    # What Lightning attaches: the process's place in the run and its device.
    dm.trainer = SimpleNamespace(
        world_size=world,
        global_rank=rank,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    return dm


def epoch_batches(loader, epoch: int) -> list[dict[str, torch.Tensor]]:
    loader.sampler.set_epoch(epoch) if hasattr(loader.sampler, "set_epoch") else None
    return list(loader)


@pytest.mark.parametrize(("world", "rank"), [(1, 0), (2, 0), (2, 1)])
def test_device_batches_are_the_host_loaders_batches(tiny_cifar10_zip, world, rank):
    host = datamodule(tiny_cifar10_zip, False, world, rank)
    device = datamodule(tiny_cifar10_zip, True, world, rank)
    for make in ("train_dataloader", "val_dataloader", "test_dataloader"):
        host_loader, device_loader = getattr(host, make)(), getattr(device, make)()
        if world > 1 and make != "train_dataloader":
            # under DDP Lightning gives an evaluation DataLoader a distributed sampler
            sampler = DistributedSampler(host_loader.dataset, world, rank, shuffle=False)
            host_loader = DataLoader(
                host_loader.dataset, 20, sampler=sampler, collate_fn=keep_batch
            )
        assert isinstance(device_loader, DeviceBatches) and len(device_loader) == len(host_loader)
        for epoch in (0, 1):
            expected = epoch_batches(host_loader, epoch)
            got = epoch_batches(device_loader, epoch)
            assert len(got) == len(expected) > 0
            for a, b in zip(got, expected, strict=True):
                assert a.keys() == b.keys()
                for key in a:
                    assert torch.equal(a[key], b[key]), (make, epoch, key)
    # the training order changes with the epoch, as the host loader's
    train = device.train_dataloader()
    first, second = (epoch_batches(train, e)[0]["index"] for e in (0, 1))
    assert not torch.equal(first, second)


def test_under_ddp_eval_batches_pad_as_lightnings_distributed_sampler(tiny_cifar10_zip):
    # 24 validation images on 2 ranks of eval batch 20: 12 each, none dropped
    ranks = [datamodule(tiny_cifar10_zip, True, 2, r).val_dataloader() for r in (0, 1)]
    seen = torch.cat([b["index"] for loader in ranks for b in loader])
    assert seen.numel() == 24 and seen.unique().numel() == 24


def test_the_splits_are_copied_to_the_device_once(tiny_cifar10_zip):
    dm = datamodule(tiny_cifar10_zip, True)
    train_split = dm.train_dataloader().split
    assert dm.val_dataloader().split is train_split  # the validation split shares the copy
    assert dm.train_dataloader().split is train_split
    assert dm.test_dataloader().split is not train_split


def test_a_run_with_data_on_the_device_equals_the_host_run(make_config, tiny_cifar10_zip, tmp_path):
    runs = [
        model_metrics(
            run_training(
                make_config(
                    f"dataset.root={tiny_cifar10_zip}", "dataset.val_size=32", "seed=5",
                    "trainer.max_epochs=2", f"dataset.on_device={flag}", output_dir=tmp_path / flag,
                )
            )
        )
        for flag in ("false", "true")
    ]  # fmt: skip
    assert runs[0] == runs[1]
    assert "val/acc" in runs[0] and "test/acc" in runs[0]


@pytest.mark.parametrize(
    ("value", "device", "expected"),
    [("auto", "cuda", True), ("auto", "cpu", False), ("auto", "mps", False), (True, "cpu", True),
     (False, "cuda", False)],
)  # fmt: skip
def test_auto_keeps_data_on_cuda_devices_only(value, device, expected):
    assert on_device_for(value, device) is expected


def test_a_bad_on_device_value_is_one_line(make_config):
    with pytest.raises(ConfigError, match=r"^dataset\.on_device must be true or false or one of"):
        make_config("dataset.on_device=sometimes")
