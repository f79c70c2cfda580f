"""``python tests/count_downloads.py <train.py overrides>``: train.py with torchvision's CIFAR10
replaced by a fake whose download writes a tiny CIFAR-10 root and appends a line to the file
``$CNNSTRESS_TEST_DOWNLOADS`` (tests/test_prepare_data.py). Lightning's DDP launcher re-runs this
script for the other ranks, so every process has the fake."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torchvision.datasets
from omegaconf import DictConfig

from cnnstress.app.configs import register_configs
from cnnstress.core.errors import run_hydra_task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class CountingCIFAR10:
    """torchvision's ``CIFAR10(root, train, download)`` on a tiny generated root."""

    base_folder = "cifar-10-batches-py"

    def __init__(self, root: str, train: bool = True, download: bool = False, **_: object) -> None:
        folder = Path(root) / self.base_folder
        if download and not folder.is_dir():
            with Path(os.environ["CNNSTRESS_TEST_DOWNLOADS"]).open("a") as log:
                log.write(f"{os.getpid()}\n")
            time.sleep(2)  # slow enough that a process reading without waiting finds nothing
            part = folder.with_name(f"{folder.name}.part{os.getpid()}")
            part.mkdir(parents=True)
            rng = np.random.default_rng(0)
            for split, n in (("train", 160), ("test", 80)):
                np.save(part / f"{split}_x.npy", rng.integers(0, 256, (n, 32, 32, 3), np.uint8))
                np.save(part / f"{split}_y.npy", np.arange(n) % 10)
            part.rename(folder)
        if not folder.is_dir():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True")
        split = "train" if train else "test"
        self.data = np.load(folder / f"{split}_x.npy")
        self.targets = np.load(folder / f"{split}_y.npy").tolist()


torchvision.datasets.CIFAR10 = CountingCIFAR10


@hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="train")
def main(cfg: DictConfig) -> float:
    """train.py's task, in this script (which Lightning then re-runs for the other ranks)."""
    from cnnstress.app.train import run_training

    return run_hydra_task(run_training, cfg).get("test/acc", float("nan"))


if __name__ == "__main__":
    os.environ.setdefault("CNNSTRESS_ROOT", str(ROOT))
    register_configs()
    main()
