"""``python train.py``: prepare a run, train it, then stress it as configured."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from torchvision.io import ImageReadMode, read_image

from cnnstress.core.config import build
from cnnstress.core.run_dir import RunDir
from cnnstress.stress import run_stress
from cnnstress.train.precision import resolve_accelerator
from cnnstress.train.training import prepare_run, train


def run_training(cfg: DictConfig) -> dict[str, float]:
    """Prepare the run (:func:`~cnnstress.train.training.prepare_run`), train it unless a
    finished run of this very config is there, then run ``cfg.stress`` on it (after
    ``metrics.json``: a stress error never un-finishes the run)."""
    if (done := prepare_run(cfg)) is not None:
        return done
    metrics = train(cfg)
    if cfg.stress and rank_zero_only.rank == 0:
        run = RunDir(cfg.paths.output_dir)
        settings = {name: build(node) for name, node in cfg.stress.items()}
        run_stress(run.path, list(settings), settings, stress_device(cfg))
        log_stress_figures(run)
    return metrics


def stress_device(cfg: DictConfig) -> str:
    """The device the stresses run on: the run's accelerator when it is CUDA, else the CPU."""
    return "cuda" if resolve_accelerator(cfg.trainer.accelerator) == "cuda" else "cpu"


def log_stress_figures(run: RunDir, step: int = 0) -> None:
    """Add every stress figure of the run to its TensorBoard log as ``stress/<name>``."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(run.tensorboard)) as writer:
        for path in run.stress_figures():
            image = read_image(str(path), ImageReadMode.RGB)  # (3, H, W) uint8
            writer.add_image(f"stress/{path.stem}", image, step)
