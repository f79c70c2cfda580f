"""Train one model: `python train.py model=simple_cnn dataset=cifar10 improvement=baseline`."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnnstress.errors import exit_on_user_error, run_hydra_task
from cnnstress.overrides import check_group_choices
from cnnstress.resolvers import register_resolvers

os.environ.setdefault("CNNSTRESS_ROOT", str(Path(__file__).resolve().parent))
register_resolvers()  # at import: DDP and SLURM jobs import this file too


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train, test and write the run directory; return test accuracy (for sweepers)."""
    from cnnstress.training import train

    return run_hydra_task(train, cfg).get("test/acc", float("nan"))


if __name__ == "__main__":
    exit_on_user_error(check_group_choices, sys.argv[1:])
    main()
