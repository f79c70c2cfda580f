"""Class-activation maps and gradient saliency for a classifier, leaving the model untouched.

:func:`compute_heatmaps` is the one entry point: training callbacks and analysis both use it.
The CAM methods come from pytorch-grad-cam; plain gradient saliency (Simonyan et al. 2014) is
written here because pytorch-grad-cam offers only guided backprop, which rewires every ReLU.
Maps always explain the plain model, never a test-time-augmentation ensemble (``tta``): the
CAM of an average over shifted and mirrored views is not a map of the image the model saw.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from cnnstress.core.errors import ConfigError
from cnnstress.core.rules import OneOf, check

# Methods that only need a target layer and gradients/activations. AblationCAM (swaps layers
# in the model), FullGrad (ignores the target layer), KPCA-CAM (scikit-learn) and RandomCAM
# (draws random numbers) are left out on purpose.
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "gradcamelementwise": GradCAMElementWise,
    "scorecam": ScoreCAM,
}
SALIENCY = "saliency"
METHODS: tuple[str, ...] = (*CAM_METHODS, SALIENCY)

# Module attributes that hold hooks; a snapshot of their keys tells whether any were left.
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


# The rule of every ``method`` setting (callbacks, stresses, analysis): case-insensitive.
METHOD_RULE = OneOf(METHODS, casefold=True)


def check_method(method: str, key: str = "method") -> str:
    """``method`` lower-cased, or one :class:`ConfigError` line naming the valid choices."""
    return check(METHOD_RULE, method, key)


def run_cam_settings(
    cfg: DictConfig,
    method: str | None = None,
    target_layer: str | None = None,
    *,
    key: str = "method",
) -> tuple[str, str | None]:
    """The CAM method and target layer a run used, unless given here.

    ``method``: else the run's ``callbacks.gradcam.method``, else ``gradcam``; ``target_layer``:
    else ``callbacks.gradcam.target_layer``, else ``model.target_layer``, else None (fine for
    ``saliency``). The method is checked with :func:`check_method` (``key`` names it in the
    error).
    """
    found = OmegaConf.select(cfg, "callbacks.gradcam.method", default=None)
    layer = (
        target_layer
        or OmegaConf.select(cfg, "callbacks.gradcam.target_layer", default=None)
        or OmegaConf.select(cfg, "model.target_layer", default=None)
    )
    return check_method(method or found or "gradcam", key), None if layer is None else str(layer)


def resolve_layer(model: nn.Module, path: str, key: str = "target_layer") -> nn.Module:
    """The submodule of ``model`` at dotted ``path`` (e.g. ``"layer3"``, ``"layer3.1.conv2"``).

    Raises :class:`ConfigError` naming the children of the deepest module that does exist.
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{key} must be a dotted module path, got {path!r}")
    module, walked = model, []
    for part in path.split("."):
        children = dict(module.named_children())
        if part not in children:
            where = ".".join(walked) or f"the {type(model).__name__} root"
            choices = ", ".join(children) or "(none)"
            raise ConfigError(
                f"{key}={path!r} is not a module of the model: {where} has no child {part!r}; "
                f"its children are: {choices}"
            )
        module, walked = children[part], [*walked, part]
    return module


def hook_snapshot(model: nn.Module) -> dict[str, tuple]:
    """``{module name: hook ids}`` over every submodule and every hook kind (for checks)."""
    return {
        name: tuple(tuple(getattr(module, attr, {}).keys()) for attr in HOOK_DICTS)
        for name, module in model.named_modules()
    }


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Run the block with gradients on and restore ``model`` exactly as it was afterwards.

    Restored: the train/eval mode of every submodule, every parameter's ``requires_grad`` and
    ``.grad``, the global torch RNG (CPU and the model's CUDA device), and no hook added to any
    submodule survives. Inference mode and autocast are switched off inside the block.
    """
    modes = {m: m.training for m in model.modules()}
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    hooks = {m: {a: set(getattr(m, a, {})) for a in HOOK_DICTS} for m in model.modules()}
    device = params[0].device if params else torch.device("cpu")
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with (
            torch.random.fork_rng(devices=rng_devices),
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device_type=device.type, enabled=False),
        ):
            yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        for param, flag, grad in zip(params, flags, grads, strict=True):
            param.requires_grad_(flag)
            param.grad = grad
        for module, before in hooks.items():
            for attr, keys in before.items():
                registry = getattr(module, attr, None)
                for key in set(registry or ()) - keys:
                    del registry[key]


def _saliency(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` max over channels of ``|d logit_target / d pixel|``, unnormalised."""
    logits = model(images)
    score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
    (grad,) = torch.autograd.grad(score, images)
    return grad.abs().amax(dim=1)


def _cam(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor, method: str
) -> torch.Tensor:
    cam = CAM_METHODS[method](model=model, target_layers=[layer])
    if method == "scorecam":
        cam.batch_size = 128  # masked copies per forward pass (library default 16)
    result = None
    # ScoreCAM draws a tqdm progress bar on stderr for every batch: keep it off the console.
    quiet = (
        contextlib.redirect_stderr(io.StringIO())
        if method == "scorecam"
        else contextlib.nullcontext()
    )
    with cam, quiet:  # the CAM's context manager removes its hooks
        # One target per image: pytorch-grad-cam pairs them one to one.
        result = cam(images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    if result is None:  # BaseCAM.__exit__ swallows IndexError; do not hide it
        raise RuntimeError(f"{method} failed inside pytorch-grad-cam (IndexError swallowed)")
    return torch.from_numpy(np.asarray(result, dtype=np.float32))


def _scale(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale every map of ``(N, H, W)`` to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps).clamp_(0, 1)


def predict_probs(
    model: nn.Module, images: torch.Tensor, *, channels_last: bool = False, batch_size: int = 256
) -> torch.Tensor:
    """Softmax probabilities ``(N, C)`` float32 on the CPU, model in eval mode, left untouched.

    ``images``: normalised float ``(N, 3, H, W)``. Runs in float32 with autocast off.
    """
    param = next(model.parameters())
    dtype = param.dtype if param.is_floating_point() else torch.float32
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    with untouched(model), torch.no_grad():
        model.eval()
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size].clone().to(param.device, dtype)
            logits = model(chunk.contiguous(memory_format=memory_format))
            out.append(logits.float().softmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def compute_heatmaps(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    method: str = "gradcam",
    target_layer: str | nn.Module | None = None,
    *,
    channels_last: bool = False,
    batch_size: int = 64,
) -> torch.Tensor:
    """Heatmaps ``(N, H, W)`` float32 on the CPU, each scaled to [0, 1], for one class per image.

    Args:
        model: the classifier (maps ``(N, 3, H, W)`` to logits ``(N, C)``), e.g. a backbone.
        images: normalised float ``(N, 3, H, W)``, any device; may be inference tensors.
        targets: ``(N,)`` class whose logit is explained, one per image.
        method: one of :data:`METHODS` (``"saliency"`` is plain input-gradient saliency).
        target_layer: dotted path of a submodule of ``model`` or the module itself; required
            by every method except ``"saliency"``.
        channels_last: feed the images in channels_last memory format.
        batch_size: images per forward/backward pass.

    The model is left exactly as found (see :func:`untouched`): pytorch-grad-cam puts it in
    eval mode and clears parameter gradients, both undone here. Computation runs in float32
    (autocast off; in the parameters' dtype if they are not float32), outside inference mode.
    """
    method = check_method(method)
    layer = None
    if method != SALIENCY:
        if target_layer is None:
            raise ConfigError(f"method={method!r} needs a target_layer")
        layer = (
            target_layer
            if isinstance(target_layer, nn.Module)
            else resolve_layer(model, target_layer)
        )
    elif isinstance(target_layer, str):
        resolve_layer(model, target_layer)  # a bad path is a mistake even if unused
    targets = torch.as_tensor(targets, dtype=torch.long).cpu()
    if images.ndim != 4 or targets.shape != (images.shape[0],):
        raise ValueError(
            f"need images (N, 3, H, W) and targets (N,), got {images.shape}, {tuple(targets.shape)}"
        )
    param = next(model.parameters())
    dtype = param.dtype if param.is_floating_point() else torch.float32
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    with untouched(model):
        model.eval()
        # Parameters need no gradient; the input does, so gradients reach the target layer.
        for p in model.parameters():
            p.requires_grad_(False)
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size].clone()  # a normal tensor, not inference
            chunk = chunk.to(param.device, dtype).contiguous(memory_format=memory_format)
            chunk.requires_grad_(True)
            # A normal tensor too: targets made in inference mode (e.g. the predictions of a
            # test-time callback) cannot be saved for backward by the saliency gather.
            chunk_targets = targets[start : start + batch_size].clone()
            if layer is None:
                maps = _saliency(model, chunk, chunk_targets).float().cpu()
            else:
                maps = _cam(model, layer, chunk, chunk_targets, method)
            out.append(_scale(maps.detach()))
    if not out:
        return torch.zeros(0, *images.shape[-2:])
    return torch.cat(out)
