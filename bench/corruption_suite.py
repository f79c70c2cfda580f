"""Time the generated CIFAR-10-C suite on one checkpoint: every implemented type x 5 severities.

    python bench/corruption_suite.py                        # simple_cnn, CPU, all 10,000 images
    python bench/corruption_suite.py --fraction 0.1         # 1,000 images, extrapolated x10
    python bench/corruption_suite.py --model resnet18 --device cuda
    python bench/corruption_suite.py --run outputs/runs/DATE/TIME   # a trained run's checkpoint

Runs the real code path (``corruption_suite.evaluate``: generate on the device, classify,
accuracies, heat-map) and, in the same process, two references:

* model only: the same number of forward passes on the clean images (plain PyTorch loop), the
  floor any corruption suite pays;
* per image: the same corruption code called one image at a time (as the reference generator
  works), on a sample, extrapolated; it shows what batching buys.

Measured type by type, each next to its references, so drifting machine load hits all alike.

Timings with ``--fraction < 1`` are extrapolated linearly and labelled so.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cnnstress.core.data.sources import load_split
from cnnstress.core.models import SimpleCNN, resnet18
from cnnstress.stress import corruption_suite
from cnnstress.stress.context import StressContext, seeded_subset
from cnnstress.stress.corruptions import CORRUPTIONS, SEVERITIES, corrupt

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CNNSTRESS_DATA", ROOT.parent / "shared" / "datasets"))
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_context(args: argparse.Namespace, out: Path) -> StressContext:
    device = torch.device(args.device)
    if args.run:
        from cnnstress.core.checkpoints import load_backbone

        net, cfg = load_backbone(args.run, device)
        root = args.data or cfg.dataset.root
    else:  # timing does not depend on the weights: a freshly initialised backbone
        torch.manual_seed(0)
        net = SimpleCNN(10) if args.model == "simple_cnn" else resnet18(10)
        root = args.data or str(DATA / "cifar10-jpeg.zip")
        cfg = OmegaConf.create(
            {
                "model": {"name": args.model},
                "dataset": {
                    "name": "cifar10", "num_classes": 10, "mean": MEAN, "std": STD,
                    "eval_batch_size": args.batch_size, "root": root,
                },
            }
        )  # fmt: skip
    test = load_split(root, "cifar10", "test")
    return StressContext(out, net.to(device).eval(), cfg, device, test, str(root))


def model_only(ctx: StressContext, images: torch.Tensor, passes: int, batch: int) -> float:
    """Seconds for ``passes`` x classifying ``images`` (uint8, host) in a plain loop."""
    mean = torch.tensor(MEAN, device=ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=ctx.device).view(1, 3, 1, 1)
    sync(ctx.device)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(passes):
            for i in range(0, len(images), batch):
                x = images[i : i + batch].to(ctx.device).float() / 255
                ctx.net((x - mean) / std).argmax(1).cpu()
    sync(ctx.device)
    return time.perf_counter() - start


def generation_only(images: torch.Tensor, name: str, device: torch.device, batch: int) -> float:
    """Seconds to generate every severity of one type for ``images`` (no model)."""
    sync(device)
    start = time.perf_counter()
    for severity in SEVERITIES:
        for _ in corruption_suite.iter_corrupted(images, name, severity, 0, batch, device):
            pass
    sync(device)
    return time.perf_counter() - start


def per_image(images: torch.Tensor, name: str, device: torch.device) -> float:
    """Seconds to corrupt ``images`` one at a time, every severity of one type."""
    generator = torch.Generator(device=device).manual_seed(0)
    sync(device)
    start = time.perf_counter()
    for severity in SEVERITIES:
        for i in range(len(images)):
            corrupt(images[i : i + 1].to(device), name, severity, generator)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="simple_cnn", choices=["simple_cnn", "resnet18"])
    parser.add_argument("--run", default=None, help="a run directory (uses its checkpoint)")
    parser.add_argument("--data", default=None, help="CIFAR-10 root (default: the shared zip)")
    parser.add_argument("--fraction", type=float, default=1.0, help="of the 10,000 test images")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--per-image-sample", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        ctx = build_context(args, Path(tmp))
        n_total = len(ctx.test)
        n = max(1, round(n_total * args.fraction))
        scale = n_total / n
        label = "" if n == n_total else f" (measured on {n}, extrapolated x{scale:g})"
        subset = seeded_subset(n_total, n, 0)
        images = ctx.test.images[subset]
        # Warm-up: first calls pay one-off costs (thread pools, cuDNN autotuning, nvjpeg).
        corruption_suite.evaluate(ctx, {"types": ["contrast"], "severities": [1], "max_images": 64})
        model_only(ctx, images[:64], 1, args.batch_size)
        # Type by type, each measurement next to its references, so that drifting machine load
        # hits them alike.
        rows, accs = {}, []
        sample = images[: args.per_image_sample]
        settings = {"batch_size": args.batch_size, "max_images": n if n < n_total else None}
        for name in CORRUPTIONS:
            start = time.perf_counter()
            result = corruption_suite.evaluate(ctx, {**settings, "types": [name]})
            suite = time.perf_counter() - start
            accs.append(result["corruptions/mean_acc"])
            model = model_only(ctx, images, len(SEVERITIES), args.batch_size)
            generate = generation_only(images, name, ctx.device, args.batch_size)
            single = per_image(sample, name, ctx.device) * n_total / len(sample)
            rows[name] = (suite * scale, model * scale, generate * scale, single)

    name = ctx.cfg.model.name if "model" in ctx.cfg else "model"
    print(
        f"model={name} device={ctx.device} threads={torch.get_num_threads()} "
        f"batch={args.batch_size} types={len(CORRUPTIONS)} severities=5 images={n_total}{label}"
    )
    print(f"mean corruption accuracy: {sum(accs) / len(accs):.4f}")
    header = ("type", "suite s", "model-only s", "generate s", "per-image s", "batched x")
    print("\n{:18s} {:>9s} {:>13s} {:>11s} {:>12s} {:>10s}".format(*header))
    totals = tuple(sum(col) for col in zip(*rows.values(), strict=True))
    for t, (suite, model, generate, single) in [*rows.items(), ("total", totals)]:
        line = f"{t:18s} {suite:9.1f} {model:13.1f} {generate:11.2f} {single:12.1f}"
        print(f"{line} {single / generate:9.1f}x")
    suite, model, generate, single = totals
    print(f"\nfull suite, cnnstress (generate + classify + heat-map): {suite:8.1f} s{label}")
    print(f"  plain-loop model only, same images ({len(CORRUPTIONS) * 5} x 10,000): {model:8.1f} s")
    print(f"  suite / (model only + generation): {suite / (model + generate):.3f}")
    print(
        f"  per-image generation (sample of {len(sample)} per type and severity): {single:8.1f} s"
    )
    print(
        f"throughput: {len(CORRUPTIONS) * 5 * n_total / suite:,.0f} corrupted images/s classified"
    )


if __name__ == "__main__":
    main()
