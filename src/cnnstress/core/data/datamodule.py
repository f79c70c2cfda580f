"""LightningDataModule serving uint8 CIFAR batches; augments and normalises on the device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from cnnstress.core.augment import BatchAugmentation
from cnnstress.core.data.classes import DATASETS, class_names
from cnnstress.core.data.device_batches import DeviceBatches, DeviceSplit
from cnnstress.core.data.label_errors import LabelErrors, load_label_errors
from cnnstress.core.data.normalize import Normalize
from cnnstress.core.data.sources import LabeledImages, download_dataset, load_split
from cnnstress.core.devices import ON_DEVICE_RULE, on_device_for
from cnnstress.core.errors import ConfigError
from cnnstress.core.rules import Integer, ListOf, Number, OneOf, Text

Batch = dict[str, torch.Tensor]


class IndexedImages(Dataset):
    """The rows ``indices`` of a split, served with their dataset indices; fetches a whole batch
    with one indexing op.

    A batch's ``index`` is the official index of each image when the split knows it
    (``data.ids``: the test split of a torchvision root or of officially named files), else its
    row in ``data`` (the position in the official split). :meth:`rows` maps it back.

    ``__getitems__`` makes the DataLoader hand over the list of batch indices at once, so no
    per-sample Python runs; ``collate_fn`` must then be :func:`keep_batch`.
    """

    def __init__(self, data: LabeledImages, indices: torch.Tensor | None = None) -> None:
        self.data = data
        self.images = data.images
        self.labels = data.labels
        self.indices = torch.arange(len(data)) if indices is None else indices

    @property
    def official_index(self) -> bool:
        """Whether the ``index`` of a batch is the official index of the image."""
        return self.data.ids is not None

    def rows(self, index: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Rows of :attr:`images`/:attr:`labels` ``(K,)`` for batch ``index`` values ``(K,)``.

        Raises:
            IndexError: an index is not in the split.
        """
        return self.data.rows(index)

    def __len__(self) -> int:
        return self.indices.numel()

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])

    def __getitems__(self, positions: Sequence[int]) -> Batch:
        rows = self.indices[torch.as_tensor(positions)]
        index = rows if self.data.ids is None else self.data.ids[rows]
        # index_select copies whole rows: 5x faster than advanced indexing for a uint8 batch
        image, target = self.images.index_select(0, rows), self.labels.index_select(0, rows)
        return {"image": image, "target": target, "index": index}


def keep_batch(batch: Batch) -> Batch:
    """Collate function for :class:`IndexedImages`: the batch is already stacked."""
    return batch


@dataclass
class DatasetConfig:
    """The ``dataset`` config node (conf/dataset/): which CIFAR, where it is, how it is served.

    ``name``, ``num_classes``, ``mean`` and ``std`` come from the dataset's file
    (conf/dataset/cifar10.yaml); the rest are knobs with defaults.
    """

    name: Annotated[str, OneOf(DATASETS)] = MISSING
    num_classes: Annotated[int, Integer(2)] = MISSING
    # per-channel normalisation (pixel values in [0, 1])
    mean: Annotated[list[float], ListOf(Number(0.0, 1.0), 3, 3)] = MISSING
    std: Annotated[list[float], ListOf(Number(0.0, low_open=True), 3, 3)] = MISSING
    # A zip or folder of train/<class>/*, test/<class>/*, or a torchvision CIFAR root. null: a
    # local copy in paths.data_dir ($CNNSTRESS_DATA: e.g. cifar10-jpeg.zip, cifar10.zip,
    # cifar10/ or a torchvision root), else the torchvision root paths.download_dir, downloaded
    # on first use.
    root: Annotated[str | None, Text(optional=True)] = None
    # Let torchvision download into that fallback root (needs internet).
    download: bool = True
    # Training images per step and process; the effective batch is batch_size x devices x
    # num_nodes x trainer.accumulate_grad_batches.
    batch_size: Annotated[int, Integer(1)] = 128
    eval_batch_size: Annotated[int, Integer(1)] = 512
    # Images held out of the official train split for validation: best.ckpt is selected on
    # them, the failure grids and Grad-CAM of every epoch use them, and temperature scaling is
    # fitted on them. 0 trains on all 50,000 (then no best.ckpt, no per-epoch grids, and
    # calibration fits on half of the test set).
    val_size: Annotated[int, Integer(0)] = 5000
    # Fixed seed of the validation split, independent of the run's seed.
    val_seed: Annotated[int, Integer(0)] = 0
    num_workers: Annotated[int, Integer(0)] = 0
    pin_memory: bool = True
    # Keep the uint8 splits on the training device and gather every batch there (no loader,
    # pinning or host-to-device copy per step; CIFAR-10's train split is 150 MB): true, false,
    # or auto (on for CUDA GPUs). The same images per epoch as the host loader.
    on_device: Annotated[Any, ON_DEVICE_RULE] = "auto"
    # Download (dataset.download) once per node (true), or once in all (false: a filesystem
    # shared by the nodes, as on most SLURM clusters); the other processes wait for it.
    prepare_data_per_node: bool = True

    def validate(self, key: str) -> None:
        classes = len(class_names(self.name))
        if self.num_classes != classes:
            raise ConfigError(
                f"{key}.num_classes must be {classes} for {self.name}, got {self.num_classes}"
            )


class CIFARDataModule(L.LightningDataModule):
    """CIFAR-10/100 with the official splits and an optional held-out validation split.

    Batches are dicts: ``image`` uint8 ``(N, 3, 32, 32)`` on the host, ``target`` int64 ``(N,)``,
    ``index`` int64 ``(N,)``: in the test split the official test index where the data has it
    (:attr:`official_test_index`), else the position in the official split (always so for the
    training and validation splits, both carved from the official train split). After the
    transfer to the device, training batches are augmented (per-sample randomness) and every
    batch is normalised to a float ``image``; batch-mixing ops add ``soft_target``
    ``(N, num_classes)``.

    Randomness: the shuffle order and the augmentation draw from ``(seed, epoch, rank)`` only,
    so a run resumed at an epoch boundary continues exactly as an uninterrupted one.

    ``on_device`` (``auto``: on for a CUDA device) keeps the uint8 splits on the training device
    and gathers every batch there (:class:`~cnnstress.core.data.device_batches.DeviceBatches`): the
    same images in the same batches as the host loaders, without a loader or a copy per step.
    ``download`` happens in :meth:`prepare_data`, which Lightning runs in one process per node
    (``prepare_data_per_node``, else in one process in all) while the others wait.

    Args:
        config: the dataset's settings; ``root`` must name the data (see
            :func:`cnnstress.core.data.sources.resolve_root`).
        seed: the run's seed (shuffle and augmentation).
        augmentation: the training augmentation (none by default).
    """

    def __init__(
        self,
        config: DatasetConfig,
        seed: int = 42,
        augmentation: BatchAugmentation | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.classes = class_names(config.name)
        self.name, self.root, self.download = config.name, config.root, config.download
        self.num_classes = config.num_classes
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        self.val_size, self.val_seed, self.seed = config.val_size, config.val_seed, int(seed)
        self.augment = augmentation or BatchAugmentation([], None, config.num_classes)
        self.normalizer = Normalize(config.mean, config.std)
        self.on_device = config.on_device
        self.prepare_data_per_node = config.prepare_data_per_node
        self._device_splits: dict[tuple[int, str], DeviceSplit] = {}
        self.train_set: IndexedImages | None = None
        self.val_set: IndexedImages | None = None
        self.test_set: IndexedImages | None = None
        self._generator: torch.Generator | None = None
        self._generator_key: tuple[int, int, str] | None = None

    @property
    def has_val(self) -> bool:
        """Whether a validation split is carved from the training split."""
        return self.val_size > 0

    @property
    def official_test_index(self) -> bool:
        """Whether test batches carry official test indices (known after :meth:`setup`)."""
        return self.test_set is not None and self.test_set.official_index

    def label_errors(self, stage: str) -> LabelErrors | None:
        """The known label errors for the ``stage`` split's indices, or None.

        Only the test split can have them, and only when its indices are official and the
        dataset has a list (:func:`~cnnstress.core.data.label_errors.load_label_errors`).
        """
        if stage != "test" or not self.official_test_index:
            return None
        return load_label_errors(self.name)

    def prepare_data(self) -> None:
        """Download the dataset when it is missing and downloading is allowed (Lightning calls
        this in one process per node, or in one in all, before any process runs :meth:`setup`)."""
        if self.download:
            download_dataset(self.root, self.name)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits (decoded once per process) and carve the validation split.

        Under a Trainer the data is there already (:meth:`prepare_data`); standalone, setup
        downloads it itself when allowed.
        """
        if self.test_set is not None:
            return
        download = self.download and self.trainer is None
        train = load_split(self.root, self.name, "train", download)
        if self.val_size >= len(train):
            raise ConfigError(
                f"dataset.val_size={self.val_size} leaves no training images "
                f"({len(train)} in the train split)"
            )
        world = self.trainer.world_size if self.trainer is not None else 1
        per_process = (len(train) - self.val_size) // world
        if self.batch_size > per_process:  # drop_last: not one training step per epoch
            raise ConfigError(
                f"dataset.batch_size={self.batch_size} is larger than the training split "
                f"({per_process} images per process): no full batch to train on"
            )
        # The validation split depends on val_seed only, never on the run's seed, so every run
        # of a comparison is selected on the same images.
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.val_seed))
        val_idx, train_idx = (
            order[: self.val_size].sort().values,
            order[self.val_size :].sort().values,
        )
        self.train_set = IndexedImages(train, train_idx)
        self.val_set = IndexedImages(train, val_idx) if self.has_val else None
        self.test_set = IndexedImages(load_split(self.root, self.name, "test", download))

    def _loader(self, dataset: IndexedImages, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=keep_batch,
            num_workers=self.config.num_workers,
            pin_memory=self.config.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.config.num_workers > 0,
            **kwargs,
        )

    def _world(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the attached Trainer (1, 0 without one)."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)

    def data_device(self) -> torch.device | None:
        """The device the splits live on with ``on_device`` (the Trainer's), else None."""
        if self.trainer is None:
            return None
        device = self.trainer.strategy.root_device
        return device if on_device_for(self.on_device, device.type) else None

    def _device_batches(
        self,
        split: IndexedImages,
        device: torch.device,
        sampler: Any,
        batch_size: int,
        drop_last: bool,
    ) -> DeviceBatches:
        key = (id(split.data), str(device))  # the train and validation splits share their data
        if key not in self._device_splits:
            self._device_splits[key] = DeviceSplit(split.data, device)
        split_on_device = self._device_splits[key]
        return DeviceBatches(split_on_device, split.indices, sampler, batch_size, drop_last)

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        # A DistributedSampler also for one process: its permutation depends only on
        # (seed, epoch), and Lightning calls set_epoch on it every epoch.
        world, rank = self._world()
        sampler = DistributedSampler(
            self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        if (device := self.data_device()) is not None:
            return self._device_batches(self.train_set, device, sampler, self.batch_size, True)
        return self._loader(self.train_set, self.batch_size, sampler=sampler, drop_last=True)

    def _eval_batches(self, split: IndexedImages) -> DataLoader | DeviceBatches:
        device = self.data_device()
        if device is None:  # Lightning adds a distributed sampler under DDP
            return self._loader(split, self.eval_batch_size)
        # What Lightning gives a DataLoader under DDP (padded: the module drops duplicates)
        world, rank = self._world()
        sampler = (
            DistributedSampler(split, num_replicas=world, rank=rank, shuffle=False)
            if world > 1
            else SequentialSampler(split)
        )
        return self._device_batches(split, device, sampler, self.eval_batch_size, False)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._eval_batches(self.val_set) if self.has_val else []

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._eval_batches(self.test_set)

    def teardown(self, stage: str) -> None:
        self._device_splits.clear()  # free the device memory once the Trainer is done

    def augmentation_generator(self, device: torch.device) -> torch.Generator:
        """The generator for this epoch's augmentation, seeded from (seed, epoch, rank)."""
        epoch, rank = (
            (self.trainer.current_epoch, self.trainer.global_rank) if self.trainer else (0, 0)
        )
        key = (epoch, rank, str(device))
        if self._generator_key != key:
            seed = int(np.random.SeedSequence([self.seed, epoch, rank]).generate_state(1)[0])
            self._generator = torch.Generator(device=device).manual_seed(seed)
            self._generator_key = key
        return self._generator

    @property
    def mean(self) -> torch.Tensor:
        """``(1, C, 1, 1)`` per-channel mean of the normalisation."""
        return self.normalizer.mean

    @property
    def std(self) -> torch.Tensor:
        """``(1, C, 1, 1)`` per-channel standard deviation of the normalisation."""
        return self.normalizer.std

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map a batch (uint8, or float in [0, 1]) to normalised float32 (:class:`Normalize`)."""
        return self.normalizer(images)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images = batch["image"]
        if self.trainer is not None and self.trainer.training:
            generator = self.augmentation_generator(images.device)
            images, soft_target = self.augment(images, batch["target"], generator)
            if soft_target is not None:
                batch = {**batch, "soft_target": soft_target}
        return {**batch, "image": self.normalize(images)}
