"""White-box L-inf robustness: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

Perturbations live in pixel space [0, 1]; the dataset normalisation runs inside the model's
forward (:class:`~cnnstress.stress.context.NormalizedModel`), so ``eps = 8/255`` means 8 grey
levels whatever the normalisation. The model is in eval mode (BatchNorm running statistics,
no dropout). FGSM and PGD are a few lines of torch (torchattacks pins an old ``requests``).

Keys written (``<k>`` = eps in units of 1/255, formatted with ``%g``, e.g. ``eps8``):
``adversarial/fgsm/eps<k>/acc``, ``adversarial/pgd/eps<k>/acc``, ``adversarial/clean_acc``
(same images), ``adversarial/num_images``, ``adversarial/pgd/steps``.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnstress.core.rules import Flag, Integer, ListOf, OneOf, Rule, check
from cnnstress.stress.context import (
    StressContext,
    accuracy,
    seeded_subset,
    to_unit,
)

ATTACKS = ("fgsm", "pgd")


def parse_eps(value: Any, key: str = "eps") -> float:
    """An L-inf radius in pixel units (:class:`Radius`), or one :class:`ConfigError` line."""
    return check(Radius(), value, key)


def eps_key(eps: float) -> str:
    """``eps<k>`` with ``k = eps * 255`` (``8/255`` -> ``eps8``, ``0.01`` -> ``eps2.55``)."""
    return f"eps{round(eps * 255, 4):g}"


class Radius(Rule):
    """An L-inf radius in pixel units: a number in [0, 1] or a fraction such as ``"8/255"``."""

    def __init__(self, optional: bool = False) -> None:
        self.optional = optional

    def convert(self, value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError
        eps = float(Fraction(value)) if isinstance(value, str) else float(value)
        if not 0 <= eps <= 1:
            raise ValueError
        return eps

    def describe(self) -> str:
        return self._or_null("a number in [0, 1] or a fraction like '8/255'")


@dataclasses.dataclass
class AdversarialSettings:
    """Knobs of ``stress.adversarial`` (conf/stress/adversarial.yaml)."""

    attacks: Annotated[list[str], ListOf(OneOf(ATTACKS), 1)] = dataclasses.field(
        default_factory=lambda: list(ATTACKS)
    )
    # L-inf radii in pixel units: numbers or fractions such as "8/255"
    eps: Annotated[list[Any], ListOf(Radius(), 1)] = dataclasses.field(
        default_factory=lambda: ["1/255", "2/255", "8/255"]
    )
    pgd_steps: Annotated[int, Integer(1)] = 10
    # null: 2.5 * eps / pgd_steps (Madry et al.); else a number or fraction in pixel units
    pgd_step_size: Annotated[Any, Radius(optional=True)] = None
    random_start: Annotated[bool, Flag()] = True
    # a fixed random subset of the test split; null: all of it
    max_images: Annotated[int | None, Integer(1, optional=True)] = 1000
    batch_size: Annotated[int, Integer(1)] = 250
    # random start draws (fixed across runs)
    seed: Annotated[int, Integer(0)] = 0


def _input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    images = images.detach().requires_grad_(True)
    loss = F.cross_entropy(model(images), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, images)
    return grad


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """``clamp(x + eps * sign(grad_x CE(model(x), y)), 0, 1)``.

    Args:
        model: maps pixels in [0, 1] ``(N, 3, H, W)`` to logits; used as it is (put it in eval
            mode first).
        images: float ``(N, 3, H, W)`` in [0, 1]; labels: int64 ``(N,)``.

    Returns:
        The adversarial images, detached, same shape.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = images.clone()
        grad = _input_gradient(model, x, labels.clone())
        return (x + eps * grad.sign()).clamp(0, 1).detach()


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy in the L-inf ball of radius ``eps``.

    Starts at a uniform point of the ball when ``random_start`` (drawn from ``generator``),
    takes ``steps`` signed-gradient steps of ``step_size`` (default ``2.5 * eps / steps``),
    projecting onto the ball and [0, 1] after each. Returns the last iterate, detached.
    Shapes as :func:`fgsm`.
    """
    alpha = 2.5 * eps / steps if step_size is None else step_size
    with torch.inference_mode(False), torch.enable_grad():
        x0, labels = images.clone(), labels.clone()
        low, high = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
        x = x0
        if random_start and eps > 0:
            noise = torch.rand(x0.shape, generator=generator, device=x0.device)
            x = torch.minimum(torch.maximum(x0 + (2 * noise - 1) * eps, low), high)
        for _ in range(steps):
            grad = _input_gradient(model, x, labels)
            x = torch.minimum(torch.maximum(x + alpha * grad.sign(), low), high).detach()
        return x


def evaluate(ctx: StressContext, settings: AdversarialSettings | None = None) -> dict[str, Any]:
    """Robust accuracy under FGSM and PGD at every radius, on a fixed subset of the test split."""
    s = settings or AdversarialSettings()
    subset = seeded_subset(len(ctx.test), s.max_images, s.seed)
    images, labels = ctx.test.images[subset], ctx.test.labels[subset]
    model = ctx.model.eval()
    generator = torch.Generator(device=ctx.device).manual_seed(s.seed)
    radii = [parse_eps(eps) for eps in s.eps]  # "8/255" -> 0.0314
    step_size = None if s.pgd_step_size is None else parse_eps(s.pgd_step_size)
    correct = {(attack, eps): 0 for attack in s.attacks for eps in radii}
    for start in range(0, len(labels), s.batch_size):
        x = to_unit(images[start : start + s.batch_size].to(ctx.device))
        y = labels[start : start + s.batch_size].to(ctx.device)
        for attack, eps in correct:
            if attack == "fgsm":
                adv = fgsm(model, x, y, eps)
            else:
                adv = pgd(model, x, y, eps, s.pgd_steps, step_size, s.random_start, generator)
            with torch.no_grad():
                correct[attack, eps] += (model(adv).argmax(1) == y).sum().item()
    out: dict[str, Any] = {
        "adversarial/clean_acc": accuracy(ctx.clean_logits()[subset], labels),
        "adversarial/num_images": len(subset),
    }
    if "pgd" in s.attacks:
        out["adversarial/pgd/steps"] = s.pgd_steps
    for (attack, eps), n in correct.items():
        out[f"adversarial/{attack}/{eps_key(eps)}/acc"] = n / max(len(labels), 1)
    return out
