"""Pick the numeric precision, memory format and cuDNN autotuning a run trains and evaluates with.

``trainer.precision: auto``, ``module.channels_last: auto``, ``trainer.benchmark: auto`` (the
defaults) and ``dataset.on_device: auto`` are resolved once, before anything is built
(:func:`resolve_auto`), into concrete values the run then uses and records in its config. The
decision itself is a pure function of what was asked and what the device can do
(:func:`choose`); :func:`device_info` asks the machine.

Precision (``auto``), by the abilities of the device the run trains on:

- CPU: ``bf16-mixed`` when the CPU has native bf16 instructions (:func:`cpu_has_native_bf16`:
  AVX-512 BF16 or AMX), else ``32-true`` (emulated bf16 is slower than float32);
- CUDA, by compute capability (the lowest among the GPUs the run uses): >= 8.0 (Ampere, Ada,
  Hopper, Blackwell: A100, L4, L40S, RTX 30xx/40xx, H100) has native bf16 -> ``bf16-mixed``;
  7.x (Volta, Turing: V100, T4, RTX 20xx) has fp16 tensor cores but only emulated bf16 ->
  ``16-mixed`` (fp16 autocast with Lightning's gradient scaler); older -> ``32-true``.
  ``torch.cuda.is_bf16_supported()`` is not asked: it counts emulation and says True on a T4;
- MPS (Apple Silicon) and any other accelerator: ``32-true`` (fp16 autocast exists on MPS but
  has not been measured here);
- ``channels_last``: on with a reduced precision (bf16 or fp16: tensor cores and oneDNN's bf16
  kernels want NHWC), off in float32;
- ``benchmark`` (cuDNN autotuning): on for CUDA unless ``trainer.deterministic``, off elsewhere.

The GPU is asked without initialising CUDA in this process (a process that forks DDP workers, or
a notebook, must not have): when CUDA is not initialised yet, its compute capability comes from
NVML (``libnvidia-ml``, the library ``nvidia-smi`` uses; Lightning's device count asks it too),
else from a short-lived child process. Lightning itself checks the capability later, in the
process that trains (its TF32 hint); the precision must be known before the Trainer is built.

bf16/fp16 apply to the Trainer's loops only (training, validation and test steps run under
``torch.autocast``). Grad-CAM (:func:`cnnstress.core.cam.compute_heatmaps`, also used by the
callback) switches autocast off and runs in float32, and the stresses
(:mod:`cnnstress.stress`, including the adversarial attacks) run outside the Trainer in
float32.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnstress.core.devices import ON_DEVICE_RULE, on_device_for
from cnnstress.core.errors import ConfigError
from cnnstress.core.rules import Either, Flag, OneOf, check

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
#: Precisions that compute in bf16 or fp16 (channels_last pays there).
REDUCED_PRECISIONS = frozenset(
    {"bf16-mixed", "16-mixed", "bf16-true", "16-true", "bf16", "16", "transformer-engine",
     "transformer-engine-float16"}
)  # fmt: skip
# x86 capabilities (as ``torch.cpu.get_capabilities()`` names them) with bf16 arithmetic in
# hardware, which oneDNN uses for bf16 convolutions and matrix products. Without them bf16 is
# emulated and slower than float32. ARM's bf16 is left out: not measured here.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Lowest CUDA compute capability with native bf16 (Ampere) and with fp16 tensor cores (Volta).
BF16_CAPABILITY = (8, 0)
FP16_CAPABILITY = (7, 0)


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

    ``auto`` and ``gpu`` follow Lightning's own order (TPU, then MPS, then CUDA, then CPU). None
    of these checks initialises CUDA (Lightning counts GPUs through NVML).
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


# -- what the device can do -------------------------------------------------------------------
@dataclass(frozen=True)
class GPU:
    """One CUDA device: its name and compute capability ``(major, minor)``."""

    name: str
    capability: tuple[int, int]


@dataclass(frozen=True)
class DeviceInfo:
    """What the choice of precision depends on.

    Attributes:
        kind: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"tpu"``, ...
        gpus: CUDA: the GPUs the run uses (empty when none was found).
        native_bf16: CPU: native bf16 instructions (:func:`cpu_has_native_bf16`).
    """

    kind: str
    gpus: tuple[GPU, ...] = ()
    native_bf16: bool = False

    @property
    def capability(self) -> tuple[int, int] | None:
        """The lowest compute capability among :attr:`gpus` (the one every GPU can follow)."""
        return min((g.capability for g in self.gpus), default=None)

    def describe(self) -> str:
        """``cuda: Tesla T4 (compute capability 7.5)``, ``cpu with native bf16 (...)``, ..."""
        if self.kind == "cpu":
            has = "with" if self.native_bf16 else "without"
            return f"cpu {has} native bf16 ({'/'.join(NATIVE_BF16_FLAGS)})"
        if self.kind == "cuda":
            if not self.gpus:
                return "cuda, no GPU found"
            names = ", ".join(sorted({g.name for g in self.gpus}))
            major, minor = self.capability
            return f"cuda: {len(self.gpus)} x {names} (compute capability {major}.{minor})"
        return self.kind


def cuda_indices(devices: Any, count: int) -> list[int]:
    """The CUDA device ordinals Lightning uses for ``trainer.devices`` among ``count`` visible
    GPUs: ``auto``/``-1``: all; ``N``: the first N; a list or ``"0,2"``: those."""
    if isinstance(devices, str):
        text = devices.strip().lower()
        if text == AUTO:
            return list(range(count))
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        devices = int(text)
    if isinstance(devices, int) and not isinstance(devices, bool):
        return list(range(count)) if devices == -1 else list(range(min(devices, count)))
    if isinstance(devices, Sequence) or OmegaConf.is_list(devices):
        return [int(d) for d in devices]
    raise ConfigError(f"trainer.devices must be auto, an integer or a list, got {devices!r}")


def _nvml_gpus() -> list[GPU] | None:
    """Every GPU NVML sees, in NVML's order (PCI bus), or None without a working NVML.

    NVML answers without creating a CUDA context (written with ctypes as torch's own NVML
    device count is: the ``nvidia-ml-py`` package is not a dependency).
    """
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return None
        gpus = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            major, minor = ctypes.c_int(), ctypes.c_int()
            name = ctypes.create_string_buffer(96)
            if (
                nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0
                or nvml.nvmlDeviceGetCudaComputeCapability(
                    handle, ctypes.byref(major), ctypes.byref(minor)
                )
                != 0
            ):
                return None
            nvml.nvmlDeviceGetName(handle, name, ctypes.c_uint(len(name)))
            gpus.append(GPU(name.value.decode(errors="replace"), (major.value, minor.value)))
        return gpus
    finally:
        nvml.nvmlShutdown()


_CHILD_QUERY = (
    "import json, torch; print(json.dumps([[torch.cuda.get_device_name(i), "
    "list(torch.cuda.get_device_capability(i))] for i in range(torch.cuda.device_count())]))"
)


def _child_process_gpus() -> list[GPU]:
    """The visible GPUs in CUDA's order, asked by a child process (CUDA is initialised there,
    not here); empty when it fails."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD_QUERY], capture_output=True, text=True, timeout=300
        )
        rows = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return []
    return [GPU(str(name), (int(cap[0]), int(cap[1]))) for name, cap in rows]


def visible_gpus() -> tuple[list[GPU], bool]:
    """The GPUs this process may use, in CUDA's order, without initialising CUDA here, and
    whether that order is certain.

    With CUDA already initialised, torch answers. Otherwise NVML does, mapped through
    ``CUDA_VISIBLE_DEVICES`` as torch maps it; NVML numbers GPUs by PCI bus, CUDA fastest
    first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so for GPUs of different kinds the order is
    certain only then. Without NVML a child process asks CUDA.
    """
    if torch.cuda.is_initialized():
        gpus = [
            GPU(torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))
            for i in range(torch.cuda.device_count())
        ]
        return gpus, True
    nvml = _nvml_gpus()
    if nvml is None:
        return _child_process_gpus(), True
    try:
        count = torch.cuda.device_count()
        gpus = [nvml[torch.cuda._get_nvml_device_index(i)] for i in range(count)]
    except (RuntimeError, IndexError, AssertionError):
        return _child_process_gpus(), True
    same_kind = len({g.capability for g in gpus}) <= 1
    return gpus, same_kind or os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"


def device_info(accelerator: Any, devices: Any = 1) -> DeviceInfo:
    """What the device(s) of ``trainer.accelerator`` / ``trainer.devices`` can do."""
    kind = resolve_accelerator(accelerator)
    if kind == "cpu":
        return DeviceInfo("cpu", native_bf16=cpu_has_native_bf16())
    if kind != "cuda":
        return DeviceInfo(kind)
    gpus, ordered = visible_gpus()
    if not gpus:
        return DeviceInfo("cuda")
    used = [gpus[i] for i in cuda_indices(devices, len(gpus)) if 0 <= i < len(gpus)]
    # When the order is uncertain, the lowest capability of all visible GPUs is the safe one.
    return DeviceInfo("cuda", tuple(used if ordered and used else gpus))


# -- the choice -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """The concrete settings :func:`choose` picked, and why."""

    precision: str
    channels_last: bool
    benchmark: bool | None
    reason: str


def auto_precision(device: DeviceInfo) -> str:
    """The precision ``auto`` stands for on ``device`` (see the module notes)."""
    if device.kind == "cpu":
        return "bf16-mixed" if device.native_bf16 else "32-true"
    if device.kind == "cuda":
        capability = device.capability
        if capability is None:
            return "32-true"
        if capability >= BF16_CAPABILITY:
            return "bf16-mixed"
        return "16-mixed" if capability >= FP16_CAPABILITY else "32-true"
    return "32-true"


def choose(
    precision: str,
    channels_last: bool | None,
    benchmark: bool | str | None,
    deterministic: Any,
    device: DeviceInfo,
) -> Choice:
    """Replace ``auto`` (``None`` for ``channels_last``) by what ``device`` does best; values
    given explicitly are kept. A pure function: :func:`resolve_auto` asks the device."""
    if precision == AUTO:
        precision = auto_precision(device)
    if channels_last is None:
        channels_last = precision in REDUCED_PRECISIONS
    if benchmark == AUTO:
        benchmark = device.kind == "cuda" and not deterministic
    return Choice(precision, bool(channels_last), benchmark, device.describe())


# -- reading and writing the config -----------------------------------------------------------
PRECISION_RULE = OneOf(PRECISIONS)
CHANNELS_LAST_RULE = Either((Flag(), OneOf((AUTO,))))
BENCHMARK_RULE = Either((Flag(optional=True), OneOf((AUTO,))))


def _precision_name(value: Any) -> str:
    # YAML reads ``trainer.precision=32`` as an integer; Lightning's names are strings.
    plain_int = isinstance(value, int) and not isinstance(value, bool)
    return check(PRECISION_RULE, str(value) if plain_int else value, "trainer.precision")


def _channels_last_flag(value: Any) -> bool | None:
    """``True``/``False``, or ``None`` for ``auto``."""
    flag = check(CHANNELS_LAST_RULE, value, "channels_last")
    return None if flag == AUTO else flag


def resolve_auto(cfg: DictConfig) -> tuple[str, bool]:
    """Replace ``auto`` in ``cfg.trainer.precision``, ``cfg.module.channels_last``,
    ``cfg.trainer.benchmark`` and ``cfg.dataset.on_device`` by concrete values, in place, and
    log what was chosen and why. Values the user set are kept (validated), so calling it again
    is a no-op.

    Returns:
        ``(precision, channels_last)`` as now in ``cfg``.

    Raises:
        ConfigError: an unknown precision, ``channels_last``, ``benchmark`` or ``on_device``
            value.
    """
    requested_precision = OmegaConf.select(cfg, "trainer.precision", default="32-true")
    precision = _precision_name(requested_precision)
    requested_layout = OmegaConf.select(cfg, "module.channels_last", default=False)
    channels_last = _channels_last_flag(requested_layout)
    requested_benchmark = OmegaConf.select(cfg, "trainer.benchmark", default=None)
    benchmark = check(BENCHMARK_RULE, requested_benchmark, "trainer.benchmark")
    requested_on_device = OmegaConf.select(cfg, "dataset.on_device", default=False)
    check(ON_DEVICE_RULE, requested_on_device, "dataset.on_device")
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    requested = (requested_precision, requested_layout, requested_benchmark, requested_on_device)
    if AUTO not in requested:
        return precision, channels_last
    if precision == AUTO:  # the only choice that needs more than the device's kind
        devices = OmegaConf.select(cfg, "trainer.devices", default=1)
        device = device_info(accelerator, devices)
    else:
        device = DeviceInfo(resolve_accelerator(accelerator))
    deterministic = OmegaConf.select(cfg, "trainer.deterministic", default=False)
    choice = choose(precision, channels_last, benchmark, deterministic, device)
    on_device = on_device_for(requested_on_device, device.kind)
    # the device's abilities were only asked when the precision was auto
    reason = choice.reason if precision == AUTO else f"accelerator {device.kind}"
    with open_dict(cfg):
        cfg.trainer.precision = choice.precision
        cfg.module.channels_last = choice.channels_last
        if "trainer" in cfg and "benchmark" in cfg.trainer:
            cfg.trainer.benchmark = choice.benchmark
        if "dataset" in cfg and "on_device" in cfg.dataset:
            cfg.dataset.on_device = on_device
    log.info(
        "precision %s, channels_last %s, cuDNN benchmark %s, data on the device %s "
        "(trainer.precision=%s, module.channels_last=%s, trainer.benchmark=%s, "
        "dataset.on_device=%s; "
        "%s)",
        choice.precision,
        str(choice.channels_last).lower(),
        str(choice.benchmark).lower(),
        str(on_device).lower(),
        *(str(v).lower() for v in requested),
        reason,
    )
    return choice.precision, choice.channels_last
