"""run_stress end to end on a tiny trained run, composed from the real conf/stress files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cnnstress.app.train import run_training
from cnnstress.core.checkpoints import load_backbone
from cnnstress.core.config import build
from cnnstress.core.data.sources import load_split
from cnnstress.core.errors import ConfigError
from cnnstress.core.models import SimpleCNN
from cnnstress.stress import STRESS_SETTINGS, STRESSES, read_stress, run_stress
from cnnstress.stress.adversarial import AdversarialSettings
from cnnstress.stress.corruption_suite import CorruptionSettings, iter_corrupted
from cnnstress.stress.faithfulness import (
    randomized_copy,
    rank_correlations,
)
from tests.conftest import class_pattern_image

TYPES = ["gaussian_noise", "fog", "jpeg_compression", "speckle_noise"]  # speckle: an extra type


pytestmark = pytest.mark.usefixtures("one_thread")


def write_cifar101(root, n=30):
    """CIFAR-10.1 v6 layout: (N, 32, 32, 3) uint8 data and (N,) labels, same image family."""
    rng = random.Random(5)
    labels = np.arange(n) % 10
    data = torch.stack([class_pattern_image(int(c), rng) for c in labels])
    root.mkdir()
    np.save(root / "cifar10.1_v6_data.npy", data.permute(0, 2, 3, 1).numpy())
    np.save(root / "cifar10.1_v6_labels.npy", labels)
    return root


def test_run_stress_on_a_tiny_trained_run(make_config, tiny_cifar10_zip, tmp_path):
    shift_root = write_cifar101(tmp_path / "cifar10.1")
    cfg = make_config(
        f"dataset.root={tiny_cifar10_zip}",
        "dataset.val_size=32",
        "+stress=[corruptions,shift,adversarial,calibration,faithfulness]",
        f"stress.corruptions.types=[{','.join(TYPES)}]",
        "stress.corruptions.batch_size=40",
        f"stress.shift.root={shift_root}",
        "stress.adversarial.max_images=32",
        "stress.adversarial.pgd_steps=3",
        "stress.faithfulness.num_failures=4",
        "stress.faithfulness.num_images=8",
    )
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml", resolve=True)  # as a Hydra run does
    metrics = run_training(cfg)

    result = run_stress(run, list(cfg.stress), build(cfg.stress), "cpu")
    assert result == json.loads((run / "stress.json").read_text()) == read_stress(run)
    assert (run / "stress_corruptions.png").stat().st_size > 0
    assert (run / "stress_calibration.png").stat().st_size > 0

    clean = metrics["test/acc"]  # the best checkpoint, as load_backbone picks
    assert result["corruptions/clean_acc"] == pytest.approx(clean)
    assert result["corruptions/source"] == "generated" and result["corruptions/num_images"] == 80
    for name in TYPES:
        accs = [result[f"corruptions/{name}/{s}/acc"] for s in range(1, 6)]
        assert all(0 <= a <= 1 for a in accs)
        assert result[f"corruptions/{name}/mean_acc"] == pytest.approx(np.mean(accs))
    assert result["corruptions/num_types"] == 4
    # The benchmark mean leaves the extra type out; it is reported apart.
    benchmark = [result[f"corruptions/{t}/mean_acc"] for t in TYPES[:3]]
    assert result["corruptions/mean_acc"] == pytest.approx(np.mean(benchmark))
    assert result["corruptions/benchmark_types"] == 3 and result["corruptions/extra_types"] == 1
    assert result["corruptions/extra_mean_acc"] == result["corruptions/speckle_noise/mean_acc"]
    assert result["shift/cifar10.1/num_images"] == 30 and result["shift/cifar10.1/version"] == "v6"
    assert result["shift/cifar10.1/drop"] == pytest.approx(clean - result["shift/cifar10.1/acc"])
    assert result["adversarial/num_images"] == 32 and result["adversarial/pgd/steps"] == 3
    for attack in ("fgsm", "pgd"):
        accs = [result[f"adversarial/{attack}/eps{k}/acc"] for k in (1, 2, 8)]
        assert all(a <= result["adversarial/clean_acc"] + 1e-9 for a in accs)
    assert result["calibration/fit_split"] == "val" and result["calibration/fit_images"] == 32
    assert result["calibration/eval_images"] == 80 and result["calibration/temperature"] > 0
    assert result["calibration/nll_after"] <= result["calibration/nll_before"] + 0.5
    for key in ("ece_before", "ece_after"):
        assert 0 <= result[f"calibration/{key}"] <= 1
    assert result["faithfulness/method"] == "gradcam"
    assert result["faithfulness/target_layer"] == "block3"
    assert result["faithfulness/num_images"] == 8
    # The cascade runs from the head down to the target layer's block: fc, then block3.
    assert result["faithfulness/cascade_steps"] == 2
    assert "faithfulness/cascade/01/fc/spearman" in result
    assert "faithfulness/cascade/02/block3/undefined" in result
    assert (
        result["faithfulness/randomization_spearman"]
        == (result["faithfulness/cascade/02/block3/spearman"])
    )
    assert (run / "stress_faithfulness.png").stat().st_size > 0
    if result["faithfulness/num_failures"]:
        assert result["faithfulness/road/combined"] == pytest.approx(
            (result["faithfulness/road/lerf"] - result["faithfulness/road/morf"]) / 2, abs=1e-6
        )

    # Published-layout files made from the same generator reproduce the generated numbers.
    files = tmp_path / "cifar10c"
    files.mkdir()
    test = load_split(tiny_cifar10_zip, "cifar10", "test")
    for name in TYPES:
        blocks = [
            torch.cat(list(iter_corrupted(test.images, name, s, seed=0, batch_size=40)))
            for s in range(1, 6)
        ]
        np.save(files / f"{name}.npy", torch.cat(blocks).permute(0, 2, 3, 1).numpy())
    np.save(files / "labels.npy", np.tile(test.labels.numpy().astype(np.uint8), 5))
    settings = {"corruptions": CorruptionSettings(root=str(files), types="all")}
    from_files = run_stress(run, ["corruptions"], settings)
    assert from_files["corruptions/source"] == "files"
    for name in TYPES:
        for s in range(1, 6):
            key = f"corruptions/{name}/{s}/acc"
            assert from_files[key] == pytest.approx(result[key])
    assert "corruptions/seed" not in from_files  # stale keys of the stress re-run are dropped
    assert from_files["shift/cifar10.1/acc"] == result["shift/cifar10.1/acc"]  # others kept

    # Without a validation split, a fixed test half is fitted on and left out of the report.
    no_val = cfg.copy()
    no_val.dataset.val_size = 0
    net, _ = load_backbone(run)
    half = run_stress(run, ["calibration"], None, net=net, cfg=no_val)
    assert half["calibration/fit_split"] == "test_half"
    assert half["calibration/fit_images"] == half["calibration/eval_images"] == 40


def test_unknown_stresses_and_knobs_name_the_valid_ones(tmp_path):
    with pytest.raises(
        ConfigError, match="unknown stress 'noise'; valid stresses: corruptions, shift"
    ):
        run_stress(tmp_path, ["noise"], {})
    with pytest.raises(ConfigError, match="unknown stress 'adversarail'"):
        run_stress(tmp_path, ["adversarial"], {"adversarail": AdversarialSettings()})


@pytest.mark.parametrize("name", list(STRESSES))
def test_every_stress_config_file_composes_into_its_settings(make_config, name):
    extra = ["stress.shift.root=/data/cifar10.1"] if name == "shift" else []
    settings = build(make_config(f"stress=[{name}]", *extra).stress[name])
    assert type(settings) is STRESS_SETTINGS[name]


def test_randomisation_touches_only_the_listed_layers_and_identity_correlates_fully():
    net = SimpleCNN(width=4).eval()
    copy = randomized_copy(net, ["fc", "block3"], seed=0)
    before, after = dict(net.named_parameters()), dict(copy.named_parameters())
    for name, param in before.items():
        changed = not torch.equal(param, after[name])
        assert changed == name.startswith(("fc.", "block3.0.")), name
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    flat = np.zeros((3, 8, 8), np.float32)
    assert np.allclose(rank_correlations(maps, maps), 1.0)
    assert np.isnan(rank_correlations(maps, flat)).all()


def test_train_py_stress_option_writes_stress_json_at_the_end(
    make_config, tiny_cifar10_zip, tmp_path
):
    from cnnstress.app.train import run_training
    from cnnstress.stress import read_stress

    cfg = make_config(
        f"dataset.root={tiny_cifar10_zip}", "stress=[calibration,adversarial]",
        "stress.adversarial.max_images=16", "stress.adversarial.pgd_steps=2",
    )  # fmt: skip
    run_training(cfg)
    stress = read_stress(tmp_path / "run")
    assert stress["calibration/fit_split"] == "test_half"
    assert 0.0 <= stress["adversarial/pgd/eps8/acc"] <= stress["adversarial/clean_acc"]
    assert (tmp_path / "run" / "metrics.json").is_file()
