"""Host-device synchronisations per training step, counted on real training runs.

    python bench/sync_check.py --device cuda dataset.root=DATA   # torch.cuda.set_sync_debug_mode
    python bench/sync_check.py --device cpu dataset.root=DATA    # cnnstress.train.sync_audit

On CUDA, PyTorch itself reports every synchronising call while ``set_sync_debug_mode("warn")``
is on (blocking copies, ``.item()``, ``nonzero``, stream synchronisations); this script turns it
on for the training steps only (every step but the first of each epoch, as
:class:`~cnnstress.train.sync_audit.SyncAuditCallback` counts them) and counts the warnings.
On the CPU,
where PyTorch has no such mode, the TorchFunctionMode audit of cnnstress counts the same
operations. Two configurations: the baseline (simple CNN, crop + flip) and the fast recipe with
CutMix and colour jitter (lookahead included). Extra arguments are Hydra overrides of both.
Prints one line per configuration; exit status 1 when a count is not 0.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cnnstress.app.configs import compose_config
from cnnstress.app.train import run_training
from cnnstress.train.sync_audit import SyncAuditCallback

CONFIGS = {
    "baseline": ["model=simple_cnn", "trainer.max_epochs=2"],
    "fast recipe + cutmix + colour jitter": [
        "experiment=fast_cifar10", "trainer.max_epochs=2",
        "augmentation=[crop,flip,color_jitter,cutmix]",
    ],
}  # fmt: skip
# --tiny: narrow nets and batches of 16, for a few hundred images on a CPU
TINY = {
    "baseline": ["model.net.width=8", "dataset.batch_size=16"],
    "fast recipe + cutmix + colour jitter": [
        "model.net.widths=[8,16,16]", "model.net.init_images=64", "dataset.batch_size=16",
        "callbacks.weight_averaging.every_n_steps=2",
    ],
}  # fmt: skip
SYNC_WARNING = "synchronizing"  # "called a synchronizing CUDA operation"


class CudaSyncCount(L.Callback):
    """Count the warnings of ``torch.cuda.set_sync_debug_mode("warn")`` per training step."""

    last: CudaSyncCount | None = None

    def __init__(self) -> None:
        self.steps = 0
        self.places: Counter[str] = Counter()
        self._counting = False
        self._catcher: Any = None
        self._records: list[warnings.WarningMessage] = []
        CudaSyncCount.last = self

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._catcher = warnings.catch_warnings(record=True)
            self._records = self._catcher.__enter__()
            warnings.simplefilter("always")

    def _window(self, counting: bool) -> None:
        if self._counting:  # a window closes: keep its synchronisation warnings
            for record in self._records:
                if SYNC_WARNING in str(record.message):
                    self.places[f"{Path(record.filename).name}:{record.lineno}"] += 1
        self._records.clear()
        self._counting = counting
        torch.cuda.set_sync_debug_mode("warn" if counting else "default")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if self._counting:
            self.steps += 1
        self._window(batch_idx + 1 < trainer.num_training_batches)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window(False)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._catcher is not None:
            self._window(False)
            self._catcher.__exit__(None, None, None)
            self._catcher = None


def count(device: str, overrides: list[str], out: Path) -> tuple[float, int, dict[str, int]]:
    """``(syncs per step, steps, syncs per place)`` of one training run."""
    callback = (
        "cnnstress.train.sync_audit.SyncAuditCallback"
        if device == "cpu"
        else f"{__name__}.CudaSyncCount"
    )
    accelerator = "cpu" if device == "cpu" else "gpu"
    cfg = compose_config(
        out,
        [*overrides, f"trainer.accelerator={accelerator}", "trainer.enable_progress_bar=false",
         "dataset.val_size=0", "callbacks.gradcam=null", f"+callbacks.sync._target_={callback}"],
    )  # fmt: skip
    run_training(cfg)
    if device == "cpu":
        report = SyncAuditCallback.last.report
        return report.per_step, report.steps, report.by_place
    counter = CudaSyncCount.last
    total = sum(counter.places.values())
    return total / max(counter.steps, 1), counter.steps, dict(counter.places.most_common())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="narrow nets, batches of 16")
    args, overrides = parser.parse_known_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, config) in enumerate(CONFIGS.items()):
            config = [*config, *(TINY[name] if args.tiny else []), *overrides]
            per_step, steps, places = count(args.device, config, Path(tmp) / str(i))
            how = "torch.cuda.set_sync_debug_mode" if args.device == "cuda" else "sync audit"
            where = f"; at {places}" if places else ""
            print(f"syncs per step, {name}: {per_step:.2f} over {steps} steps ({how}){where}")
            failed |= per_step != 0
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
