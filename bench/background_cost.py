"""Time the background stress on the whole test split against plain forward passes.

    python bench/background_cost.py                       # simple_cnn (width 32), CPU
    python bench/background_cost.py --repeats 3 --threads 1
    python bench/background_cost.py --device cuda --model resnet18

Runs the real code path (``background.evaluate`` on all 10,000 test images of the shared
CIFAR-10 zip: clean logits, five composites, the CAMs of 1,000 images, both figures) on a
freshly initialised backbone (timing does not depend on the weights), and in the same process,
interleaved, two references:

* one plain forward pass of the same 10,000 images (a hand-written loop: uint8 -> float,
  normalise, forward, argmax), the unit of the target;
* the Grad-CAMs of the same 1,000 images through ``cnnstress.core.cam.compute_heatmaps`` alone.

Each round runs six plain passes back to back, the CAMs alone, then the stress, whose steps are
timed from the inside (clean logits, the five variants, the CAMs, the figures). Target: the
whole stress costs at most 6 plain passes plus the CAM subset.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from pathlib import Path

import torch

from cnnstress.app.configs import compose_config
from cnnstress.core.cam import compute_heatmaps
from cnnstress.core.data.sources import load_split
from cnnstress.core.models import SimpleCNN, resnet18
from cnnstress.stress import background
from cnnstress.stress.context import StressContext, seeded_subset

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CNNSTRESS_DATA", ROOT.parent / "shared" / "datasets"))


def sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def plain_pass(ctx: StressContext, batch: int) -> float:
    """Seconds for one plain forward pass over the whole test split."""
    mean = torch.tensor(list(ctx.cfg.dataset.mean), device=ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(list(ctx.cfg.dataset.std), device=ctx.device).view(1, 3, 1, 1)
    images = ctx.test.images
    start = sync(ctx.device)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(ctx.device).float() / 255
            ctx.net((x - mean) / std).argmax(1).cpu()
    return sync(ctx.device) - start


def cam_only(ctx: StressContext, count: int, batch: int) -> float:
    """Seconds for the Grad-CAMs of the stress's CAM subset (predicted classes), nothing else."""
    positions = seeded_subset(len(ctx.test), count, 0)
    mean = torch.tensor(list(ctx.cfg.dataset.mean), device=ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(list(ctx.cfg.dataset.std), device=ctx.device).view(1, 3, 1, 1)
    x = (ctx.test.images[positions].to(ctx.device).float() / 255 - mean) / std
    with torch.no_grad():  # the stress takes the targets from the clean logits: not timed
        targets = ctx.net(x).argmax(1).cpu()
    start = sync(ctx.device)
    compute_heatmaps(ctx.net, x, targets, "gradcam", ctx.cfg.model.target_layer, batch_size=batch)
    return sync(ctx.device) - start


PARTS = ("_predict", "_cam_outside", "plot_examples", "plot_classes")


def time_parts(device: torch.device) -> dict[str, float]:
    """Wrap the stress's steps (module functions :data:`PARTS`) with timers; returns the
    dictionary the seconds accumulate in."""
    seconds: dict[str, float] = collections.defaultdict(float)
    for name in PARTS:
        original = getattr(background, name)

        def timed(*args, _original=original, _name=name, **kwargs):
            start = sync(device)
            try:
                return _original(*args, **kwargs)
            finally:
                seconds[_name] += sync(device) - start

        setattr(background, name, timed)
    return seconds


def stress(ctx: StressContext, settings: dict, parts: dict[str, float]) -> dict[str, float]:
    """Seconds of ``background.evaluate`` on a fresh context, by step: ``clean`` (the clean
    logits, one pass), the :data:`PARTS`, ``other`` and ``total``."""
    fresh = StressContext(ctx.run_dir, ctx.net, ctx.cfg, ctx.device, ctx.test, ctx.data_root)
    parts.clear()
    start = sync(ctx.device)
    fresh.clean_logits()  # what evaluate asks first; cached, as for the other stresses
    clean = sync(ctx.device) - start
    background.evaluate(fresh, background.BackgroundSettings(**settings))
    total = sync(ctx.device) - start
    out = {"clean": clean, **{name: parts[name] for name in PARTS}}
    out["other"] = total - sum(out.values())
    out["total"] = total
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="simple_cnn", choices=["simple_cnn", "resnet18"])
    parser.add_argument("--data", default=str(DATA / "cifar10-jpeg.zip"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--cam-images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = SimpleCNN(10, width=32) if args.model == "simple_cnn" else resnet18(10)
    parts = time_parts(device)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(
            tmp, [f"model={args.model}", f"dataset.root={args.data}",
                  f"dataset.eval_batch_size={args.batch_size}"],
        )  # fmt: skip
        test = load_split(args.data, "cifar10", "test")
        ctx = StressContext(Path(tmp), net.to(device).eval(), cfg, device, test, args.data)
        settings = {"batch_size": args.batch_size, "cam_images": args.cam_images}
        load = [os.getloadavg()[0]]
        stress(ctx, {**settings, "max_images": 200, "cam_images": 16}, parts)  # warm-up
        runs: list[tuple[float, float, dict[str, float]]] = []
        for _ in range(args.repeats):  # interleaved: drifting load hits every column alike
            six = sum(plain_pass(ctx, args.batch_size) for _ in range(6))
            cam = cam_only(ctx, args.cam_images, args.batch_size)
            runs.append((six, cam, stress(ctx, settings, parts)))
            load.append(os.getloadavg()[0])

    print(
        f"model={args.model} device={device} threads={torch.get_num_threads()} "
        f"images={len(test)} cam_images={args.cam_images} batch={args.batch_size} "
        f"repeats={args.repeats}; load average (1 min) {min(load):.1f}-{max(load):.1f}"
    )
    print("seconds per round (round = 6 plain passes, CAM alone, the stress, back to back):")
    header = ["6 passes", "CAM alone", "stress", "clean", "5 variants", "CAM", "figures",
              "other", "ratio"]  # fmt: skip
    print(" ".join(f"{h:>10s}" for h in header))
    ratios = []
    for six, cam, t in runs:
        ratio = t["total"] / (six + cam)
        ratios.append(ratio)
        row = [six, cam, t["total"], t["clean"], t["_predict"], t["_cam_outside"],
               t["plot_examples"] + t["plot_classes"], t["other"], ratio]  # fmt: skip
        print(" ".join(f"{v:10.2f}" for v in row))
    best = min(ratios)
    print(
        f"stress / (6 plain passes + CAM subset alone): best {best:.2f}, worst {max(ratios):.2f} "
        f"(target <= 1: {'met' if best <= 1 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
