"""Measured image attributes that describe a failure mode in words.

Every attribute is one number per image, computed from the uint8 pixels on the centre/surround
split of :mod:`cnnstress.core.regions` (the centre stands in for the object, the surround for the
background). Values are in [0, 1] pixel units (or a share), so they read the same for every
dataset:

* ``brightness_{centre,surround}``: mean luma (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B);
* ``saturation_{centre,surround}``: mean HSV saturation ``(max - min) / max`` per pixel
  (0 for a black pixel);
* ``{red,green,blue}_{centre,surround}``: how much one channel exceeds the mean of the other two
  (e.g. ``blue = B - (R + G) / 2``), averaged over the region: the region's colour cast;
* ``contrast``: RMS contrast, the standard deviation of luma over the whole image;
* ``high_frequency``: the share of the luma's spectral power (mean removed) at radial
  frequencies above a quarter cycle per pixel (half the Nyquist frequency): fine texture and
  edges rather than smooth regions.

Words (:data:`WORDS`) turn an attribute that stands out into a phrase ("bright surround",
"low-saturation centre", "bluer surround", "fine texture").
"""

from __future__ import annotations

import numpy as np
import torch

from cnnstress.core.regions import centre_mask

REGIONS = ("centre", "surround")
CHANNELS = ("red", "green", "blue")
LUMA = (0.299, 0.587, 0.114)
HIGH_FREQUENCY_CUTOFF = 0.25  # cycles per pixel; Nyquist is 0.5

ATTRIBUTES: tuple[str, ...] = (
    *(f"brightness_{r}" for r in REGIONS),
    *(f"saturation_{r}" for r in REGIONS),
    *(f"{c}_{r}" for r in REGIONS for c in CHANNELS),
    "contrast",
    "high_frequency",
)

COMPARATIVE = {"red": "redder", "green": "greener", "blue": "bluer"}
# Per attribute: (word when higher than the rest of the class, word when lower, region or None).
WORDS: dict[str, tuple[str, str, str | None]] = {
    **{f"brightness_{r}": ("bright", "dark", r) for r in REGIONS},
    **{f"saturation_{r}": ("saturated", "low-saturation", r) for r in REGIONS},
    **{f"{c}_{r}": (COMPARATIVE[c], f"less {c}", r) for r in REGIONS for c in CHANNELS},
    "contrast": ("high contrast", "low contrast", None),
    "high_frequency": ("fine texture", "little fine texture", None),
}

DEFINITIONS: dict[str, str] = {
    "brightness": "mean luma (0.299 R + 0.587 G + 0.114 B) in [0, 1] over the region",
    "saturation": "mean HSV saturation (max - min) / max over the region",
    "red/green/blue": "mean excess of the channel over the mean of the other two, in [0, 1] units",
    "contrast": "standard deviation of luma over the image",
    "high_frequency": (
        f"share of the luma's spectral power (mean removed) above {HIGH_FREQUENCY_CUTOFF} "
        "cycles/pixel"
    ),
    "centre": "the centred square of centre_size pixels (an object proxy); surround: the rest",
}


def _region_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``(N, H, W)`` ``values`` under 0/1 ``weights`` ``(H, W)`` -> ``(N,)``."""
    return (values * weights).sum((1, 2)) / weights.sum()


def image_attributes(
    images: torch.Tensor, centre_size: int = 16, batch_size: int = 2000
) -> dict[str, np.ndarray]:
    """Every attribute of :data:`ATTRIBUTES` for uint8 images ``(N, 3, H, W)``: ``{name: (N,)}``
    float64 arrays. Vectorised over images (batches of ``batch_size``); about 0.1 s per 10,000
    CIFAR images on 2 CPU cores."""
    n, _, height, width = images.shape
    mask = centre_mask(height, width, centre_size, key="failure_modes.centre_size")
    weights = {"centre": mask.double(), "surround": (~mask).double()}
    fy = torch.fft.fftfreq(height, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(width, dtype=torch.float64).view(1, -1)
    high = (fy**2 + fx**2).sqrt() > HIGH_FREQUENCY_CUTOFF
    # rfft2 stores the non-negative x-frequencies once; the others (all but 0 and Nyquist)
    # stand for their conjugate twin as well: weight them twice in the power sums.
    twice = torch.full((1, fx.shape[1]), 2.0, dtype=torch.float64)
    twice[0, 0] = 1.0
    if width % 2 == 0:
        twice[0, -1] = 1.0
    out: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTES}
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size].to(torch.float64) / 255
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        luma = LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
        top, bottom = x.amax(1), x.amin(1)
        saturation = torch.where(top > 0, (top - bottom) / top.clamp_min(1e-12), 0.0)
        casts = {"red": r - (g + b) / 2, "green": g - (r + b) / 2, "blue": b - (r + g) / 2}
        for region in REGIONS:
            w = weights[region]
            out[f"brightness_{region}"].append(_region_mean(luma, w))
            out[f"saturation_{region}"].append(_region_mean(saturation, w))
            for channel, cast in casts.items():
                out[f"{channel}_{region}"].append(_region_mean(cast, w))
        out["contrast"].append(luma.flatten(1).std(1))
        centred = luma - luma.mean((1, 2), keepdim=True)
        power = torch.fft.rfft2(centred).abs().square() * twice
        total = power.sum((1, 2))
        share = (power * high).sum((1, 2)) / total.clamp_min(1e-300)
        out["high_frequency"].append(torch.where(total > 0, share, 0.0))
    return {
        name: (torch.cat(parts).numpy() if parts else np.zeros(0)) for name, parts in out.items()
    }
