"""Shared fixtures: generated CIFAR-layout zips, real-data subsets, and real composed configs."""

from __future__ import annotations

import os
import random
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from torchvision.io import encode_png

from cnnstress.app.configs import compose_config
from cnnstress.core.data.classes import CIFAR10_CLASSES, CIFAR100_CLASSES

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
DATA_DIR = Path(os.environ.get("CNNSTRESS_DATA", ROOT.parent / "shared" / "datasets"))
REAL_CIFAR10_ZIP = DATA_DIR / "cifar10-jpeg.zip"
NO_REAL_DATA = f"real CIFAR-10 zip not found at {REAL_CIFAR10_ZIP} (set CNNSTRESS_DATA)"

# Settings that make a training run take a few seconds on 2 CPU cores.
TINY_RUN = (
    "model=simple_cnn",
    "model.net.width=8",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=64",
    # the tiny zips have 160 training images: no 5,000-image validation split
    "dataset.val_size=0",
    "dataset.pin_memory=false",
)


def class_pattern_image(label: int, rng: random.Random) -> torch.Tensor:
    """A 32x32 RGB uint8 image whose colour and stripe direction depend on ``label``."""
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    base = torch.tensor([(label * 37) % 256, (label * 91) % 256, (label * 151) % 256])
    image = base.view(3, 1, 1).float().expand(3, 32, 32).clone()
    stripes = (torch.arange(32) // (2 + label % 4)) % 2 * 60.0
    image += stripes.view(1, 1, 32) if label % 2 else stripes.view(1, 32, 1)
    image += torch.randn(3, 32, 32, generator=gen) * 20
    return image.clamp(0, 255).to(torch.uint8)


def make_image_zip(
    path: Path, classes: Sequence[str], per_class: dict[str, int], seed: int = 0
) -> Path:
    """Write a zip of ``<split>/<class>/<n>.png`` with ``per_class[split]`` images per class."""
    rng = random.Random(seed)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for split, count in per_class.items():
            for label, name in enumerate(classes):
                for i in range(count):
                    png = encode_png(class_pattern_image(label, rng)).numpy().tobytes()
                    archive.writestr(f"{split}/{name}/{i:04d}.png", png)
    return path


@pytest.fixture(scope="session")
def tiny_cifar10_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated CIFAR-10-layout zip: 16 train and 8 test images per class (160 / 80)."""
    path = tmp_path_factory.mktemp("data") / "tiny-cifar10.zip"
    return make_image_zip(path, CIFAR10_CLASSES, {"train": 16, "test": 8})


@pytest.fixture(scope="session")
def tiny_cifar100_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated CIFAR-100-layout zip with the 100 official class names: 2 train, 1 test each."""
    path = tmp_path_factory.mktemp("data") / "tiny-cifar100.zip"
    return make_image_zip(path, CIFAR100_CLASSES, {"train": 2, "test": 1})


def subset_zip(source: Path, target: Path, per_class: dict[str, int]) -> Path:
    """Copy the first ``per_class[split]`` files of every class of ``source`` into ``target``."""
    kept: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            parts = info.filename.split("/")
            if len(parts) != 3 or parts[0] not in per_class:
                continue
            key = (parts[0], parts[1])
            if kept.get(key, 0) < per_class[parts[0]]:
                kept[key] = kept.get(key, 0) + 1
                dst.writestr(info, src.read(info))
    return target


@pytest.fixture(scope="session")
def real_cifar10_subset_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real CIFAR-10 images: 300 train and 100 test per class (3,000 / 1,000)."""
    if not REAL_CIFAR10_ZIP.is_file():
        pytest.skip(NO_REAL_DATA)
    target = tmp_path_factory.mktemp("data") / "cifar10-subset.zip"
    return subset_zip(REAL_CIFAR10_ZIP, target, {"train": 300, "test": 100})


def compose_train_config(
    output_dir: Path,
    overrides: Sequence[str] = (),
    config_name: str = "train",
    keep_hydra: bool = False,
) -> DictConfig:
    """Compose the real ``conf/`` like the entry points do (see ``cnnstress.core.config``)."""
    return compose_config(output_dir, overrides, config_name, keep_hydra)


def prepared(cfg: DictConfig) -> DictConfig:
    """``cfg`` after :func:`cnnstress.train.training.prepare_run` (every ``auto`` resolved), for
    tests that build a Trainer or a module from it."""
    from cnnstress.train.training import prepare_run

    assert prepare_run(cfg) is None, "the test's run directory already holds a finished run"
    return cfg


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a config with the tiny-run settings plus ``overrides``, output in ``tmp_path``."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        out = output_dir or tmp_path / "run"
        out.mkdir(parents=True, exist_ok=True)
        return compose_train_config(out, [*TINY_RUN, *overrides])

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny-tensor tests: avoids spin-wait stalls when the
    two cores are shared with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
