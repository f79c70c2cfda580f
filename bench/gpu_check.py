"""Check cnnstress on a GPU in under 9 minutes (``bench/gpu_check.sh`` runs it; see there).

    python bench/gpu_check.py                    # CUDA: every step on the GPU
    python bench/gpu_check.py --device cpu       # the same steps, tiny, on the CPU

Steps, each a separate process, each reported ok/FAILED with its wall time:

1. what ``auto`` picks on this machine (precision, channels_last, cuDNN benchmark, data on the
   device), and whether choosing initialised CUDA;
2. a smoke run with every callback (checkpoints, failures, Grad-CAM every epoch and at test,
   confusion/calibration, learning rate, speed, epoch log);
3. the fp16 path (``16-mixed``; bf16 on the CPU, where Lightning has no fp16 AMP) with the fast
   recipe, CutMix, lookahead and ``compile=true``;
4. the stresses (corruptions, adversarial, calibration, faithfulness, background) on the device,
   checking ``<stress>/device`` in ``stress.json``;
5. host-device synchronisations per training step (``bench/sync_check.py``:
   ``torch.cuda.set_sync_debug_mode`` on CUDA, the TorchFunctionMode audit on the CPU);
6. ``bench/train_speed.py`` for fast_net (the fast recipe) and ResNet-18: framework vs plain loop;
7. two ``trainer.deterministic=true`` runs of the fast recipe (the simple CNN on the CPU),
   compared value by value.

Data: ``--data PATH`` (any ``dataset.root``), else a synthetic CIFAR-10-layout zip made here
(coloured stripe patterns per class: a device check needs no real images, and the device
machines are offline). Everything goes to ``--out`` (default ``$OUT``, else
``bench/gpu_check_out``): ``gpu_check.log`` with every process's output, and the run
directories. Exit status 1 when a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.io import encode_png

ROOT = Path(__file__).resolve().parents[1]
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
TIMING = ("time/wall_seconds", "train/images_per_sec")
STRESSES = ("corruptions", "adversarial", "calibration", "faithfulness", "background")


def synthetic_zip(path: Path, train_per_class: int, test_per_class: int) -> Path:
    """A CIFAR-10-layout zip (``<split>/<class>/<n>.png``) of class-coloured stripes + noise."""
    gen = torch.Generator().manual_seed(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for label, name in enumerate(CLASSES):
                base = torch.tensor([(label * 37) % 256, (label * 91) % 256, (label * 151) % 256])
                stripes = (torch.arange(32) // (2 + label % 4)) % 2 * 60.0
                pattern = base.view(3, 1, 1) + (
                    stripes.view(1, 1, 32) if label % 2 else stripes.view(1, 32, 1)
                )
                noise = torch.randn(count, 3, 32, 32, generator=gen) * 25
                images = (pattern + noise).clamp(0, 255).to(torch.uint8)
                for i, image in enumerate(images):
                    png = encode_png(image).numpy().tobytes()
                    archive.writestr(f"{split}/{name}/{i:04d}.png", png)
    return path


class Check:
    """Runs the steps, logs every process's output, keeps the verdicts."""

    def __init__(self, device: str, out: Path, data: Path) -> None:
        self.device, self.out, self.data = device, out, data
        self.cuda = device == "cuda"
        self.log = (out / "gpu_check.log").open("a")
        self.results: list[tuple[str, bool, float, str]] = []

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, args: list[str], timeout: int = 480) -> tuple[int, str]:
        """Run a command from the repository root; its output goes to the log."""
        self.log.write(f"$ {shlex.join(args)}\n")
        self.log.flush()
        try:
            done = subprocess.run(
                args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ
            )
        except subprocess.TimeoutExpired as err:
            out = f"{err.stdout or ''}{err.stderr or ''}"
            self.log.write(out + f"\n[timed out after {timeout} s]\n")
            return 124, out
        out = done.stdout + done.stderr
        self.log.write(out + f"\n[exit status {done.returncode}]\n")
        self.log.flush()
        return done.returncode, out

    def train(self, name: str, *overrides: str) -> tuple[int, str, Path]:
        """``train.py`` with the check's data into ``<out>/<name>``."""
        run_dir = self.out / name
        args = [
            sys.executable,
            str(ROOT / "train.py"),
            f"dataset.root={self.data}",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ]
        code, out = self.run(args)
        return code, out, run_dir

    def step(self, title: str, fn: Callable[[], tuple[bool, str]]) -> None:
        self.say(f"\n== {title}")
        start = time.perf_counter()
        try:
            ok, summary = fn()
        except Exception as err:  # a broken step must not hide the others
            ok, summary = False, f"{type(err).__name__}: {err}"
        seconds = time.perf_counter() - start
        self.say(summary)
        self.say(f"-> {'ok' if ok else 'FAILED'} ({seconds:.0f} s)")
        self.results.append((title, ok, seconds, summary.splitlines()[0] if summary else ""))

    # -- the steps ------------------------------------------------------------------------------
    def trainer(self) -> list[str]:
        """The trainer of every run: one GPU, or the CPU with a tiny config."""
        return ["trainer=gpu"] if self.cuda else ["trainer=cpu"]

    def tiny(self, model: str = "simple_cnn") -> list[str]:
        """Settings that make a CPU run take seconds (nothing on CUDA)."""
        if self.cuda:
            return []
        net = {
            "simple_cnn": ["model.net.width=8"],
            "fast_net": [
                "model.net.widths=[8,16,16]",
                "model.net.init_images=64",
                "callbacks.weight_averaging.every_n_steps=2",
            ],
        }
        return [
            *net.get(model, []),
            "dataset.batch_size=16",
            "dataset.eval_batch_size=64",
            "dataset.pin_memory=false",
        ]

    def val_size(self) -> str:
        return f"dataset.val_size={1000 if self.cuda else 32}"

    def auto(self) -> tuple[bool, str]:
        code = (
            "import sys, tempfile, torch; from pathlib import Path; "
            "from cnnstress.app.configs import compose_config; "
            "from cnnstress.train.precision import device_info, resolve_auto; "
            "cfg = compose_config(Path(tempfile.mkdtemp()), sys.argv[1:]); "
            "info = device_info(cfg.trainer.accelerator, cfg.trainer.devices); "
            "p, cl = resolve_auto(cfg); "
            "print(f'device: {info.describe()}'); "
            "print(f'auto picked: precision {p}, channels_last {cl}, benchmark '"
            " f'{cfg.trainer.benchmark}, dataset.on_device {cfg.dataset.on_device}'); "
            "print(f'CUDA initialised by the choice: {torch.cuda.is_initialized()}')"
        )
        status, out = self.run([sys.executable, "-c", code, *self.trainer()])
        lines = [line for line in out.splitlines() if line.startswith(("device:", "auto", "CUDA"))]
        ok = status == 0 and "CUDA initialised by the choice: False" in out
        return ok, "\n".join(lines) or out[-2000:]

    def smoke(self) -> tuple[bool, str]:
        model = "resnet18" if self.cuda else "simple_cnn"
        status, out, run = self.train(
            "smoke",
            f"model={model}",
            *self.trainer(),
            *self.tiny(model),
            self.val_size(),
            "trainer.max_epochs=2",
            "callbacks.gradcam.every_n_epochs=1",
            "callbacks.gradcam.indices=[0,1]",
        )
        expected = [
            "metrics.json",
            "predictions.npz",
            "run.json",
            "checkpoints/best.ckpt",
            "checkpoints/last.ckpt",
            "gradcam/epoch_001.png",
            "gradcam/test.png",
            "failures/failures.json",
            "failures/val_failures.json",
            "confusion_matrix.png",
            "reliability.png",
        ]
        missing = [name for name in expected if not (run / name).is_file()]
        summary = _test_line(out) + (f"\nmissing: {missing}" if missing else "")
        return status == 0 and not missing, summary

    def fp16_recipe(self) -> tuple[bool, str]:
        precision = "16-mixed" if self.cuda else "bf16-mixed"  # no fp16 AMP on Lightning's CPU
        status, out, run = self.train(
            "fp16_recipe",
            "experiment=fast_cifar10",
            "improvement=cutmix",
            "module.compile=true",
            *self.trainer(),
            f"trainer.precision={precision}",
            *self.tiny("fast_net"),
            self.val_size(),
            f"trainer.max_epochs={3 if self.cuda else 2}",
        )
        if status != 0 or not (run / "run.json").is_file():
            return False, out[-3000:]
        cfg = json.loads((run / "run.json").read_text())["config"]
        got = (
            cfg["trainer"]["precision"],
            cfg["module"]["compile"],
            "cutmix" in cfg["augmentation"],
            bool(cfg["callbacks"].get("weight_averaging")),
        )
        summary = f"{_test_line(out)}\nprecision, compile, cutmix, lookahead: {got}"
        return got == (precision, True, True, True), summary

    def stresses(self) -> tuple[bool, str]:
        knobs = (
            [
                "stress.adversarial.max_images=256",
                "stress.background.cam_images=256",
                "stress.corruptions.max_images=500",
            ]
            if self.cuda
            else [
                "stress.adversarial.max_images=16",
                "stress.adversarial.pgd_steps=2",
                "stress.background.cam_images=32",
                "stress.corruptions.severities=[3]",
                "stress.faithfulness.num_images=8",
                "stress.faithfulness.num_failures=4",
            ]
        )
        status, out, run = self.train(
            "stresses",
            "experiment=fast_cifar10",
            *self.trainer(),
            *self.tiny("fast_net"),
            self.val_size(),
            "trainer.max_epochs=1",
            f"stress=[{','.join(STRESSES)}]",
            *knobs,
        )
        path = run / "stress.json"
        if status != 0 or not path.is_file():
            return False, out[-3000:]
        stress = json.loads(path.read_text())
        where = {name: stress.get(f"{name}/device") for name in STRESSES}
        headline = {
            k: stress.get(k)
            for k in (
                "corruptions/mean_acc",
                "adversarial/pgd/eps8/acc",
                "calibration/ece_after",
                "background/surround_share",
            )
        }
        summary = f"ran on: {where}\n{json.dumps(headline)}"
        return all(device == self.device for device in where.values()), summary

    def syncs(self) -> tuple[bool, str]:
        args = [
            sys.executable,
            str(ROOT / "bench" / "sync_check.py"),
            "--device",
            self.device,
            f"dataset.root={self.data}",
            *([] if self.cuda else ["--tiny", "trainer=cpu", "dataset.pin_memory=false"]),
        ]
        status, out = self.run(args)
        lines = [line for line in out.splitlines() if line.startswith("syncs per step")]
        return status == 0, "\n".join(lines) or out[-3000:]

    def speed(self, cuda_steps: list[str], *overrides: str) -> Callable[[], tuple[bool, str]]:
        """bench/train_speed.py, ``cuda_steps`` (``--steps N --repeats R``) on CUDA."""

        def run() -> tuple[bool, str]:
            steps = cuda_steps if self.cuda else ["--steps", "8", "--repeats", "1"]
            args = [
                sys.executable,
                str(ROOT / "bench" / "train_speed.py"),
                "--device",
                self.device,
                *steps,
                f"dataset.root={self.data}",
                "dataset.val_size=0",
                *overrides,
            ]
            status, out = self.run(args)
            keep = ("ratio", "paired", "model=", "plain PyTorch", "cnnstress framework")
            lines = [line for line in out.splitlines() if line.startswith(keep)]
            lines.sort(key=lambda line: [line.startswith(k) for k in keep].index(True))
            return status == 0, "\n".join(lines) or out[-3000:]

        return run

    def deterministic(self) -> tuple[bool, str]:
        # the fast recipe on a GPU; the simple CNN on the CPU (the tiny recipe's rate of 1.5
        # is for batches of 1024, not 16)
        recipe = ["experiment=fast_cifar10"] if self.cuda else ["model=simple_cnn"]
        runs = []
        for name in ("deterministic_a", "deterministic_b"):
            status, out, run = self.train(
                name,
                *recipe,
                *self.trainer(),
                *self.tiny("fast_net" if self.cuda else "simple_cnn"),
                self.val_size(),
                "trainer.max_epochs=1",
                "trainer.deterministic=true",
                "seed=3",
                "callbacks.gradcam=null",
            )
            if status != 0:
                return False, out[-3000:]
            metrics = json.loads((run / "metrics.json").read_text())
            runs.append({k: v for k, v in metrics.items() if k not in TIMING})
        differ = sorted(k for k in runs[0] if runs[0][k] != runs[1].get(k))
        if not differ:
            return True, f"identical: {len(runs[0])} values (test/acc {runs[0]['test/acc']:.4f})"
        return False, "differ: " + ", ".join(
            f"{k} {runs[0][k]} != {runs[1].get(k)}" for k in differ
        )


def _test_line(out: str) -> str:
    return next((line.split(" - ", 1)[-1] for line in out.splitlines() if "test: acc" in line), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--data", help="a dataset.root (default: a synthetic zip made here)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench/gpu_check_out"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run with --device cpu for the CPU steps")
    data = Path(args.data) if args.data else out / "synthetic-cifar10.zip"
    if not args.data and not data.is_file():
        # CUDA: 19 batches of 1024 for the fast recipe's speed step; CPU: 20 batches of 16
        sizes = (2000, 200) if args.device == "cuda" else (32, 8)
        synthetic_zip(data, *sizes)
    check = Check(args.device, out, data.resolve())
    cpu = next((line.split(":", 1)[1].strip() for line in _lscpu() if "Model name" in line), "?")
    check.say(
        f"gpu_check --device {args.device}: torch {torch.__version__}, python "
        f"{platform.python_version()}, CPU {cpu}, {os.cpu_count()} cores, data {data}"
    )
    if args.device == "cuda":
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            check.say(
                f"GPU {i}: {props.name}, compute capability {props.major}.{props.minor}, "
                f"{props.total_memory / 2**30:.0f} GiB"
            )
    # The synthetic training split holds 19 batches of 1024: one epoch of warm-up + 12 steps.
    speed_fast = check.speed(
        ["--steps", "12", "--repeats", "1"], "experiment=fast_cifar10", *check.tiny("fast_net")
    )
    speed_resnet = check.speed(
        ["--steps", "100", "--repeats", "2"],
        "model=resnet18",
        *([] if check.cuda else ["dataset.batch_size=16"]),
    )
    for title, fn in (
        ("1. what auto picks", check.auto),
        ("2. smoke run with every callback", check.smoke),
        ("3. fp16 path: fast recipe + CutMix + lookahead + compile", check.fp16_recipe),
        (f"4. stresses on {args.device}", check.stresses),
        ("5. host-device syncs per training step", check.syncs),
        ("6a. train_speed fast_net (fast recipe): framework vs plain loop", speed_fast),
        ("6b. train_speed ResNet-18: framework vs plain loop", speed_resnet),
        ("7. two trainer.deterministic=true runs", check.deterministic),
    ):
        check.step(title, fn)
    total = time.perf_counter() - start
    check.say(f"\n== summary ({total / 60:.1f} min; log: {out / 'gpu_check.log'})")
    for title, ok, seconds, first in check.results:
        check.say(f"{'ok    ' if ok else 'FAILED'} {seconds:5.0f} s  {title}: {first}")
    raise SystemExit(0 if all(ok for _, ok, _, _ in check.results) else 1)


def _lscpu() -> list[str]:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return []


if __name__ == "__main__":
    main()
