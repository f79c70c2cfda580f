"""What every stress needs: the run's backbone, its test images, and how to feed them.

Stresses evaluate and attack the plain backbone of the checkpoint (the averaged weights where
the run averaged them), without the run's test-time augmentation (``tta``), whose gradients
and corrupted views would belong to an ensemble rather than to the model.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnstress.core.data.normalize import Normalize
from cnnstress.core.data.sources import LabeledImages, load_split
from cnnstress.core.errors import ConfigError

S = TypeVar("S")
log = logging.getLogger(__name__)


class NormalizedModel(nn.Module):
    """A backbone fed with pixels in [0, 1] (or uint8): the dataset's :class:`Normalize` runs
    inside, so attacks and corruptions, which work in pixel space, differentiate through it.

    ``forward``: ``(N, 3, H, W)`` -> logits ``(N, C)``.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.normalize = Normalize(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]; float images are returned as float32."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def seeded_subset(n: int, size: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a fixed random subset of ``range(n)`` (all of it when ``size`` is None).

    The test split is stored class by class, so a prefix would hold only the first classes.
    """
    if size is None or size >= n:
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:size].sort().values


@dataclasses.dataclass
class StressContext:
    """A run's trained backbone and test split, ready for the stresses.

    Attributes:
        run_dir: the run directory (``stress.json`` and the PNGs go there).
        net: the backbone in eval mode on ``device`` (takes normalised images).
        cfg: the run's training config.
        device: where models and batches run.
        test: the official test split, uint8 ``(N, 3, 32, 32)`` on the CPU, official labels.
        data_root: the dataset root the splits are read from.
    """

    run_dir: Path
    net: nn.Module
    cfg: DictConfig
    device: torch.device
    test: LabeledImages
    data_root: str
    _clean_logits: torch.Tensor | None = None

    @functools.cached_property
    def model(self) -> NormalizedModel:
        """The backbone behind the dataset normalisation (input: pixels in [0, 1])."""
        mean, std = self.cfg.dataset.mean, self.cfg.dataset.std
        return NormalizedModel(self.net, list(mean), list(std)).to(self.device).eval()

    @property
    def batch_size(self) -> int:
        """Evaluation batch size of the run (``dataset.eval_batch_size``)."""
        return int(OmegaConf.select(self.cfg, "dataset.eval_batch_size", default=512))

    @property
    def num_classes(self) -> int:
        """Number of classes of the run's dataset."""
        return int(self.cfg.dataset.num_classes)

    @property
    def dataset_name(self) -> str:
        """``cifar10`` or ``cifar100``."""
        return str(self.cfg.dataset.name)

    def logits(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Logits ``(N, C)`` float32 on the CPU for uint8 or [0, 1] images ``(N, 3, H, W)``."""
        size = batch_size or self.batch_size
        model = self.model.eval()
        out = []
        # no_grad, not inference_mode: the logits feed autograd later (temperature fitting).
        with torch.no_grad():
            for start in range(0, images.shape[0], size):
                chunk = to_unit(images[start : start + size].to(self.device))
                out.append(model(chunk).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)

    def clean_logits(self) -> torch.Tensor:
        """Logits of the whole test split (computed once)."""
        if self._clean_logits is None:
            self._clean_logits = self.logits(self.test.images)
        return self._clean_logits

    def clean_acc(self) -> float:
        """Top-1 accuracy on the whole test split."""
        return accuracy(self.clean_logits(), self.test.labels)

    def val_split(self) -> LabeledImages | None:
        """The run's held-out validation split (``dataset.val_size > 0``), else None.

        Carved by the data module itself, so it holds exactly the images the run validated on.
        """
        if int(OmegaConf.select(self.cfg, "dataset.val_size", default=0) or 0) <= 0:
            return None
        from cnnstress.core.data import CIFARDataModule
        from cnnstress.core.data.datamodule import DatasetConfig

        ds = self.cfg.dataset
        config = DatasetConfig(
            name=str(ds.name),
            num_classes=int(ds.num_classes),
            mean=list(ds.mean),
            std=list(ds.std),
            root=self.data_root,
            download=False,
            val_size=int(ds.val_size),
            val_seed=int(ds.get("val_seed", 0)),
        )
        module = CIFARDataModule(config, seed=int(self.cfg.get("seed", 0)))
        module.setup("validate")
        val = module.val_set
        return LabeledImages(val.images[val.indices], val.labels[val.indices])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits`` ``(N, C)`` against ``labels`` ``(N,)``; NaN when empty."""
    if labels.numel() == 0:
        return float("nan")
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()


def load_context(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    *,
    net: nn.Module | None = None,
    cfg: DictConfig | None = None,
    data_root: str | Path | None = None,
) -> StressContext:
    """Build the context of a run: its backbone (``checkpoints.load_backbone`` unless ``net``
    and ``cfg`` are given, e.g. at the end of training) and its test split."""
    device = resolve_device(device)
    if net is None or cfg is None:
        from cnnstress.core.checkpoints import load_backbone

        net, loaded_cfg = load_backbone(run_dir, device)
        cfg = cfg if cfg is not None else loaded_cfg
    net = net.to(device).eval()
    root = str(data_root) if data_root is not None else str(cfg.dataset.root)
    test = load_split(root, str(cfg.dataset.name), "test", download=False)
    return StressContext(Path(run_dir), net, cfg, device, test, root)


def resolve_device(device: str | torch.device) -> torch.device:
    """Where the stresses run: ``"auto"`` -> CUDA when available, else the CPU; a CUDA device
    or the CPU as given; any other device (Apple's MPS, ...) -> the CPU.

    The stresses run on the CPU or CUDA only: they need float64 and the JPEG codec, which MPS
    lacks, and their numbers are compared across runs (``<stress>/device`` in ``stress.json``
    says where each ran).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"invalid device {device!r}: {err}") from None
    if resolved.type not in ("cpu", "cuda"):
        log.info("the stresses run on the CPU, not on %s (CPU or CUDA only)", resolved)
        return torch.device("cpu")
    return resolved
