"""The fast CIFAR net of airbench94 (Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single
GPU", 2024, arXiv:2404.00498; reference code github.com/KellerJordan/cifar10-airbench).

Written here from the paper's description: a frozen 2x2 patch-whitening convolution whose filters
come from the training images (:meth:`FastNet.init_from_data`), GELU, three conv groups (conv 3x3
-> max-pool 2 -> BatchNorm -> GELU -> conv 3x3 -> BatchNorm -> GELU), a final 3x3 max-pool, a
linear head without bias and logits scaled by 1/9. About 1.97M parameters for 10 classes.

Shapes for a ``(N, 3, 32, 32)`` input: ``whiten`` ``(N, 24, 31, 31)`` (stride 1, no padding),
``group1`` ``(N, 64, 15, 15)``, ``group2`` ``(N, 256, 7, 7)``, ``group3`` ``(N, 256, 3, 3)``,
``pool`` ``(N, 256, 1, 1)``, ``head`` ``(N, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import nn

from cnnstress.core import devices
from cnnstress.core.errors import ConfigError
from cnnstress.core.rules import Integer, ListOf

# airbench's BatchNorm keeps ``0.6`` of the running statistics per step (its momentum 0.6);
# PyTorch's ``momentum`` is the weight of the *new* batch statistics, so it is 1 - 0.6.
BN_MOMENTUM = 0.4
BN_EPS = 1e-12
# Filters are eigenvectors / sqrt(eigenvalue + eps) of the 2x2 patch covariance (airbench's eps).
WHITEN_EPS = 5e-4
LOGIT_SCALE = 1 / 9


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale (``weight``) stays 1: only the bias is trained, as in airbench."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.weight.requires_grad_(False)


class DiracConv(nn.Conv2d):
    """3x3 'same' convolution without bias whose first ``in_channels`` filters start as the
    identity (``nn.init.dirac_``), the rest with PyTorch's default initialisation."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            nn.init.dirac_(self.weight[: self.in_channels])


class ConvGroup(nn.Module):
    """conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU; halves the spatial size."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = DiracConv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBatchNorm(c_out)
        self.conv2 = DiracConv(c_out, c_out)
        self.norm2 = FrozenScaleBatchNorm(c_out)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


def patches(images: torch.Tensor, size: int = 2) -> torch.Tensor:
    """All ``size x size`` patches (stride 1) of ``(N, C, H, W)`` images as rows
    ``(N * (H - size + 1) * (W - size + 1), C * size * size)``, in a conv weight's layout."""
    c = images.shape[1]
    unfolded = images.unfold(2, size, 1).unfold(3, size, 1)  # (N, C, H', W', size, size)
    return unfolded.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * size * size)


def whitening_filters(images: torch.Tensor, size: int = 2, eps: float = WHITEN_EPS) -> torch.Tensor:
    """``(2 * C * size * size, C, size, size)`` filters that whiten the patches of ``images``.

    The eigenvectors ``v`` of the (uncentred, as airbench; the inputs are normalised) patch
    covariance, scaled by ``1 / sqrt(eigenvalue + eps)``, largest eigenvalue first, followed
    by their negatives (so the GELU after the layer keeps both signs of every component).
    Computed in float64 on the images' device, or on the CPU for a device without float64
    (Apple's MPS: the same filters as a CPU run); returned float32 on that device.
    """
    dim = images.shape[1] * size * size
    exact = devices.supports_float64(images.device)
    device = images.device if exact else "cpu"
    covariance = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    count = 0
    for chunk in images.detach().split(500):  # bounded memory: 500 x 961 patches at a time
        rows = patches(chunk.double() if exact else chunk.to("cpu", torch.float64), size)
        covariance += rows.T @ rows
        count += rows.shape[0]
    covariance /= count
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    scaled = (eigenvectors / (eigenvalues + eps).sqrt()).T  # one filter per row
    filters = scaled.reshape(-1, images.shape[1], size, size)
    return torch.cat([filters, -filters]).float()


class FastNet(nn.Module):
    """airbench94's network (see the module docstring), ``num_classes`` outputs.

    ``whiten`` is a frozen 2x2 convolution (only its bias is trained, for the first
    ``whiten_bias_epochs`` epochs: :meth:`on_train_epoch_start`); its weights are set from
    training images by :meth:`init_from_data` before training, and travel in the checkpoint.
    The BatchNorm scales are frozen at 1. The bias stops training through the optimizer, not
    ``requires_grad``: it keeps its gradient, which DDP needs from every parameter it registered
    in every step, and :meth:`frozen_parameters` names it once its epochs are over, so the
    training module drops its gradient before each optimizer step.

    Args:
        num_classes: outputs of the linear head.
        widths: output channels of ``group1``, ``group2``, ``group3``.
        whiten_bias_epochs: epochs during which the whitening bias is trained.
        init_images: how many training images :meth:`init_from_data` wants.
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 256, 256),
        whiten_bias_epochs: int = 3,
        init_images: int = 5000,
    ) -> None:
        super().__init__()
        if len(widths) != 3 or any(int(w) < 1 for w in widths):
            raise ConfigError(f"model.net.widths must be 3 positive integers, got {list(widths)}")
        w1, w2, w3 = (int(w) for w in widths)
        self.whiten_bias_epochs = int(whiten_bias_epochs)
        self.init_images = int(init_images)
        self.whiten = nn.Conv2d(3, 2 * 3 * 2 * 2, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.whiten.bias.requires_grad_(self.whiten_bias_epochs > 0)
        self._bias_frozen = self.whiten_bias_epochs <= 0
        self.act = nn.GELU()
        self.group1 = ConvGroup(self.whiten.out_channels, w1)
        self.group2 = ConvGroup(w1, w2)
        self.group3 = ConvGroup(w2, w3)
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(w3, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for normalised images ``(N, 3, 32, 32)``."""
        x = self.group3(self.group2(self.group1(self.act(self.whiten(x)))))
        return self.head(self.pool(x).flatten(1)) * LOGIT_SCALE

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from normalised training images ``(N, 3, H, W)``
        (:func:`whitening_filters`); the bias is left as it is."""
        filters = whitening_filters(images, self.whiten.kernel_size[0])
        self.whiten.weight.copy_(filters.to(self.whiten.weight))

    def on_train_epoch_start(self, epoch: int) -> None:
        """Train the whitening bias only during the first ``whiten_bias_epochs`` epochs."""
        self._bias_frozen = epoch >= self.whiten_bias_epochs

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Parameters that still require gradients but must not change in this epoch's
        optimizer steps: the whitening bias once its epochs are over."""
        return [self.whiten.bias] if self._bias_frozen and self.whiten.bias.requires_grad else []


def fast_net(
    num_classes: Annotated[int, Integer(1)] = 10,
    widths: Annotated[list[int], ListOf(Integer(1), 3, 3)] = (64, 256, 256),  # type: ignore[assignment]
    whiten_bias_epochs: Annotated[int, Integer(0)] = 3,
    init_images: Annotated[int, Integer(1)] = 5000,
) -> FastNet:
    """airbench94's net (:class:`FastNet`); ``widths=(64, 256, 256)``: 1,972,792 parameters
    for 10 classes."""
    return FastNet(num_classes, widths, whiten_bias_epochs, init_images)
