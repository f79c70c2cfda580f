"""Batch-mixing ops (CutMix, MixUp) with a mixing weight drawn per image, and soft targets.

Each op takes a float batch ``(N, C, H, W)`` in ``[0, 1]``, soft targets ``(N, K)`` (one-hot
rows, or already soft) and a :class:`torch.Generator` on the batch's device, and returns the
mixed batch and mixed targets of the same shapes and dtypes. Image ``i`` is mixed with partner
``perm[i]`` of one random permutation of the batch (drawn per batch from the generator; a
fixed point mixes an image with itself, which leaves it and its target unchanged). Whether an
image is mixed (probability ``p``), its weight ``lambda`` and its box are drawn per image.

Written by hand because torchvision.transforms.v2 CutMix/MixUp (like the papers' code) draw one
lambda and one box per batch from the global RNG, and ``torch.distributions.Beta`` accepts no
generator. Beta draws here are generator-driven: ``Beta(a, b) = G_a / (G_a + G_b)`` with Gamma
draws by Marsaglia & Tsang's method (2000) in log space, boosted for shape < 1
(``G_a = G_{a+1} * U^(1/a)``), so small alphas neither underflow nor lose precision. The
rejection sampler draws a fixed number of candidates per draw at once and never asks the host
whether it is done (a GPU step must not wait for the device; see :func:`sample_log_gamma` for
the price, below 1e-20 per draw). It computes in float64, float32 on Apple's MPS (no float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch

from cnnstress.core.augment.ops import box_mask, draw_mask
from cnnstress.core.devices import exact_float
from cnnstress.core.rules import Number, Probability

#: Candidates per Gamma draw (:func:`sample_log_gamma`).
GAMMA_CANDIDATES = 16


def sample_log_gamma(
    shape: float, n: int, generator: torch.Generator, attempts: int = GAMMA_CANDIDATES
) -> torch.Tensor:
    """``(N,)`` logs of independent ``Gamma(shape, 1)`` draws from ``generator``, float64
    (float32 on MPS: :func:`cnnstress.core.devices.exact_float`).

    Marsaglia & Tsang's squeeze-free rejection sampler, vectorised and without a host-side
    loop: ``attempts`` candidates per draw at once, the first accepted one kept, so the draws
    consumed depend only on ``n`` and a step never waits for the device. Each candidate is
    accepted with probability >= 0.95 (the shape is >= 1 after the boost), so a draw has no
    accepted candidate with probability below ``0.05 ** attempts`` (1.5e-21 for 16); it then
    keeps its first candidate, an unfiltered proposal close to the Gamma. That bounds the
    total-variation distance from exact Gamma draws by the same number.
    """
    if not shape > 0:
        raise ValueError(f"Gamma shape must be > 0, got {shape}")
    boosted = shape < 1
    a = shape + 1 if boosted else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    dev = generator.device
    dtype = exact_float(dev)
    x = torch.randn((n, attempts), generator=generator, device=dev, dtype=dtype)
    u = torch.rand((n, attempts), generator=generator, device=dev, dtype=dtype)
    v = (1 + c * x) ** 3
    log_v = v.clamp(min=torch.finfo(v.dtype).tiny).log()
    accept = (v > 0) & (u.log() < 0.5 * x * x + d - d * v + d * log_v)
    first = accept.int().argmax(dim=1, keepdim=True)  # 0 when none is accepted
    log_gamma = math.log(d) + log_v.gather(1, first)[:, 0]
    if boosted:
        u = 1 - torch.rand(n, generator=generator, device=dev, dtype=dtype)  # (0, 1]
        log_gamma = log_gamma + u.log() / shape
    return log_gamma


def sample_beta(a: float, b: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """``(N,)`` independent ``Beta(a, b)`` draws from ``generator``, on its device (float64;
    float32 on MPS)."""
    log_ga = sample_log_gamma(a, n, generator)
    log_gb = sample_log_gamma(b, n, generator)
    return torch.sigmoid(log_ga - log_gb)  # G_a / (G_a + G_b), stable in log space


def _mix_targets(targets: torch.Tensor, partner: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``keep * targets + (1 - keep) * targets[partner]``, with ``keep`` per row ``(N,)``."""
    keep = keep.to(targets.dtype)[:, None]
    return keep * targets + (1 - keep) * targets[partner]


@dataclass
class CutMix:
    """CutMix (Yun et al. 2019) with a box and lambda per image.

    With probability ``p``, image ``i`` gets the box of partner ``perm[i]`` pasted in:
    ``lambda ~ Beta(alpha, alpha)``; box height ``int(H * sqrt(1 - lambda))``, likewise width;
    its centre uniform over the image, the box clipped at the borders. The target becomes
    ``(1 - f) * y_i + f * y_perm[i]`` where ``f`` is the exact pasted area fraction after
    clipping (the paper's lambda adjustment). The paper's code applies CutMix to a whole batch
    with probability ``p`` and one box; here each image decides and gets its own box.
    """

    alpha: Annotated[float, Number(0.0, low_open=True)] = 1.0
    p: Annotated[float, Probability()] = 0.5

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = images.shape
        dev = images.device
        partner = torch.randperm(n, generator=generator, device=dev)
        lam = sample_beta(self.alpha, self.alpha, n, generator)
        mix = draw_mask(n, self.p, generator)
        cut = (1 - lam).clamp(min=0).sqrt()
        cut_h = torch.where(mix, (h * cut).long(), 0)
        cut_w = torch.where(mix, (w * cut).long(), 0)
        cy = torch.randint(0, h, (n,), generator=generator, device=dev)
        cx = torch.randint(0, w, (n,), generator=generator, device=dev)
        top, left = (cy - cut_h // 2).clamp(min=0), (cx - cut_w // 2).clamp(min=0)
        bottom = (cy - cut_h // 2 + cut_h).clamp(max=h)
        right = (cx - cut_w // 2 + cut_w).clamp(max=w)
        pasted = (bottom - top).clamp(min=0) * (right - left).clamp(min=0)
        box = box_mask(top, left, bottom, right, h, w)
        mixed = torch.where(box, images[partner], images)
        return mixed, _mix_targets(targets, partner, 1 - pasted.to(targets.dtype) / (h * w))


@dataclass
class MixUp:
    """MixUp (Zhang et al. 2018) with lambda per image.

    With probability ``p``, image ``i`` becomes ``lambda * x_i + (1 - lambda) * x_perm[i]``
    with ``lambda ~ Beta(alpha, alpha)`` drawn per image, and its target the same blend of
    ``y_i`` and ``y_perm[i]``; otherwise ``lambda = 1`` (unchanged).
    """

    alpha: Annotated[float, Number(0.0, low_open=True)] = 1.0
    p: Annotated[float, Probability()] = 1.0

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = images.shape[0]
        partner = torch.randperm(n, generator=generator, device=images.device)
        lam = sample_beta(self.alpha, self.alpha, n, generator)
        lam = torch.where(draw_mask(n, self.p, generator), lam, 1.0)
        weight = lam.to(images.dtype)[:, None, None, None]
        mixed = weight * images + (1 - weight) * images[partner]
        return mixed, _mix_targets(targets, partner, lam)
