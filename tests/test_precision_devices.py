"""Precision, memory format and cuDNN autotuning by the card's real abilities (issue 24), with the
device queries patched: T4, V100, P100, A100, H100, MPS, CPUs with and without bf16; the GPU
the run uses, asked without initialising CUDA."""

from __future__ import annotations

import ctypes
import json
import subprocess

import pytest
import torch

import cnnstress.train.precision as precision
from cnnstress.train.precision import GPU, DeviceInfo, choose, cuda_indices, resolve_auto

T4, V100, P100 = GPU("Tesla T4", (7, 5)), GPU("Tesla V100", (7, 0)), GPU("Tesla P100", (6, 0))
A100, H100 = GPU("NVIDIA A100", (8, 0)), GPU("NVIDIA H100", (9, 0))


def _no_cuda_init(*args, **kwargs):
    raise AssertionError("this would initialise CUDA in the launching process")


@pytest.fixture
def gpus(monkeypatch):
    """Pretend CUDA GPUs (NVML's view, in PCI bus order); any call that initialises CUDA fails."""
    machine: list[GPU] = []
    for name, available in (("XLA", False), ("MPS", False), ("CUDA", True)):
        accelerator = getattr(precision, f"{name}Accelerator")
        monkeypatch.setattr(accelerator, "is_available", staticmethod(lambda a=available: a))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(machine))
    monkeypatch.setattr(precision, "_nvml_gpus", lambda: list(machine))
    for name in ("_lazy_init", "init", "get_device_capability", "get_device_properties",
                 "current_device", "is_bf16_supported", "get_device_name"):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, _no_cuda_init)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    return machine


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        (T4, ("16-mixed", True)),  # Turing: fp16 tensor cores, bf16 only emulated
        (V100, ("16-mixed", True)),  # Volta
        (P100, ("32-true", False)),  # Pascal: no tensor cores; NHWC would be slower in fp32
        (A100, ("bf16-mixed", True)),  # Ampere: native bf16
        (H100, ("bf16-mixed", True)),  # Hopper
    ],
)
def test_auto_follows_the_compute_capability_on_cuda(make_config, gpus, card, expected):
    gpus.append(card)
    cfg = make_config("trainer=gpu")
    assert cfg.trainer.precision == "auto" and cfg.trainer.benchmark == "auto"
    assert resolve_auto(cfg) == expected
    assert cfg.trainer.benchmark is True  # cuDNN autotuning on CUDA
    assert cfg.dataset.on_device is True  # the splits live on the GPU
    assert resolve_auto(cfg) == expected  # idempotent


def test_a_t4_never_gets_emulated_bf16_even_if_torch_says_it_is_supported(
    make_config, gpus, monkeypatch
):
    gpus.append(T4)
    # what torch.cuda.is_bf16_supported() answers on a T4 (it counts emulation)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_auto(make_config("trainer.accelerator=cuda")) == ("16-mixed", True)


@pytest.mark.parametrize(
    ("devices", "order", "expected"),
    [
        ("[1]", "PCI_BUS_ID", "16-mixed"),  # the run's GPU is the T4, not GPU 0
        ("[0]", "PCI_BUS_ID", "bf16-mixed"),
        ("2", "PCI_BUS_ID", "16-mixed"),  # DDP on both: what every GPU can do
        ("[0]", None, "16-mixed"),  # CUDA's order may differ from NVML's: the safe choice
    ],
)
def test_the_gpus_the_run_uses_decide(make_config, gpus, monkeypatch, devices, order, expected):
    gpus.extend([A100, T4])
    if order:
        monkeypatch.setenv("CUDA_DEVICE_ORDER", order)
    cfg = make_config("trainer.accelerator=gpu", f"trainer.devices={devices}")
    assert resolve_auto(cfg)[0] == expected


def test_cuda_visible_devices_maps_the_run_to_its_physical_gpu(make_config, gpus, monkeypatch):
    gpus.extend([A100, T4])  # NVML sees both; this process may use physical GPU 1 only
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_auto(make_config("trainer.accelerator=gpu"))[0] == "16-mixed"


def test_deterministic_runs_and_explicit_values_keep_their_settings(make_config, gpus):
    gpus.append(T4)
    cfg = make_config("trainer.accelerator=gpu", "trainer.deterministic=true")
    resolve_auto(cfg)
    assert cfg.trainer.benchmark is False  # autotuning picks algorithms by timing
    forced = make_config(
        "trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "trainer.benchmark=false",
        "dataset.on_device=false", "module.channels_last=false",
    )  # fmt: skip
    assert resolve_auto(forced) == ("bf16-mixed", False)
    assert forced.trainer.benchmark is False and forced.dataset.on_device is False


def test_mps_trains_in_fp32_without_channels_last_or_device_data(make_config, monkeypatch):
    for name, available in (("XLA", False), ("MPS", True), ("CUDA", False)):
        accelerator = getattr(precision, f"{name}Accelerator")
        monkeypatch.setattr(accelerator, "is_available", staticmethod(lambda a=available: a))
    cfg = make_config("trainer=default")
    assert resolve_auto(cfg) == ("32-true", False)
    assert cfg.trainer.benchmark is False and cfg.dataset.on_device is False


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_cpu_with_and_without_native_bf16(make_config, monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cfg = make_config()  # trainer=cpu
    assert resolve_auto(cfg) == (expected, native)
    assert cfg.trainer.benchmark is False and cfg.dataset.on_device is False


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (DeviceInfo("cuda", (T4,)), ("16-mixed", True, True)),
        (DeviceInfo("cuda", (A100, T4)), ("16-mixed", True, True)),
        (DeviceInfo("cuda", (H100,)), ("bf16-mixed", True, True)),
        (DeviceInfo("cuda", (P100,)), ("32-true", False, True)),
        (DeviceInfo("cuda"), ("32-true", False, True)),  # no GPU found: Lightning says so later
        (DeviceInfo("mps"), ("32-true", False, False)),
        (DeviceInfo("tpu"), ("32-true", False, False)),
        (DeviceInfo("cpu", native_bf16=True), ("bf16-mixed", True, False)),
        (DeviceInfo("cpu"), ("32-true", False, False)),
    ],
)
def test_choose_is_a_pure_function_of_the_request_and_the_device(device, expected):
    choice = choose("auto", None, "auto", False, device)
    assert (choice.precision, choice.channels_last, choice.benchmark) == expected
    # channels_last follows a forced precision too: only reduced precisions get NHWC
    assert choose("32-true", None, "auto", False, device).channels_last is False
    assert choose("16-mixed", None, False, False, device).channels_last is True


@pytest.mark.parametrize(
    ("devices", "expected"),
    [("auto", [0, 1, 2]), (-1, [0, 1, 2]), (2, [0, 1]), ("2", [0, 1]), ([2], [2]),
     ("0,2", [0, 2]), (1, [0])],
)  # fmt: skip
def test_cuda_indices_follow_lightnings_devices_argument(devices, expected):
    assert cuda_indices(devices, 3) == expected


class FakeNVML:
    """``libnvidia-ml`` as ctypes sees it: two GPUs."""

    cards = [("Tesla T4", 7, 5), ("NVIDIA A100-SXM4-40GB", 8, 0)]

    def __init__(self) -> None:
        self.shutdown = False

    def nvmlInit_v2(self):
        return 0

    def nvmlShutdown(self):
        self.shutdown = True
        return 0

    def nvmlDeviceGetCount_v2(self, count):
        count._obj.value = len(self.cards)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):
        handle._obj.value = index + 1
        return 0

    def nvmlDeviceGetCudaComputeCapability(self, handle, major, minor):
        _, major._obj.value, minor._obj.value = self.cards[handle.value - 1]
        return 0

    def nvmlDeviceGetName(self, handle, buffer, length):
        buffer.value = self.cards[handle.value - 1][0].encode()
        return 0


def test_nvml_is_asked_through_ctypes_and_shut_down(monkeypatch):
    nvml = FakeNVML()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: nvml)
    gpus = precision._nvml_gpus()
    assert gpus == [GPU("Tesla T4", (7, 5)), GPU("NVIDIA A100-SXM4-40GB", (8, 0))]
    assert nvml.shutdown

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert precision._nvml_gpus() is None


def test_without_nvml_a_child_process_asks_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(precision, "_nvml_gpus", lambda: None)
    calls = []

    def child(command, **kwargs):
        calls.append(command)
        out = json.dumps([["Tesla V100-SXM2-16GB", [7, 0]]])
        return subprocess.CompletedProcess(command, 0, stdout=f"{out}\n", stderr="")

    monkeypatch.setattr(subprocess, "run", child)
    assert precision.visible_gpus() == ([GPU("Tesla V100-SXM2-16GB", (7, 0))], True)
    assert "get_device_capability" in calls[0][-1]  # asked in the child, not here
