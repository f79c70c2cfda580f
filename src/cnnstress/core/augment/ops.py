"""Per-sample random image ops on whole batches, run on the training device.

Each op takes a float batch ``(N, C, H, W)`` with values in ``[0, 1]`` (pixel space, before
normalisation) and a :class:`torch.Generator` on the batch's device, and draws independent
parameters for every image from that generator only (never the global RNG), so the same seed
gives the same batch. An image not selected by an op's probability ``p`` comes back unchanged,
bit for bit. Every op draws the same amount of randomness whatever ``p`` is.

Written by hand, not taken from a library, because none gives per-image parameters drawn on the
device from a given generator: torchvision.transforms.v2 draws one set of parameters per call
(one crop offset, one angle, one erased box for the whole batch) from the global RNG, and
kornia samples per image but on the CPU from its own generator. ``bench/augment_cost.py``
times the torchvision v2 equivalents next to these ops.

Fill values (Cutout, random erasing) are in pixel space: 0 is black. The reference Cutout and
RandomErasing code erases after normalisation, where 0 is the dataset mean colour; set ``fill``
or ``value`` to the mean (e.g. 0.47) to get that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F

from cnnstress.core.errors import ConfigError
from cnnstress.core.rules import Integer, Interval, Number, OneOf, Probability

CIFAR_SIZE = 32
# Luma weights exactly as torchvision's rgb_to_grayscale (ITU-R 601-2, 0.2989 not 0.299).
_LUMA = (0.2989, 0.587, 0.114)


# -- random draws on the generator's device ---------------------------------------------------
def draw_mask(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Return a ``(N,)`` bool tensor, each entry True with probability ``p``."""
    return torch.rand(n, generator=generator, device=generator.device) < p


def uniform(
    shape: int | tuple[int, ...], low: float, high: float, generator: torch.Generator
) -> torch.Tensor:
    """Float32 draws uniform in ``[low, high)`` of ``shape``, on the generator's device."""
    shape = (shape,) if isinstance(shape, int) else shape
    u = torch.rand(shape, generator=generator, device=generator.device)
    return low + (high - low) * u


def box_mask(
    top: torch.Tensor, left: torch.Tensor, bottom: torch.Tensor, right: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """``(N, 1, H, W)`` bool mask of the boxes ``[top, bottom) x [left, right)`` (each ``(N,)``)."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` luma of an RGB batch (the mean over channels for other channel counts)."""
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    r, g, b = images.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b)[:, None]


# -- image ops --------------------------------------------------------------------------------
@dataclass
class RandomCrop:
    """Pad by ``padding`` pixels, then crop back to the input size at a random offset.

    Offsets are drawn uniformly per image from ``[0, 2 * padding]`` on each axis.
    ``padding_mode``: ``constant`` (zeros, the usual CIFAR crop) or ``reflect`` (mirror the
    border without repeating it, as airbench's translate; ``padding`` must then be smaller than
    the image).
    """

    PADDING_MODES: ClassVar[tuple[str, ...]] = ("constant", "reflect")
    padding: Annotated[int, Integer(0)] = 4
    p: Annotated[float, Probability()] = 1.0
    padding_mode: Annotated[str, OneOf(PADDING_MODES)] = "constant"

    def validate(self, key: str) -> None:
        if self.padding_mode == "reflect" and self.padding >= CIFAR_SIZE:
            raise ConfigError(
                f"{key}.padding must be < {CIFAR_SIZE} (the image size) with padding_mode=reflect, "
                f"got {self.padding}"
            )

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = images.shape
        pad, dev = self.padding, images.device
        if self.padding_mode == "reflect" and pad >= min(h, w):
            raise ConfigError(
                f"crop padding {pad} must be < the image size ({h}x{w}) with padding_mode=reflect"
            )
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=dev)
        # An image that is not cropped keeps the centre offset, i.e. stays unchanged.
        offsets = torch.where(draw_mask(n, self.p, generator), offsets, pad)
        # One gather from the flattened padded images: about 5x faster on CPU than the
        # equivalent 4-D advanced indexing.
        rows = offsets[0, :, None] + torch.arange(h, device=dev)  # (N, H)
        cols = offsets[1, :, None] + torch.arange(w, device=dev)  # (N, W)
        flat = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]
        padded = F.pad(images, (pad, pad, pad, pad), mode=self.padding_mode).flatten(2)
        cropped = padded.gather(2, flat.view(n, 1, h * w).expand(n, c, h * w))
        return cropped.view(n, c, h, w)


@dataclass
class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    p: Annotated[float, Probability()] = 0.5

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = draw_mask(images.shape[0], self.p, generator)[:, None, None, None]
        return torch.where(flip, images.flip(-1), images)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate image ``i`` of ``(N, C, H, W)`` anticlockwise by ``degrees[i]`` about its centre.

    One affine matrix per image (``F.affine_grid``), bilinear sampling, zeros outside the
    source image: torchvision's ``rotate`` with bilinear interpolation, batched per image.
    """
    n, _, h, w = images.shape
    angle = degrees.to(images.dtype).deg2rad()
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    # affine_grid maps output to input coordinates normalised to [-1, 1] per axis; the h/w
    # factors make it a true rotation in pixel space for non-square images.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (h / w), zero], dim=1),
            torch.stack([sin * (w / h), cos, zero], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class RandomRotation:
    """Rotate each image about its centre by an angle uniform in ``[-degrees, degrees]``.

    See :func:`rotate` (bilinear, corners filled with 0).
    """

    degrees: Annotated[float, Number(0.0, 180.0)] = 15.0
    p: Annotated[float, Probability()] = 1.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = images.shape[0]
        angle = uniform(n, -self.degrees, self.degrees, generator)
        selected = draw_mask(n, self.p, generator)
        rotated = rotate(images, torch.where(selected, angle, 0.0))
        return torch.where(selected[:, None, None, None], rotated, images)


def jitter_colors(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Adjust brightness, contrast, then saturation of each image of ``(N, 3, H, W)``.

    ``factors`` is ``(N, 3)``: per image the brightness, contrast and saturation factors, as
    torchvision's ``adjust_brightness``/``adjust_contrast``/``adjust_saturation`` (1 keeps the
    image; each step clamps to ``[0, 1]``). Returns a new tensor.
    """
    brightness, contrast, saturation = factors.to(images.dtype).T[:, :, None, None, None]
    # In place on one fresh tensor: about half the passes over memory of the plain formulas.
    x = (images * brightness).clamp_(0, 1)
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x.mul_(contrast).add_((1 - contrast) * mean).clamp_(0, 1)
    gray = _grayscale(x)
    return x.mul_(saturation).addcmul_(gray, 1 - saturation).clamp_(0, 1)


@dataclass
class ColorJitter:
    """Brightness, contrast and saturation jitter with independent factors per image.

    Each factor is uniform in ``[max(0, 1 - s), 1 + s]`` for its strength ``s`` (torchvision's
    ColorJitter ranges and formulas), applied in the fixed order brightness, contrast,
    saturation (torchvision shuffles the order per call); see :func:`jitter_colors`. With
    probability ``1 - p`` an image keeps all factors at 1. No hue jitter.
    """

    brightness: Annotated[float, Number(0.0)] = 0.2
    contrast: Annotated[float, Number(0.0)] = 0.2
    saturation: Annotated[float, Number(0.0)] = 0.2
    p: Annotated[float, Probability()] = 1.0

    def ranges(self) -> list[tuple[float, float]]:
        """``(low, width)`` of the brightness, contrast and saturation factors, as float32
        values (the arithmetic of a float32 tensor, so the draws match it bit for bit)."""
        strengths = torch.tensor([self.brightness, self.contrast, self.saturation])
        low = (1 - strengths).clamp(min=0)
        return list(zip(low.tolist(), (1 + strengths - low).tolist(), strict=True))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = images.shape[0]
        u = uniform((n, 3), 0.0, 1.0, generator)
        # Python numbers, not a tensor built on the device per call (a host-to-device copy,
        # which makes a GPU step wait): one column per factor.
        factors = torch.stack(
            [low + width * u[:, k] for k, (low, width) in enumerate(self.ranges())], dim=1
        )
        factors = torch.where(draw_mask(n, self.p, generator)[:, None], factors, 1.0)
        return jitter_colors(images, factors)


@dataclass
class Cutout:
    """Cutout (DeVries & Taylor 2017): one ``size x size`` hole per image, filled with ``fill``.

    The hole's centre is uniform over the whole image, so holes near a border are clipped
    (as the paper's code does); rows ``[cy - size // 2, cy - size // 2 + size)``, likewise columns.
    """

    size: Annotated[int, Integer(1)] = 16
    p: Annotated[float, Probability()] = 1.0
    fill: Annotated[float, Number(0.0, 1.0)] = 0.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = images.shape
        dev = images.device
        cy = torch.randint(0, h, (n,), generator=generator, device=dev)
        cx = torch.randint(0, w, (n,), generator=generator, device=dev)
        keep = ~draw_mask(n, self.p, generator)
        top, left = cy - self.size // 2, cx - self.size // 2
        # An image that is not cut gets an empty box (bottom == top).
        bottom = torch.where(keep, top, top + self.size)
        hole = box_mask(top, left, bottom, left + self.size, h, w)
        return images.masked_fill(hole, self.fill)


@dataclass
class RandomErasing:
    """Random erasing with torchvision ``RandomErasing`` semantics, parameters drawn per image.

    With probability ``p``, an image gets one rectangle of area ``scale`` (fraction of the
    image) and aspect ratio ``ratio`` (log-uniform) erased to ``value``. As torchvision, up to
    10 candidate rectangles are drawn and the first that fits (height < H, width < W) is used;
    an image none fits stays unchanged. The top-left corner is uniform over the valid range.
    """

    ATTEMPTS: ClassVar[int] = 10
    p: Annotated[float, Probability()] = 0.5
    scale: Annotated[list[float], Interval(0.0, 1.0)] = field(default_factory=lambda: [0.02, 0.33])
    ratio: Annotated[list[float], Interval(0.0, math.inf)] = field(
        default_factory=lambda: [0.3, 3.3]
    )
    value: Annotated[float, Number(0.0, 1.0)] = 0.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = images.shape
        shape = (n, self.ATTEMPTS)
        area = h * w * uniform(shape, *self.scale, generator)
        log_ratio = uniform(shape, math.log(self.ratio[0]), math.log(self.ratio[1]), generator)
        aspect = log_ratio.exp()
        heights = (area * aspect).sqrt().round().long()
        widths = (area / aspect).sqrt().round().long()
        fits = (heights < h) & (widths < w) & (heights > 0) & (widths > 0)
        first = fits.int().argmax(dim=1, keepdim=True)  # first fitting attempt
        eh, ew = heights.gather(1, first)[:, 0], widths.gather(1, first)[:, 0]
        corner = uniform((n, 2), 0.0, 1.0, generator)
        top = (corner[:, 0] * (h - eh + 1)).long().clamp(max=h - eh)
        left = (corner[:, 1] * (w - ew + 1)).long().clamp(max=w - ew)
        erase = draw_mask(n, self.p, generator) & fits.any(dim=1)
        bottom = torch.where(erase, top + eh, top)
        box = box_mask(top, left, bottom, left + ew, h, w)
        return images.masked_fill(box, self.value)
