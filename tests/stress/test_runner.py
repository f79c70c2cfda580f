"""evaluate_run end to end on a tiny trained run, composed from the real conf/stress files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cnnstress.app.train import run_training
from cnnstress.core.checkpoints import load_backbone
from cnnstress.core.config import build
from cnnstress.core.data.sources import load_split
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.core.models import SimpleCNN
from cnnstress.stress import STRESS_SETTINGS, STRESSES, evaluate_run, read_stored
from cnnstress.stress.adversarial import AdversarialSettings
from cnnstress.stress.corruption_suite import CorruptionSettings, iter_corrupted
from cnnstress.stress.faithfulness import (
    randomized_copy,
    rank_correlations,
)
from cnnstress.stress.results import settings_record
from tests.conftest import class_pattern_image
from tests.stress_rows import has, row, value

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

    assert {e.computed_by for e in read_stored(run).values()} == {"train.py"}  # at its end
    for figure in run.glob("stress_*.png"):
        figure.unlink()
    settings = build(cfg.stress)
    evaluated = evaluate_run(run, settings, "cpu", computed_by="analyze.py")
    assert list(evaluated) == ["corruptions", "shift", "adversarial", "calibration",
                               "faithfulness"]  # STRESSES order  # fmt: skip
    stored = read_stored(run)
    assert stored == {name: entry for name, (entry, _) in evaluated.items()}
    assert not list(run.glob("stress_*.png"))  # evaluate_run draws nothing
    for name, entry in stored.items():
        assert entry.settings == settings_record(settings[name])
        assert entry.computed_by == "analyze.py" and entry.device == "cpu"
        assert entry.checkpoint == "checkpoints/best.ckpt"  # the tested one (val split)
        assert len(entry.time) == len("2024-01-01T00:00:00+00:00")
    result = {name: r for name, (_, r) in evaluated.items()}

    clean = metrics["test/acc"]  # the best checkpoint, as load_backbone picks
    corr = result["corruptions"]
    assert value(corr, "clean_acc") == pytest.approx(clean)
    assert corr.info["source"] == "generated" and corr.info["num_images"] == 80
    assert corr.info["seed"] == 0 and corr.info["seconds"] > 0
    for name in TYPES:
        accs = [value(corr, "acc", corruption=name, severity=s) for s in range(1, 6)]
        assert all(0 <= a <= 1 for a in accs)
        assert value(corr, "mean_acc", corruption=name) == pytest.approx(np.mean(accs))
    assert corr.info["num_types"] == 4
    # The benchmark mean leaves the extra type out; it is reported apart.
    benchmark = [value(corr, "mean_acc", corruption=t) for t in TYPES[:3]]
    assert value(corr, "mean_acc", types="benchmark") == pytest.approx(np.mean(benchmark))
    assert corr.info["benchmark_types"] == 3 and corr.info["extra_types"] == 1
    extra = value(corr, "mean_acc", types="extra")
    assert extra == pytest.approx(value(corr, "mean_acc", corruption="speckle_noise"))
    headline = {(m.metric, m.where) for m in corr.measurements if m.headline}
    assert headline == {("clean_acc", ()), ("mean_acc", (("types", "benchmark"),)),
                        ("mean_acc", (("types", "extra"),))}  # fmt: skip

    shift = result["shift"]
    assert shift.info == {"num_images": 30, "version": "v6"}
    drop = row(shift, "drop", dataset="cifar10.1")
    assert drop.headline and row(shift, "acc", dataset="cifar10.1").headline
    assert drop.value == pytest.approx(clean - value(shift, "acc", dataset="cifar10.1"))
    assert value(shift, "clean_acc") == pytest.approx(clean)

    adv = result["adversarial"]
    assert adv.info == {"num_images": 32, "pgd_steps": 3}
    for attack in ("fgsm", "pgd"):
        for k in (1, 2, 8):
            acc = row(adv, "acc", attack=attack, eps=k / 255)  # the radius as a fraction of 1
            assert acc.headline and acc.value <= value(adv, "clean_acc") + 1e-9

    cal = result["calibration"]
    assert cal.info == {"fit_split": "val", "fit_images": 32, "eval_images": 80}
    assert value(cal, "temperature") > 0
    assert value(cal, "nll_after") <= value(cal, "nll_before") + 0.5
    for metric in ("ece_before", "ece_after"):
        assert 0 <= value(cal, metric) <= 1
    assert value(cal, "acc") == pytest.approx(clean)

    faith = result["faithfulness"]
    assert faith.info["method"] == "gradcam" and faith.info["target_layer"] == "block3"
    assert faith.info["num_images"] == 8
    # The cascade runs from the head down to the target layer's block: fc, then block3.
    assert faith.info["cascade_steps"] == 2
    assert has(faith, "spearman", step=1, block="fc")
    assert has(faith, "undefined", step=2, block="block3")
    last = value(faith, "spearman", step=2, block="block3")
    assert value(faith, "randomization_spearman") == last
    assert value(faith, "randomization_undefined") == value(
        faith, "undefined", step=2, block="block3"
    )
    if faith.info["num_failures"]:
        lerf, morf = value(faith, "road", order="lerf"), value(faith, "road", order="morf")
        assert value(faith, "road", order="combined") == pytest.approx((lerf - morf) / 2, abs=1e-6)

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
    from_files = CorruptionSettings(root=str(files), types="all")
    evaluate_run(run, {"corruptions": from_files}, computed_by="analyze.py")
    now = read_stored(run)
    assert now["corruptions"].info["source"] == "files"
    assert now["corruptions"].settings["root"] == str(files)
    for name in TYPES:
        for s in range(1, 6):
            where = {"corruption": name, "severity": s}
            assert value(now["corruptions"], "acc", **where) == pytest.approx(
                value(corr, "acc", **where)
            )
    assert "seed" not in now["corruptions"].info  # the entry is replaced whole
    assert now["shift"] == stored["shift"]  # the other stresses' entries are kept

    # Without a validation split, a fixed test half is fitted on and left out of the report;
    # a backbone passed in has no known checkpoint file.
    no_val = cfg.copy()
    no_val.dataset.val_size = 0
    net, _ = load_backbone(run)
    half = evaluate_run(run, {"calibration": None}, net=net, cfg=no_val, computed_by="test")
    entry, cal_half = half["calibration"]
    assert cal_half.info == {"fit_split": "test_half", "fit_images": 40, "eval_images": 40}
    assert entry.settings == settings_record(STRESS_SETTINGS["calibration"]())  # the defaults
    assert entry.checkpoint == "" and read_stored(run)["calibration"] == entry


def test_unknown_stresses_and_knobs_name_the_valid_ones(tmp_path):
    with pytest.raises(
        ConfigError, match="unknown stress 'noise'; valid stresses: corruptions, shift"
    ):
        evaluate_run(tmp_path, {"noise": None}, computed_by="test")
    with pytest.raises(ConfigError, match="unknown stress 'adversarail'"):
        evaluate_run(tmp_path, {"adversarail": AdversarialSettings()}, computed_by="test")
    with pytest.raises(ConfigError, match=r"stress\.calibration must be a CalibrationSettings"):
        evaluate_run(tmp_path, {"calibration": AdversarialSettings()}, computed_by="test")
    with pytest.raises(ConfigError, match=r"stress\.shift\.root is not set"):
        evaluate_run(tmp_path, {"shift": None}, computed_by="test")  # checked before any work
    with pytest.raises(DataError):  # no run here: nothing to evaluate, nothing written
        evaluate_run(tmp_path, {"calibration": None}, computed_by="test")
    assert not (tmp_path / "stress.json").exists()


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


def test_train_py_stress_option_writes_stress_json_at_the_end(trained_run):
    run = trained_run  # stress=[calibration,adversarial] at the end of training
    stored = read_stored(run)
    assert list(stored) == ["adversarial", "calibration"]
    for entry in stored.values():
        assert entry.computed_by == "train.py" and entry.device == "cpu"
        assert entry.checkpoint == "checkpoints/last.ckpt"  # no validation split: the last
    assert stored["calibration"].info["fit_split"] == "test_half"
    assert stored["adversarial"].settings["pgd_steps"] == 2
    assert stored["adversarial"].settings["max_images"] == 16
    acc = value(stored["adversarial"], "acc", attack="pgd", eps=8 / 255)
    assert 0.0 <= acc <= value(stored["adversarial"], "clean_acc")
    assert (run / "metrics.json").is_file()
    assert (run / "stress_calibration.png").stat().st_size > 0
