"""Count host-device synchronisations in training steps, on any device, the CPU included.

On a GPU every ``.item()``, ``bool(tensor)``, data-dependent shape (``nonzero``, boolean-mask
indexing) or blocking copy of host data to the device makes the host wait for the device, which
stalls the queue of kernels a fast step depends on. PyTorch reports them on CUDA only
(``torch.cuda.set_sync_debug_mode``; see ``bench/gpu_check.sh``). :class:`SyncAudit` finds the
same operations on the CPU, where a test can run them, through a
:class:`torch.overrides.TorchFunctionMode` that sees every torch function and tensor method
called from Python.

On the CPU every tensor lives on the same device, so the audit tracks *where a tensor would
live* if the training device were a GPU: a tensor is on the device when it is a parameter,
buffer or metric state of the trained module (or of a callback's module, e.g. the averaged
weights), when it was made by ``.to(device)``, ``.cuda()`` or a factory called with
``device=<the training device>``, or when it is computed from a tensor on the device. Every
other tensor is host data (made from Python values, NumPy, or tensors created before the audit
without being marked). It then counts, as one synchronisation each:

* ``sync``: reading a device tensor on the host: ``item``, ``bool``/``int``/``float``/
  ``__index__`` of a tensor, ``tolist``, ``numpy``, ``cpu``, ``equal``, ``allclose``,
  ``is_nonzero``;
* ``shape``: ops whose output shape depends on device data (``nonzero``, ``argwhere``,
  ``masked_select``, ``unique``, ``bincount``, ``repeat_interleave`` without ``output_size``,
  one-argument ``where``, indexing or assigning with a boolean mask);
* ``h2d``: a blocking copy of host data to the device (``.to(device)``, ``.cuda()``,
  ``copy_`` into a device tensor, ``torch.tensor``/``as_tensor``/``new_tensor`` of Python data
  with ``device=<the training device>``);
* ``d2h``: a copy of device data to the host (``.to("cpu")``, ``copy_`` into a host tensor).

On a CPU run the device and the host are one, so where code names a device the audit reads its
intent: a ``torch.device`` (``x.device``, ``self.device``) names the training device, the
string ``"cpu"`` the host (as torch.optim writes it for the step counters it keeps on the host
on purpose). What it cannot see: synchronisations inside C++ (autograd's backward, the CUDA
caching allocator, cuDNN's autotuner) and a ``.to(torch.device("cpu"))`` of device data on a
CPU run (``.cpu()``, ``.to("cpu")`` and the reads above are caught). The batch copy Lightning
makes before each step (``transfer_batch_to_device``) is counted apart, as ``transfers``: on
CUDA it is non-blocking from pinned memory, and ``dataset.on_device`` removes it.

:class:`SyncAuditCallback` runs the audit over a real ``Trainer.fit`` and counts per training
step, over every step but the first of each epoch (windows from one step's end to the next
step's end: fetching, transfer, augmentation, forward, backward, optimizer step and the
callbacks' per-step hooks), so once-per-epoch work (the shuffle, validation, logging) is left
out.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

# Reading a device tensor on the host.
_READS = {
    Tensor.item, Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__,
    Tensor.__complex__, Tensor.tolist, Tensor.numpy, Tensor.__array__, Tensor.cpu,
    Tensor.equal, torch.equal, Tensor.allclose, torch.allclose, Tensor.is_nonzero,
    torch.is_nonzero,
}  # fmt: skip
# Output shape depends on the data.
_DATA_SHAPES = {
    Tensor.nonzero, torch.nonzero, Tensor.argwhere, torch.argwhere, Tensor.masked_select,
    torch.masked_select, Tensor.unique, torch.unique, Tensor.unique_consecutive,
    torch.unique_consecutive, Tensor.bincount, torch.bincount,
}  # fmt: skip
_REPEAT = {Tensor.repeat_interleave, torch.repeat_interleave}
_WHERE = {Tensor.where, torch.where}
_INDEXING = {Tensor.__getitem__, Tensor.__setitem__, Tensor.index_put_, Tensor.index_put}
# Copies and factories that may put host data on the device.
_MOVES = {Tensor.to, Tensor.cuda}
_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray, Tensor.new_tensor}
_COPIES = {Tensor.copy_}
# Where an op's output lands (see SyncAudit._classify).
DEVICE, HOST = "device", "host"


@dataclass(frozen=True)
class SyncEvent:
    """One counted synchronisation: its kind, the torch function and where it was called."""

    kind: str
    function: str
    where: str


def _tensors(values: Any) -> list[Tensor]:
    leaves, _ = tree_flatten(values)
    return [v for v in leaves if isinstance(v, Tensor)]


def _caller() -> str:
    """``file:line function`` of the innermost frame outside torch and this module."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace("\\", "/")
        if "/torch/" in path or path.endswith("sync_audit.py"):
            continue
        short = "/".join(path.split("/")[-3:])
        return f"{short}:{frame.lineno} {frame.name}"
    return "?"


class SyncAudit(TorchFunctionMode):
    """A torch function mode that counts host-device synchronisations (see the module notes).

    Args:
        device: the training device (``"cpu"`` included).

    While :attr:`counting` is true, every synchronisation is appended to :attr:`events`; while
    :attr:`transferring` is true, copies of host data to the device count as
    :attr:`transfers` instead.
    """

    def __init__(self, device: str | torch.device) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.on_device = WeakTensorKeyDictionary()
        self.counting = False
        self.transferring = False
        self.events: list[SyncEvent] = []
        self.transfers = 0

    # -- where tensors live --------------------------------------------------------------------
    def mark(self, tensors: Iterable[Tensor]) -> None:
        """Declare ``tensors`` to live on the training device."""
        for t in tensors:
            self.on_device[t] = True

    def mark_module(self, module: nn.Module) -> None:
        """Declare a module's parameters, buffers and torchmetrics states to be on the device."""
        self.mark([*module.parameters(), *module.buffers()])
        for sub in module.modules():
            for name in getattr(sub, "_defaults", {}):  # torchmetrics.Metric states
                self.mark(_tensors(getattr(sub, name, None)))

    def is_on_device(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` would live on the training device."""
        return tensor in self.on_device

    def _is_device(self, device: Any) -> bool:
        """Whether a ``device=`` argument names the training device. On a CPU run, the string
        ``"cpu"`` names the host (code that means the host writes it so, as torch.optim does for
        its step counters), a ``torch.device`` the training device (``x.device``)."""
        if device is None:
            return False
        if isinstance(device, str) and self.device.type == "cpu":
            return False
        return torch.device(device).type == self.device.type

    # -- the mode --------------------------------------------------------------------------
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        inputs = _tensors((args, kwargs))
        from_device = any(self.is_on_device(t) for t in inputs)
        kind, place = self._classify(func, args, kwargs, from_device)
        out = func(*args, **kwargs)
        if place == DEVICE or (place is None and from_device):
            # A tensor passed through unchanged (in-place ops, grouping helpers, a no-op
            # ``.to``, which on the CPU returns its input) keeps its own place: on a GPU a
            # ``.to(device)`` of host data gives a new tensor and leaves the host one there.
            # Lightning's batch transfer is the exception: what it returns is the batch on the
            # device, whatever the CPU aliasing.
            passed = {id(t) for t in inputs}
            self.mark(t for t in _tensors(out) if id(t) not in passed or self.transferring)
        if kind is not None and self.counting:
            if kind == "h2d" and self.transferring:
                self.transfers += 1
            else:
                name = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
                self.events.append(SyncEvent(kind, name, _caller()))
        return out

    def _classify(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        from_device: bool,
    ) -> tuple[str | None, str | None]:
        """``(kind of synchronisation or None, where the output lands)``: :data:`DEVICE`,
        :data:`HOST`, or None for where its inputs are (the device if any input is there)."""
        if func in _READS:
            return ("sync" if from_device else None), HOST
        if func in _DATA_SHAPES:
            return ("shape" if from_device else None), None
        if func in _REPEAT:
            needs = from_device and kwargs.get("output_size") is None
            return ("shape" if needs else None), None
        if func in _WHERE:
            single = len(args) + len(kwargs) == 1
            return ("shape" if single and from_device else None), None
        if func in _INDEXING:
            index = args[1] if len(args) > 1 else kwargs.get("indices")
            masks = [t for t in _tensors(index) if t.dtype == torch.bool]
            return ("shape" if any(self.is_on_device(t) for t in masks) else None), None
        if func in _MOVES:
            return self._classify_move(func, args, kwargs)
        if func in _FROM_DATA:
            device = kwargs.get("device")
            if func is Tensor.new_tensor and device is None and args:
                device = self.device if self.is_on_device(args[0]) else None
            if device is None:
                return None, None
            if not self._is_device(device):
                return None, HOST
            data = args[1] if func is Tensor.new_tensor else (args[0] if args else None)
            host = not (isinstance(data, Tensor) and self.is_on_device(data))
            return ("h2d" if host else None), DEVICE
        if func in _COPIES:
            dst, src = args[0], args[1]
            dst_dev, src_dev = self.is_on_device(dst), self.is_on_device(src)
            if dst_dev and not src_dev:
                return ("h2d" if not kwargs.get("non_blocking", False) else None), None
            if src_dev and not dst_dev:
                return "d2h", None
            return None, None
        # any other factory (zeros, rand, arange, ...): where its device= says, if anywhere
        device = kwargs.get("device")
        if device is None:
            return None, None
        return None, (DEVICE if self._is_device(device) else HOST)

    def _classify_move(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str | None, str | None]:
        tensor = args[0]
        if func is Tensor.cuda:
            device, non_blocking = torch.device("cuda"), kwargs.get("non_blocking", False)
        else:
            try:
                device, _, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
            except (TypeError, RuntimeError):
                return None, False
            # keep a device given as a string: "cpu" names the host (see _is_device)
            given = kwargs.get("device", args[1] if len(args) > 1 else None)
            if isinstance(given, str):
                device = given
        if device is None:
            return None, None  # a dtype or memory format change: stays where it is
        if not self._is_device(device):  # to the host: a copy when the data is on the device
            return ("d2h" if self.is_on_device(tensor) else None), HOST
        if self.is_on_device(tensor):
            return None, DEVICE  # already there: no copy
        # Only a non-blocking copy from pinned memory leaves the host free; the batch transfer
        # is counted apart whatever it is (see the module notes).
        pinned = non_blocking and tensor.is_pinned()
        return ("h2d" if self.transferring or not pinned else None), DEVICE


@dataclass
class SyncReport:
    """What :class:`SyncAuditCallback` found.

    Attributes:
        steps: training steps audited.
        syncs: synchronisations in them (every kind).
        per_step: ``syncs / steps``.
        by_kind: synchronisations per kind (``sync``, ``shape``, ``h2d``, ``d2h``).
        by_place: synchronisations per ``function @ caller``.
        transfers_per_step: copies of host batches to the device per step (Lightning's batch
            transfer; 0 with ``dataset.on_device``).
    """

    steps: int
    syncs: int
    per_step: float
    by_kind: dict[str, int]
    by_place: dict[str, int]
    transfers_per_step: float


class SyncAuditCallback(L.Callback):
    """Audit every training step of a fit for host-device synchronisations (:class:`SyncAudit`).

    Add it last
    (``+callbacks.sync_audit._target_=cnnstress.train.sync_audit.SyncAuditCallback``); the
    report is :attr:`report` after the fit, and is written as JSON to ``report_path`` when given.
    Steps are counted from one step's end to the next one's (see the module notes); the first
    step of every epoch is left out.
    """

    last: SyncAuditCallback | None = None

    def __init__(self, report_path: str | None = None) -> None:
        self.report_path = report_path
        self.audit: SyncAudit | None = None
        self.report: SyncReport | None = None
        self._steps = 0
        SyncAuditCallback.last = self

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.audit is not None:
            return
        self.audit = SyncAudit(trainer.strategy.root_device)
        self.audit.__enter__()
        # Lightning calls the data module's transfer hook when there is one (quietly, as long
        # as the LightningModule does not override it too).
        self._owner = trainer.datamodule if trainer.datamodule is not None else pl_module
        transfer = self._owner.transfer_batch_to_device

        def audited_transfer(batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            self.audit.transferring = True
            try:
                return transfer(batch, device, dataloader_idx)
            finally:
                self.audit.transferring = False

        self._owner.transfer_batch_to_device = audited_transfer

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.audit.mark_module(pl_module)
        for callback in trainer.callbacks:
            for value in vars(callback).values():
                if isinstance(value, nn.Module):
                    self.audit.mark_module(value)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if self.audit.counting:  # a window closes: one audited step
            self._steps += 1
        # the next window opens unless this was the epoch's last step
        self.audit.counting = batch_idx + 1 < trainer.num_training_batches

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.audit is not None:
            self.audit.counting = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.audit is None:
            return
        audit, self.audit = self.audit, None
        audit.counting = False
        audit.__exit__(None, None, None)
        del self._owner.transfer_batch_to_device
        places = Counter(f"{e.function} @ {e.where}" for e in audit.events)
        self.report = SyncReport(
            steps=self._steps,
            syncs=len(audit.events),
            per_step=len(audit.events) / self._steps if self._steps else float("nan"),
            by_kind=dict(Counter(e.kind for e in audit.events)),
            by_place=dict(places.most_common()),
            transfers_per_step=audit.transfers / self._steps if self._steps else float("nan"),
        )
        if self.report_path:
            Path(self.report_path).write_text(json.dumps(asdict(self.report), indent=1))
