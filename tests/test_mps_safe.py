"""Apple Silicon and stress devices (issue 24): no float64 on a device without it (MPS, patched
onto the CPU here), the stresses run on the CPU or CUDA and say where, and the JPEG corruption
codes on the CPU whatever device the stress batch is on."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

import cnnstress.core.devices as devices
from cnnstress.app.train import run_training
from cnnstress.core.augment import CutMix, MixUp, sample_beta
from cnnstress.core.models.airbench import whitening_filters
from cnnstress.stress import corruptions, read_stress, run_stress
from cnnstress.stress.context import resolve_device
from cnnstress.train.sync_audit import SyncAudit


class Float64Created(TorchFunctionMode):
    """Records every torch call that returns a float64 tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves, _ = tree_flatten(out)
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in leaves):
            self.calls.append(getattr(func, "__name__", str(func)))
        return out


class Float64OnDevice(SyncAudit):
    """Where tensors would live (train.sync_audit), recording float64 ones on the device."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.float64: list[torch.Size] = []

    def mark(self, tensors) -> None:
        tensors = list(tensors)
        self.float64 += [t.shape for t in tensors if t.dtype == torch.float64]
        super().mark(tensors)


@pytest.fixture
def pretend_mps(monkeypatch):
    """The CPU plays a device without float64 (what MPS is)."""
    monkeypatch.setattr(devices, "supports_float64", lambda device: False)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixing_and_elastic() -> None:
    images, targets = (
        torch.rand(16, 3, 32, 32, generator=gen(1)),
        torch.eye(10)[torch.arange(16) % 10],
    )
    sample_beta(0.2, 0.2, 64, gen())  # boosted Gamma draws (shape < 1)
    CutMix(alpha=1.0, p=1.0)(images, targets, gen())
    MixUp(alpha=0.4)(images, targets, gen())
    corruptions.elastic_transform(images, 3, gen())


def test_no_float64_is_created_for_a_device_without_it(pretend_mps):
    with Float64Created() as watch:
        mixing_and_elastic()
    assert watch.calls == []
    draws = sample_beta(2.0, 5.0, 20000, gen(3))
    assert draws.dtype == torch.float32 and draws.mean().item() == pytest.approx(2 / 7, abs=0.01)


def test_the_watch_sees_float64_where_the_device_has_it():
    with Float64Created() as watch:  # the same code on the CPU computes in float64
        mixing_and_elastic()
    assert {"randn", "rand"} <= set(watch.calls)


def test_whitening_is_computed_in_float64_on_the_host_for_a_device_without_it(monkeypatch):
    images = torch.randn(40, 3, 32, 32, generator=gen(2))
    reference = whitening_filters(images)  # a CPU run: float64 on the device itself
    monkeypatch.setattr(devices, "supports_float64", lambda device: False)
    with Float64OnDevice() as audit:
        audit.mark([images])
        filters = whitening_filters(images)
    assert audit.float64 == []  # float64 only on host copies
    assert filters.dtype == torch.float32
    assert torch.equal(filters, reference)  # the same filters as a CPU run


def test_stresses_run_on_the_cpu_or_cuda_and_record_where(make_config, tiny_cifar10_zip, tmp_path):
    assert resolve_device("mps") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    cfg = make_config(f"dataset.root={tiny_cifar10_zip}", "stress=[calibration]")
    run_training(cfg)
    run = tmp_path / "run"
    assert read_stress(run)["calibration/device"] == "cpu"
    # a run trained on a Mac: its stresses ask for "mps" and get the CPU
    result = run_stress(run, ["calibration"], device="mps")
    assert result["calibration/device"] == "cpu" and result["calibration/ece_after"] >= 0


class PretendCuda(torch.Tensor):
    """A CPU tensor that says it is on ``cuda:0``, as a stress batch on a GPU is: moving it to
    the CPU gives a plain tensor, moving it to CUDA keeps it as it is."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == torch.Tensor.device.__get__:
            return torch.device("cuda", 0)
        with torch._C.DisableTorchFunctionSubclass():
            if func is torch.Tensor.to:
                other = args[1] if len(args) > 1 else kwargs.get("other")
                if isinstance(other, cls):  # .to(x): x's dtype, and x's (pretend) device
                    return args[0].to(other.dtype).as_subclass(cls)
                device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
                moved = args[0].to(dtype) if dtype is not None else args[0]
                if device is not None and device.type == "cpu":
                    return moved.as_subclass(torch.Tensor)
                return moved.as_subclass(cls)
            if func is torch.Tensor.cpu:
                return args[0].as_subclass(torch.Tensor)
            out = func(*args, **kwargs)
        plain = torch.Tensor
        return tree_map(lambda t: t.as_subclass(cls) if type(t) is plain else t, out)


def test_jpeg_is_coded_on_the_cpu_whatever_the_stress_device(monkeypatch):
    images = torch.rand(6, 3, 32, 32, generator=gen(4))
    expected = corruptions.jpeg_compression(images, 3, gen())
    coded: list[tuple[type, str]] = []
    encode, decode = corruptions.encode_jpeg, corruptions.decode_jpeg

    def spy_encode(batch, **kwargs):
        coded.extend((type(image), image.device.type) for image in batch)
        return encode(batch, **kwargs)

    def spy_decode(data, **kwargs):
        coded.append((type(data[0]), str(kwargs.get("device", "cpu"))))
        return decode(data, **kwargs)

    monkeypatch.setattr(corruptions, "encode_jpeg", spy_encode)
    monkeypatch.setattr(corruptions, "decode_jpeg", spy_decode)
    on_gpu = corruptions.jpeg_compression(images.as_subclass(PretendCuda), 3, gen())
    assert coded and all(kind is torch.Tensor and where == "cpu" for kind, where in coded)
    assert isinstance(on_gpu, PretendCuda) and on_gpu.device.type == "cuda"  # back on the device
    assert torch.equal(on_gpu.as_subclass(torch.Tensor), expected)  # the same JPEG images
