"""Train one model: `python train.py model=simple_cnn dataset=cifar10 improvement=baseline`."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnnstress.app.configs import main_precheck, register_configs
from cnnstress.core.errors import run_hydra_task

os.environ.setdefault("CNNSTRESS_ROOT", str(Path(__file__).resolve().parent))
register_configs()  # at import: DDP and SLURM jobs import this file too


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train, test and write the run directory; return test accuracy (for sweepers)."""
    from cnnstress.app.train import run_training

    return run_hydra_task(run_training, cfg).get("test/acc", float("nan"))


if __name__ == "__main__":
    main_precheck("train")
    main()
