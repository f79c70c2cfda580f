"""LightningDataModule serving uint8 CIFAR batches; augments and normalises on the device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cnnstress.augment import BatchAugmentation, build_augmentation
from cnnstress.data.classes import class_names
from cnnstress.data.sources import LabeledImages, load_split
from cnnstress.errors import ConfigError

Batch = dict[str, torch.Tensor]


class IndexedImages(Dataset):
    """Images, labels and their dataset indices; fetches a whole batch with one indexing op.

    ``__getitems__`` makes the DataLoader hand over the list of batch indices at once, so no
    per-sample Python runs; ``collate_fn`` must then be :func:`keep_batch`.
    """

    def __init__(self, data: LabeledImages, indices: torch.Tensor | None = None) -> None:
        self.images = data.images
        self.labels = data.labels
        self.indices = torch.arange(len(data)) if indices is None else indices

    def __len__(self) -> int:
        return self.indices.numel()

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])

    def __getitems__(self, positions: Sequence[int]) -> Batch:
        index = self.indices[torch.as_tensor(positions)]
        # index_select copies whole rows: 5x faster than advanced indexing for a uint8 batch
        image = self.images.index_select(0, index)
        return {"image": image, "target": self.labels.index_select(0, index), "index": index}


def keep_batch(batch: Batch) -> Batch:
    """Collate function for :class:`IndexedImages`: the batch is already stacked."""
    return batch


class CIFARDataModule(L.LightningDataModule):
    """CIFAR-10/100 with the official splits and an optional held-out validation split.

    Batches are dicts: ``image`` uint8 ``(N, 3, 32, 32)`` on the host, ``target`` int64 ``(N,)``,
    ``index`` int64 ``(N,)`` (position in the official split). After the transfer to the device,
    training batches are augmented (per-sample randomness) and every batch is normalised to a
    float ``image``; batch-mixing ops add ``soft_target`` ``(N, num_classes)``.

    Randomness: the shuffle order and the augmentation draw from ``(seed, epoch, rank)`` only,
    so a run resumed at an epoch boundary continues exactly as an uninterrupted one.
    """

    def __init__(
        self,
        name: str,
        root: str,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 128,
        eval_batch_size: int = 512,
        val_size: int = 0,
        val_seed: int = 0,
        download: bool = False,
        num_workers: int = 0,
        pin_memory: bool = True,
        seed: int = 42,
        augmentation: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.classes = class_names(name)
        if num_classes != len(self.classes):
            raise ConfigError(
                f"dataset.num_classes={num_classes} but {name} has {len(self.classes)} classes"
            )
        for key, value in {"batch_size": batch_size, "eval_batch_size": eval_batch_size}.items():
            if int(value) <= 0:
                raise ConfigError(f"dataset.{key} must be a positive integer, got {value}")
        if int(val_size) < 0:
            raise ConfigError(f"dataset.val_size must be >= 0, got {val_size}")
        self.name, self.root, self.download = name, root, download
        self.num_classes = num_classes
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.val_size, self.val_seed, self.seed = int(val_size), int(val_seed), int(seed)
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.augment: BatchAugmentation = build_augmentation(augmentation, num_classes)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.train_set: IndexedImages | None = None
        self.val_set: IndexedImages | None = None
        self.test_set: IndexedImages | None = None
        self._generator: torch.Generator | None = None
        self._generator_key: tuple[int, int, str] | None = None

    @property
    def has_val(self) -> bool:
        """Whether a validation split is carved from the training split."""
        return self.val_size > 0

    def setup(self, stage: str | None = None) -> None:
        """Load the splits (decoded once per process) and carve the validation split."""
        if self.test_set is not None:
            return
        train = load_split(self.root, self.name, "train", self.download)
        if self.val_size >= len(train):
            raise ConfigError(
                f"dataset.val_size={self.val_size} leaves no training images "
                f"({len(train)} in the train split)"
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
        self.test_set = IndexedImages(load_split(self.root, self.name, "test", self.download))

    def _loader(self, dataset: IndexedImages, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        # A DistributedSampler also for one process: its permutation depends only on
        # (seed, epoch), and Lightning calls set_epoch on it every epoch.
        world, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        )
        sampler = DistributedSampler(
            self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        return self._loader(self.train_set, self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size) if self.has_val else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)

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

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map a batch (uint8, or float in [0, 1]) to normalised float32."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images - mean) / std

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images = batch["image"]
        if self.trainer is not None and self.trainer.training:
            generator = self.augmentation_generator(images.device)
            images, soft_target = self.augment(images, batch["target"], generator)
            if soft_target is not None:
                batch = {**batch, "soft_target": soft_target}
        return {**batch, "image": self.normalize(images)}
