"""Batches gathered on the training device from uint8 splits that live there (airbench-style).

CIFAR fits in any GPU's memory (the 50,000 training images are 150 MB as uint8), so with
``dataset.on_device`` the data module copies each split to the device once and a training step
only indexes it: no DataLoader, no worker, no pinned buffer and no host-to-device copy per
step. The order is the host loader's: the same sampler (a ``DistributedSampler`` seeded with
the run's seed, so a permutation per (seed, epoch, rank)) is read once per epoch and copied to
the device as one index tensor, so both paths train on the same images in the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from cnnstress.core.data.sources import LabeledImages

Batch = dict[str, torch.Tensor]


class DeviceSplit:
    """A split's images, labels and (official) ids on ``device``, copied there once.

    Shapes: ``images`` uint8 ``(N, 3, H, W)``, ``labels`` int64 ``(N,)``, ``ids`` int64 ``(N,)``
    or None (then a batch's ``index`` is the row).
    """

    def __init__(self, data: LabeledImages, device: torch.device) -> None:
        self.device = device
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.ids = None if data.ids is None else data.ids.to(device)

    def gather(self, rows: torch.Tensor) -> Batch:
        """The batch of ``rows`` (int64 on the device): ``image``, ``target``, ``index``."""
        index = rows if self.ids is None else self.ids.index_select(0, rows)
        image = self.images.index_select(0, rows)
        return {"image": image, "target": self.labels.index_select(0, rows), "index": index}


class DeviceBatches:
    """An iterable of batches of ``split`` rows ``indices``, in the order of ``sampler``.

    Lightning treats it as a data loader: it takes ``len()``, iterates it once per epoch and
    calls ``sampler.set_epoch(epoch)`` before, as for a ``DataLoader`` with that sampler.

    Args:
        split: the split on the device.
        indices: rows of the split's tensors, int64 ``(M,)`` on the host; the sampler yields
            positions into it.
        sampler: positions in ``[0, M)``, e.g. the host loader's ``DistributedSampler``.
        batch_size: images per batch.
        drop_last: drop a last, smaller batch.
    """

    def __init__(
        self,
        split: DeviceSplit,
        indices: torch.Tensor,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool,
    ) -> None:
        self.split = split
        self.indices = indices
        self.sampler = sampler
        self.batch_sampler = None  # Lightning reads both attributes of a loader with a sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        positions = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        # one copy per epoch: the rows of every batch of the epoch, built on the device
        rows = torch.tensor(self.indices[positions].tolist(), device=self.split.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.split.gather(rows[start : start + self.batch_size])
