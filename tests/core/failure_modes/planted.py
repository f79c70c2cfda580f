"""A planted test split for the failure-mode tests: a slice whose right answer is known."""

from __future__ import annotations

import numpy as np
import torch

SHIP, AIRPLANE = 8, 0


def orange_surround(images: torch.Tensor) -> torch.Tensor:
    """The planted feature: the surround (outside the centred 16x16 square) half orange."""
    out = images.float()
    surround = torch.ones(32, 32, dtype=torch.bool)
    surround[8:24, 8:24] = False
    orange = torch.tensor([255.0, 140.0, 0.0]).view(1, 3, 1, 1)
    return torch.where(surround, 0.5 * out + 0.5 * orange, out).round().to(torch.uint8)


def planted_split(seed: int = 0, per_class: int = 50, planted: int = 30, natural: int = 15):
    """A 10-class test split with a planted slice: ``planted`` ships with an orange surround,
    predicted airplane, whose embeddings sit around one centre, and ``natural`` other ship ->
    airplane errors around another; plus scattered errors elsewhere. Returns the arrays, the
    images and the planted test indices."""
    rng = np.random.default_rng(seed)
    n = 10 * per_class
    target = np.repeat(np.arange(10), per_class)
    index = np.arange(n) * 3 + 7  # official-looking indices, not positions
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    pred = target.copy()
    ships = np.flatnonzero(target == SHIP)
    slice_rows, natural_rows = ships[:planted], ships[planted : planted + natural]
    pred[slice_rows] = AIRPLANE
    pred[natural_rows] = AIRPLANE
    images[torch.from_numpy(slice_rows)] = orange_surround(images[torch.from_numpy(slice_rows)])
    others = rng.choice(np.flatnonzero(target != SHIP), 40, replace=False)
    pred[others] = (target[others] + 1 + rng.integers(0, 9, others.size)) % 10
    probs = np.full((n, 10), 0.02, np.float32)
    probs[np.arange(n), pred] = 0.82
    dim = 64
    embeddings = rng.normal(0, 1.0, (n, dim))
    embeddings[:, :10] += 8 * np.eye(10)[pred]  # the head reads the predicted class
    embeddings[slice_rows, 10] += 6.0  # the planted slice: a direction of its own
    embeddings[natural_rows, 11] += 6.0
    return index, target, probs, images, embeddings.astype(np.float32), set(index[slice_rows])


def best_match(modes, planted: set[int]) -> tuple[float, float]:
    """Precision and recall of the mode with the best F1 against the planted images."""
    best = (0.0, 0.0, 0.0)
    for mode in modes:
        hit = len(planted & set(mode.members))
        p, r = hit / mode.size, hit / len(planted)
        f = 2 * p * r / (p + r) if hit else 0.0
        best = max(best, (f, p, r))
    return best[1], best[2]
