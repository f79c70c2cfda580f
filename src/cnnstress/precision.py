"""Pick the numeric precision and memory format a run trains and evaluates in.

``trainer.precision: auto`` and ``module.channels_last: auto`` (the defaults) are resolved here,
once, before anything is built (:func:`resolve_auto`), into the concrete values the run then uses
and records in its config:

- CPU: ``bf16-mixed`` when the CPU has native bf16 instructions (:func:`cpu_has_native_bf16`),
  else ``32-true``;
- CUDA: ``bf16-mixed`` when ``torch.cuda.is_bf16_supported()``, else ``32-true``;
- any other accelerator (MPS, TPU): ``32-true``;
- ``channels_last``: true when the precision is a bf16 one or the accelerator is a CUDA GPU.

bf16 applies to the Trainer's loops only (training, validation and test steps run under
``torch.autocast``). Grad-CAM (:func:`cnnstress.cam.compute_heatmaps`, also used by the
callback) switches autocast off and runs in float32, and the stresses
(:mod:`cnnstress.stress`, including the adversarial attacks) run outside the Trainer in
float32.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnstress.rules import Either, Flag, OneOf, check

log = logging.getLogger(__name__)

AUTO = "auto"
#: The values Lightning's ``Trainer(precision=...)`` accepts, plus ``auto``.
PRECISIONS: tuple[str, ...] = (
    AUTO,
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    # Lightning's short aliases
    "32",
    "16",
    "bf16",
    "64",
)
# x86 capabilities (as ``torch.cpu.get_capabilities()`` names them) with bf16 arithmetic in
# hardware, which oneDNN uses for bf16 convolutions and matrix products. Without them bf16 is
# emulated and slower than float32. ARM's bf16 is left out: not measured here.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX-BF16)."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        caps = get_capabilities()
        return any(bool(caps.get(flag, False)) for flag in NATIVE_BF16_FLAGS)
    # torch < 2.8 has no public capability map, only these probes
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_accelerator(accelerator: Any) -> str:
    """The device type Lightning runs on for ``trainer.accelerator``: ``"cpu"``, ``"cuda"``,
    ``"mps"``, ``"tpu"``, or the given name for anything else.

    ``auto`` and ``gpu`` follow Lightning's own order (TPU, then MPS, then CUDA, then CPU).
    """
    name = str(accelerator).lower()
    if name == "auto":
        if XLAAccelerator.is_available():
            return "tpu"
        if MPSAccelerator.is_available():
            return "mps"
        return "cuda" if CUDAAccelerator.is_available() else "cpu"
    if name == "gpu":
        return "mps" if MPSAccelerator.is_available() else "cuda"
    return name


PRECISION_RULE = OneOf(PRECISIONS)
CHANNELS_LAST_RULE = Either((Flag(), OneOf((AUTO,))))


def _precision_name(value: Any) -> str:
    # YAML reads ``trainer.precision=32`` as an integer; Lightning's names are strings.
    plain_int = isinstance(value, int) and not isinstance(value, bool)
    return check(PRECISION_RULE, str(value) if plain_int else value, "trainer.precision")


def _channels_last_flag(value: Any) -> bool | None:
    """``True``/``False``, or ``None`` for ``auto``."""
    flag = check(CHANNELS_LAST_RULE, value, "channels_last")
    return None if flag == AUTO else flag


def resolve_auto(cfg: DictConfig) -> tuple[str, bool]:
    """Replace ``auto`` in ``cfg.trainer.precision`` and ``cfg.module.channels_last`` by
    concrete values, in place, and log what was chosen and why. Values the user set are kept
    (validated); calling it again is a no-op.

    Returns:
        ``(precision, channels_last)`` as now in ``cfg``.

    Raises:
        ConfigError: an unknown precision or ``channels_last`` value.
    """
    requested_precision = OmegaConf.select(cfg, "trainer.precision", default="32-true")
    precision = _precision_name(requested_precision)
    requested_layout = OmegaConf.select(cfg, "module.channels_last", default=False)
    channels_last = _channels_last_flag(requested_layout)
    device = resolve_accelerator(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    reason = f"accelerator {device}"
    if precision == AUTO:
        if device == "cpu":
            native = cpu_has_native_bf16()
            precision = "bf16-mixed" if native else "32-true"
            reason += " with" if native else " without"
            reason += " native bf16 (" + "/".join(NATIVE_BF16_FLAGS) + ")"
        elif device == "cuda":
            supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            precision = "bf16-mixed" if supported else "32-true"
            reason += " with" if supported else " without"
            reason += " bf16 support"
        else:
            precision = "32-true"
    if channels_last is None:
        channels_last = "bf16" in precision or device == "cuda"
    with open_dict(cfg):
        cfg.trainer.precision = precision
        cfg.module.channels_last = channels_last
    if AUTO in (requested_precision, requested_layout):
        log.info(
            "precision %s, channels_last %s (trainer.precision=%s, module.channels_last=%s; %s)",
            precision,
            str(channels_last).lower(),
            requested_precision,
            str(requested_layout).lower(),
            reason,
        )
    return precision, channels_last
