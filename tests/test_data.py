"""Data sources (zip, folder, torchvision root) and the data module's batches."""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar

from cnnstress.app.train import run_training
from cnnstress.core.augment import RandomCrop, RandomHorizontalFlip, build_augmentation
from cnnstress.core.data import CIFARDataModule, load_split
from cnnstress.core.data.classes import CIFAR10_CLASSES
from cnnstress.core.data.datamodule import DatasetConfig
from cnnstress.core.data.sources import detect_root_kind, resolve_root
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.run_dir import read_record
from tests.conftest import NO_REAL_DATA, REAL_CIFAR10_ZIP


def test_zip_split_is_decoded_in_official_class_order(tiny_cifar10_zip):
    train = load_split(tiny_cifar10_zip, "cifar10", "train")
    test = load_split(tiny_cifar10_zip, "cifar10", "test")
    assert train.images.shape == (160, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (80, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert torch.equal(train.labels, torch.arange(10).repeat_interleave(16))


def test_folder_and_zip_give_identical_tensors(tiny_cifar10_zip, tmp_path):
    with zipfile.ZipFile(tiny_cifar10_zip) as archive:
        archive.extractall(tmp_path / "tree")
    assert detect_root_kind(tmp_path / "tree") == "folder"
    from_folder = load_split(tmp_path / "tree", "cifar10", "test")
    from_zip = load_split(tiny_cifar10_zip, "cifar10", "test")
    assert torch.equal(from_folder.images, from_zip.images)
    assert torch.equal(from_folder.labels, from_zip.labels)


def test_torchvision_root_is_read_without_download(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    files = {}
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        files[name] = {"data": data, "labels": [3, 1, 4, 1]}
    files[CIFAR10.meta["filename"]] = {"label_names": list(CIFAR10_CLASSES)}
    for name, content in files.items():
        (folder / name).write_bytes(pickle.dumps(content))
    # torchvision checks each file's MD5: give it the checksums of these generated files.
    md5 = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in files}
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5[CIFAR10.meta["filename"]]})

    split = load_split(tmp_path, "cifar10", "test")
    assert detect_root_kind(tmp_path) == "torchvision"
    assert split.images.shape == (4, 3, 32, 32)
    assert torch.equal(split.images[0], torch.from_numpy(data[0].reshape(3, 32, 32)))
    assert split.labels.tolist() == [3, 1, 4, 1]


def test_missing_root_offline_says_what_to_pass(tmp_path):
    with pytest.raises(DataError, match=r"dataset\.root="):
        load_split(tmp_path / "nowhere", "cifar10", "train")
    with pytest.raises(DataError, match=r"dataset\.root="):
        load_split(tmp_path / "missing.zip", "cifar10", "train", download=True)


def test_corrupt_zip_is_a_data_error(tiny_cifar10_zip, tmp_path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(tiny_cifar10_zip.read_bytes()[:5000])
    with pytest.raises(DataError, match="cannot read zip"):
        load_split(broken, "cifar10", "train")


def test_wrong_class_folders_are_named(tiny_cifar10_zip):
    with pytest.raises(DataError, match="do not match the official cifar100 classes"):
        load_split(tiny_cifar10_zip, "cifar100", "train")


def make_datamodule(root: Path, seed: int = 42, **settings) -> CIFARDataModule:
    config = DatasetConfig(name="cifar10", root=str(root), num_classes=10, mean=[0.5] * 3,
                           std=[0.25] * 3, **{"val_size": 0, **settings})  # fmt: skip
    augment = build_augmentation(
        {"crop": RandomCrop(padding=4), "flip": RandomHorizontalFlip()}, 10
    )
    return CIFARDataModule(config, seed, augment)


def test_validation_split_is_fixed_by_val_seed_not_run_seed(tiny_cifar10_zip):
    a = make_datamodule(tiny_cifar10_zip, val_size=20, seed=1)
    b = make_datamodule(tiny_cifar10_zip, val_size=20, seed=2)
    a.setup(), b.setup()
    assert torch.equal(a.val_set.indices, b.val_set.indices)
    assert len(a.train_set) == 140 and len(a.val_set) == 20
    assert not set(a.val_set.indices.tolist()) & set(a.train_set.indices.tolist())


def test_batches_are_uint8_on_the_host_and_normalised_after_transfer(tiny_cifar10_zip):
    dm = make_datamodule(tiny_cifar10_zip, batch_size=32)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (80, 3, 32, 32)
    assert torch.equal(batch["index"], torch.arange(80))
    out = dm.on_after_batch_transfer(batch, 0)
    expected = (batch["image"].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(out["image"], expected)
    train_batch = next(iter(dm.train_dataloader()))
    assert train_batch["image"].shape == (32, 3, 32, 32)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.batch_size=0", "dataset.batch_size must be an integer >= 1, got 0"),
        ("dataset.batch_size=-8", "dataset.batch_size must be an integer >= 1, got -8"),
        ("dataset.val_size=-1", "dataset.val_size must be an integer >= 0, got -1"),
        ("dataset.num_classes=7", "dataset.num_classes must be 10 for cifar10, got 7"),
        ("dataset.mean=[0.5,0.5]", "dataset.mean must be a list of 3"),
    ],
)
def test_bad_dataset_values_are_config_errors(make_config, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config(override)


def test_a_batch_larger_than_the_training_split(tiny_cifar10_zip):
    dm = make_datamodule(tiny_cifar10_zip, batch_size=200)
    with pytest.raises(ConfigError, match="batch_size=200 is larger than the training split"):
        dm.setup()


def test_val_size_larger_than_train_split(tiny_cifar10_zip):
    dm = make_datamodule(tiny_cifar10_zip, val_size=160)
    with pytest.raises(ConfigError, match="leaves no training images"):
        dm.setup()


@pytest.mark.skipif(not REAL_CIFAR10_ZIP.is_file(), reason=NO_REAL_DATA)
def test_real_subset_has_official_layout(real_cifar10_subset_zip):
    test = load_split(real_cifar10_subset_zip, "cifar10", "test")
    assert test.images.shape == (1000, 3, 32, 32)
    assert torch.bincount(test.labels).tolist() == [100] * 10


# -- where the data comes from ---------------------------------------------------------------


def test_data_root_resolution_order(tiny_cifar10_zip, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    download = tmp_path / "data"
    # 1. dataset.root when given, whatever else exists.
    found = resolve_root("cifar10", "/my/copy.zip", shared, download)
    assert (found.path, found.source) == ("/my/copy.zip", "dataset.root")
    # 2. nothing local: the torchvision root under the project's data/, downloaded on first use.
    found = resolve_root("cifar10", None, shared, download)
    assert (found.path, found.download, found.source) == (str(download), True, "download")
    # 3. a local copy in $CNNSTRESS_DATA: a zip by its usual name, or a torchvision root.
    shutil.copy(tiny_cifar10_zip, shared / "cifar10-jpeg.zip")
    found = resolve_root("cifar10", None, shared, download)
    assert (found.path, found.download) == (str(shared / "cifar10-jpeg.zip"), False)
    assert resolve_root("cifar100", None, shared, download).source == "download"
    (shared / "cifar-100-python").mkdir()
    assert resolve_root("cifar100", None, shared, download).path == str(shared)
    with pytest.raises(ConfigError, match=r"unknown dataset\.name='mnist'"):
        resolve_root("mnist", None, shared, download)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_failed_download_is_one_line_naming_the_dataset(dataset, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    found = resolve_root(dataset, None, tmp_path / "empty", tmp_path / "data")
    with pytest.raises(DataError) as err:
        load_split(found.path, dataset, "train", found.download)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"could not download {dataset} into {tmp_path / 'data'} (")
    assert "Temporary failure in name resolution" in message
    assert f"pass a local copy of {dataset} as dataset.root=PATH" in message
    other = "cifar100" if dataset == "cifar10" else "cifar10"
    assert f"{other}-jpeg" not in message and f"/{other}" not in message


def test_a_run_records_the_data_it_found(make_config, tiny_cifar10_zip, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(tiny_cifar10_zip, shared / "cifar10.zip")
    cfg = make_config(f"paths.data_dir={shared}", f"paths.download_dir={tmp_path / 'data'}")
    assert cfg.dataset.root is None
    run_training(cfg)
    record = read_record(tmp_path / "run")
    assert record.config["dataset"]["root"] == str(shared / "cifar10.zip")
    assert record.config["dataset"]["download"] is False
    assert not (tmp_path / "data").exists()
