"""A model's own view of its test images: the penultimate features, captured with a hook.

The embedding of an image is what the classifier's head sees: the input of the last linear
layer whose outputs are the logits (``fc`` of the ResNets and the simple CNN, ``head`` of the
fast net). Any other module can be named instead (``layer``, a dotted path); its output is
averaged over the spatial dimensions when it is a feature map ``(N, C, H, W)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnstress.core.cam import resolve_layer, untouched

HEAD = "head"  # the setting that names the classifier head's input


def head_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The dotted name and module of ``model``'s classifier head: its last :class:`nn.Linear`
    (in registration order), the one every backbone of :mod:`cnnstress.models` ends with.

    Raises:
        ValueError: the model has no linear layer (name one with ``layer``).
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head: name an embedding layer")
    return found[-1]


def describe_layer(model: nn.Module, layer: str = HEAD) -> str:
    """``"fc (input)"`` for the head's input, else the dotted path itself."""
    return f"{head_layer(model)[0]} (input)" if layer == HEAD else layer


def embed(
    model: nn.Module,
    images: torch.Tensor,
    layer: str = HEAD,
    *,
    batch_size: int = 500,
    channels_last: bool = False,
    key: str = "embedding_layer",
) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of normalised ``images`` ``(N, 3, H, W)``.

    ``layer``: :data:`HEAD` (the input of :func:`head_layer`) or a dotted module path (its
    output, spatially averaged when 4-D; a bad path is one :class:`ConfigError` line naming
    ``key``). One forward pass in eval mode, float32 with autocast off, in batches; the model is
    left exactly as found (:func:`cnnstress.core.cam.untouched`: modes, flags, gradients,
    hooks, RNG).
    """
    module = head_layer(model)[1] if layer == HEAD else resolve_layer(model, layer, key)
    captured: list[torch.Tensor] = []

    def keep_input(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach().float().flatten(1).cpu())

    def keep_output(_: nn.Module, __: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        out = output.detach().float()
        captured.append((out.mean((2, 3)) if out.ndim == 4 else out.flatten(1)).cpu())

    param = next(model.parameters())
    dtype = param.dtype if param.is_floating_point() else torch.float32
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    with untouched(model), torch.no_grad():
        model.eval()
        handle = (
            module.register_forward_pre_hook(keep_input)
            if layer == HEAD
            else module.register_forward_hook(keep_output)
        )
        try:
            for start in range(0, images.shape[0], batch_size):
                chunk = images[start : start + batch_size].clone().to(param.device, dtype)
                model(chunk.contiguous(memory_format=memory_format))
        finally:
            handle.remove()
    if not captured:
        return np.zeros((0, 0), np.float32)
    return torch.cat(captured).numpy().astype(np.float32, copy=False)
