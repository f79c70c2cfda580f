"""Training throughput: cnnstress (Lightning + Hydra) against a plain PyTorch loop.

Both train the same model on the same uint8 data with the same batched augmentation
(crop + flip, run on the device), in the same precision and memory format (the run's resolved
``trainer.precision`` and ``channels_last``: bf16 autocast + channels_last on a CPU with
native bf16), for the same number of steps, in this one process:

    python bench/train_speed.py                      # simple_cnn, CPU, 150 steps of 128
    python bench/train_speed.py model=resnet18 --device cuda --steps 300

Prints images/s of each and their ratio (target on CPU with simple_cnn: >= 0.95).
Extra arguments are Hydra overrides of conf/train.yaml.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import open_dict

from cnnstress.config import compose_config, instantiate
from cnnstress.precision import resolve_auto
from cnnstress.training import build_datamodule, train


def plain_loop(cfg, steps: int, device: torch.device) -> float:
    """Images/s of a hand-written loop over the same data, model, optimizer and augmentation,
    in the precision and memory format the framework resolves for ``cfg``."""
    precision, channels_last = resolve_auto(cfg)
    if precision not in ("32-true", "bf16-mixed"):
        raise SystemExit(f"the plain loop supports 32-true and bf16-mixed, not {precision}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    dm = build_datamodule(cfg)
    dm.setup()
    images, labels = dm.train_set.images[dm.train_set.indices], dm.train_set.labels
    labels = labels[dm.train_set.indices]
    net = instantiate(cfg.model.net).to(device, memory_format=memory_format).train()
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    mean, std = dm.mean.to(device), dm.std.to(device)
    batch = cfg.dataset.batch_size
    order = torch.randperm(len(labels))

    def step(i: int) -> None:
        idx = order[(i * batch) % (len(labels) - batch) :][:batch]
        x, y = images[idx].to(device, non_blocking=True), labels[idx].to(device)
        x, _ = dm.augment(x, y, generator)
        x = ((x - mean) / std).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(5):  # warm-up, as Lightning's first steps also pay one-off costs
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def framework(cfg, steps: int) -> float:
    """Images/s measured by cnnstress's TrainSpeed callback (validation/test excluded)."""
    with open_dict(cfg):
        cfg.trainer.limit_train_batches = steps
        cfg.trainer.limit_test_batches = 1
        cfg.trainer.max_epochs = 1
        cfg.trainer.enable_progress_bar = False
    return train(cfg)["train/images_per_sec"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args, overrides = parser.parse_known_args()
    device = torch.device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    overrides = ["model=simple_cnn", f"trainer.accelerator={accelerator}", *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for r in range(args.repeats):  # alternate, so drift in machine load hits both alike
            cfg = compose_config(Path(tmp) / f"run{r}", overrides)
            plain = plain_loop(cfg, args.steps, device)
            fw = framework(compose_config(Path(tmp) / f"fw{r}", overrides), args.steps)
            results.append((plain, fw))
            print(f"repeat {r}: plain {plain:8.1f} img/s   cnnstress {fw:8.1f} img/s")
    plain = max(p for p, _ in results)
    fw = max(f for _, f in results)
    print(f"\nmodel={cfg.model.name} device={device} batch={cfg.dataset.batch_size} "
          f"steps={args.steps} threads={torch.get_num_threads()} "
          f"precision={cfg.trainer.precision} channels_last={cfg.channels_last}")  # fmt: skip
    print(f"plain PyTorch loop : {plain:8.1f} images/s (best of {args.repeats})")
    print(f"cnnstress framework: {fw:8.1f} images/s (best of {args.repeats})")
    print(f"ratio framework/plain: {fw / plain:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
