"""Cost of each improvement's augmentation against one training step on the same batch.

For every ``conf/improvement/*.yaml`` it times cnnstress's batched per-image augmentation of a
uint8 batch (uint8 -> float included, as in training) and compares it with one plain-PyTorch
training step of the model on that batch (normalise, forward, backward, optimizer step). For
reference it also times the nearest torchvision.transforms.v2 pipeline two ways: on the whole
batch at once (fast, but one set of random parameters for the batch, so not per-image) and image
by image in a Python loop (per-image parameters, the way to get them from v2):

    python bench/augment_cost.py                               # simple_cnn, CPU, batch 512
    python bench/augment_cost.py --device cuda --model resnet18

Targets: augmentation <= 10% of the simple_cnn step on CPU, <= 2% of the ResNet-18 step on a GPU.
Timings are the minimum over repeats (robust to other processes on a shared machine), medians
alongside.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from omegaconf import OmegaConf

from cnnstress.app.configs import compose_config
from cnnstress.core.augment import build_augmentation
from cnnstress.core.config import build

IMPROVEMENTS = ["baseline", "cutout", "cutmix", "mixup", "augment", "label_smoothing"]


def torchvision_v2(augmentation: dict, num_classes: int) -> tuple[T.Transform, T.Transform | None]:
    """The nearest torchvision v2 pipeline: (image transforms, batch-mixing transform or None).

    v2 has no Cutout: RandomErasing with a fixed size x size square stands in (not clipped at
    the borders). v2 CutMix/MixUp have no ``p``: they mix every batch.
    """
    image: list[T.Transform] = [T.ToDtype(torch.float32, scale=True)]
    if "crop" in augmentation:
        image.append(T.RandomCrop(32, padding=augmentation["crop"]["padding"]))
    if "flip" in augmentation:
        image.append(T.RandomHorizontalFlip(augmentation["flip"]["p"]))
    if "rotation" in augmentation:
        image.append(T.RandomApply([T.RandomRotation(augmentation["rotation"]["degrees"])],
                                   p=augmentation["rotation"]["p"]))  # fmt: skip
    if "color_jitter" in augmentation:
        jitter = {k: v for k, v in augmentation["color_jitter"].items() if k != "p"}
        image.append(T.ColorJitter(**jitter))
    if "cutout" in augmentation:
        side = augmentation["cutout"]["size"] ** 2 / 1024
        image.append(T.RandomErasing(p=augmentation["cutout"]["p"], scale=(side, side),
                                     ratio=(1.0, 1.0)))  # fmt: skip
    if "erasing" in augmentation:
        image.append(T.RandomErasing(**augmentation["erasing"]))
    mix = None
    if "cutmix" in augmentation:
        mix = T.CutMix(alpha=augmentation["cutmix"]["alpha"], num_classes=num_classes)
    if "mixup" in augmentation:
        mix = T.MixUp(alpha=augmentation["mixup"]["alpha"], num_classes=num_classes)
    return T.Compose(image), mix


def rounds(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` per call, ``repeats`` rounds, after two warm-up rounds.

    The functions run interleaved, one call each per round, so drifting load on a shared
    machine hits all of them alike.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats + 2):
        for name, fn in fns.items():
            sync()
            start = clock()
            fn()
            sync()
            if r >= 2:
                times[name].append(clock() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="simple_cnn")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--skip-loop", action="store_true", help="skip the slow v2 per-image loop")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time (all threads), steadier on a shared CPU machine",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    n = args.batch_size
    data = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=data).to(device)
    labels = torch.randint(0, 10, (n,), generator=data).to(device)

    with tempfile.TemporaryDirectory() as tmp:
        cfgs = {
            name: compose_config(Path(tmp) / name, [f"model={args.model}", f"improvement={name}"])
            for name in IMPROVEMENTS
        }
    cfg = cfgs["baseline"]
    num_classes = cfg.dataset.num_classes
    mean = torch.tensor(list(cfg.dataset.mean), device=device).view(1, 3, 1, 1)
    std = torch.tensor(list(cfg.dataset.std), device=device).view(1, 3, 1, 1)

    # Plain-PyTorch training step: normalise, forward, backward, optimizer step.
    torch.manual_seed(0)
    net = build(cfg.model.net).to(device).train()
    optimizer = build(cfg.module.optimizer)(params=net.parameters())
    batch = images.float().div(255)

    def step() -> None:
        loss = F.cross_entropy(net((batch - mean) / std), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    generator = torch.Generator(device=device).manual_seed(0)
    fns: dict[str, Callable[[], object]] = {"step": step}
    loops: dict[str, Callable[[], object]] = {}
    for name, improvement_cfg in cfgs.items():
        config = OmegaConf.to_container(improvement_cfg.augmentation, resolve=True)
        ours = build_augmentation(config, num_classes)
        v2_images, v2_mix = torchvision_v2(config, num_classes)

        def augment(ours=ours) -> None:
            ours(images, labels, generator)

        def v2_batch(v2_images=v2_images, v2_mix=v2_mix) -> None:
            x = v2_images(images)
            if v2_mix is not None:
                v2_mix(x, labels)

        def v2_loop(v2_images=v2_images, v2_mix=v2_mix) -> None:
            x = torch.stack([v2_images(image) for image in images])
            if v2_mix is not None:
                v2_mix(x, labels)

        fns[name], fns[f"{name}/v2"], loops[name] = augment, v2_batch, v2_loop

    times = rounds(fns, args.repeats, device, clock)
    loop_times = {} if args.skip_loop else rounds(loops, 3, device, clock)
    step_min, step_med = min(times["step"]), statistics.median(times["step"])
    print(f"model={args.model} device={device} batch={n} threads={torch.get_num_threads()} "
          f"repeats={args.repeats} clock={args.clock}")  # fmt: skip
    print(f"training step: {step_min * 1e3:.1f} ms (median {step_med * 1e3:.1f} ms)\n")
    header = (f"{'improvement':<16}{'ours ms':>9}{'(median)':>10}{'% of step':>11}"
              f"{'v2 batch ms':>13}{'v2 per-image ms':>17}")  # fmt: skip
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name in cfgs:
        ours_min, ours_med = min(times[name]), statistics.median(times[name])
        worst = max(worst, ours_min / step_min)
        v2 = min(times[f"{name}/v2"])
        loop = f"{min(loop_times[name]) * 1e3:17.1f}" if loop_times else ""
        print(f"{name:<16}{ours_min * 1e3:9.2f}{ours_med * 1e3:10.2f}"
              f"{100 * ours_min / step_min:10.1f}%{v2 * 1e3:13.2f}{loop}")  # fmt: skip
    target = 0.10 if device.type == "cpu" else 0.02
    verdict = "meets" if worst <= target else "MISSES"
    print(f"\nworst improvement: {100 * worst:.1f}% of the step; {verdict} the {target:.0%} target")
    print("(times: minimum over rounds; v2 batch: one parameter set per batch, not per image)")


if __name__ == "__main__":
    main()
