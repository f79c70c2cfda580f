"""Known label errors of the CIFAR test sets: the shipped lists, official test indices from file
names, and label errors in the failures, the clean accuracies and the Grad-CAM grids."""

from __future__ import annotations

import json
import logging
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torchvision.io import decode_image, encode_png, read_image

from cnnstress.app.train import run_training
from cnnstress.core.data import CIFARDataModule
from cnnstress.core.data.classes import CIFAR10_CLASSES, CIFAR100_CLASSES, DATASET_CLASSES
from cnnstress.core.data.datamodule import DatasetConfig, load_label_errors, load_split
from cnnstress.core.errors import ConfigError
from cnnstress.core.plots.images import FRAME_COLOR
from cnnstress.core.run_dir import read_metrics, read_predictions, write_predictions
from cnnstress.train.callbacks import GradCAMGrids, HighConfidenceFailures
from cnnstress.train.training import build_datamodule, build_module, build_trainer
from tests.conftest import DATA_DIR, NO_REAL_DATA, REAL_CIFAR10_ZIP, class_pattern_image, prepared
from tests.train.callbacks.test_failures import constant_model_trainer

LABELS_DIR = DATA_DIR / "label-errors"
FIRST20_CIFAR100 = DATA_DIR / "cifar100-test-first20.zip"


def official_labels(dataset: str) -> np.ndarray:
    path = LABELS_DIR / f"{dataset}_test_set_original_labels.npy"
    if not path.is_file():
        pytest.skip(f"official {dataset} test labels not found at {path} (set CNNSTRESS_DATA)")
    return np.load(path).astype(np.int64)


# -- the shipped lists ----------------------------------------------------------------------


def test_shipped_lists_give_the_papers_counts():
    cifar10, cifar100 = load_label_errors("cifar10"), load_label_errors("cifar100")
    assert (cifar10.count, cifar10.count_with_true_class) == (54, 18)
    assert (cifar100.count, cifar100.count_with_true_class) == (585, 318)
    assert (cifar10.checked_ids.size, cifar100.checked_ids.size) == (275, 2235)
    assert load_label_errors("svhn") is None
    with pytest.raises(ValueError, match="read-only"):
        cifar10.ids[0] = 1  # the cached lists are shared


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_shipped_given_labels_are_the_official_labels(dataset):
    labels = official_labels(dataset)
    errors = load_label_errors(dataset)
    np.testing.assert_array_equal(errors.checked_given, labels[errors.checked_ids])
    np.testing.assert_array_equal(errors.given, labels[errors.ids])
    assert errors.label_mismatches(np.arange(10_000), labels) == 0
    assert (errors.true_class != errors.given).all()


def test_lookup_of_hand_checked_images():
    cifar10 = load_label_errors("cifar10")
    # 165: 1 of 5 chose "deer" (error, workers split); 1227: 4 of 5 chose "dog" over "cat";
    # 2405: all 5 chose "frog" over "cat"; 20: 3 of 5 chose the given "horse"; 0: never flagged.
    ids = np.array([165, 1227, 2405, 20, 0])
    assert cifar10.is_error(ids).tolist() == [True, True, True, False, False]
    assert cifar10.likely_true(ids).tolist() == [-1, 5, 6, -1, -1]
    cifar100 = load_label_errors("cifar100")
    # 5: tulip, 2 vs 2 (error, no agreement); 33: turtle, 3 chose "shark" (73); 2: seal, 4 agree.
    ids = np.array([5, 33, 2])
    assert cifar100.is_error(ids).tolist() == [True, True, False]
    assert cifar100.likely_true(ids).tolist() == [-1, 73, -1]


# -- planted predictions (CIFAR-10): id -> (official label, planted prediction) --------------
PLANTED10 = {
    0: (3, 3),  # cat, right
    1: (8, 0),  # ship -> airplane: failure
    3: (0, 0),  # airplane, right
    4: (6, 2),  # frog -> bird: failure
    20: (7, 5),  # horse -> dog: failure; checked by the workers, label confirmed
    165: (4, 2),  # deer -> bird: failure; label error, workers did not agree
    1227: (3, 5),  # cat -> dog: failure; label error, likely true dog: the model is right
    2405: (3, 6),  # cat -> frog: failure; label error, likely true frog: the model is right
    6877: (0, 0),  # airplane, right by the label; label error, likely true ship: wrong
    792: (3, 3),  # cat, right by the label; label error, workers did not agree
}
# By hand: 6 failures (1, 4, 20, 165, 1227, 2405), 3 of them label errors (165, 1227, 2405).
# acc 4/10. Clean (errors 165, 1227, 2405, 6877, 792 out): 0, 1, 3, 4, 20 -> 2/5 right.
# Corrected (+1227 as dog, 2405 as frog, 6877 as ship): 8 images, right 0, 3, 1227, 2405: 4/8.
PLANTED10_FAILURES = [1, 4, 20, 165, 1227, 2405]  # pred 0 has one neighbour: most confident


def test_clean_accuracy_of_planted_predictions():
    ids = np.array(list(PLANTED10))
    target, pred = np.array(list(PLANTED10.values())).T
    clean = load_label_errors("cifar10").clean_accuracy(ids, target, pred)
    assert (clean.acc_clean, clean.num_clean) == (0.4, 5)
    assert (clean.acc_corrected, clean.num_corrected) == (0.5, 8)
    empty = load_label_errors("cifar10").clean_accuracy(np.array([165]), [4], [4])
    assert np.isnan(empty.acc_clean) and empty.num_clean == 0 and empty.num_corrected == 0


# -- official indices from file names -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CIFAR10_ZIP.is_file(), reason=NO_REAL_DATA)
def test_shared_cifar10_zip_loads_in_official_order():
    labels = official_labels("cifar10")
    test = load_split(REAL_CIFAR10_ZIP, "cifar10", "test")
    assert torch.equal(test.ids, torch.arange(10_000))
    np.testing.assert_array_equal(test.labels.numpy(), labels)
    with zipfile.ZipFile(REAL_CIFAR10_ZIP) as archive:
        names = {Path(n).stem: n for n in archive.namelist() if n.startswith("test/")}
        for official in (0, 1, 2405, 6877, 9999):
            name = names[f"{official:05d}"]
            assert name.split("/")[1] == CIFAR10_CLASSES[labels[official]]
            data = torch.frombuffer(bytearray(archive.read(name)), dtype=torch.uint8)
            image = test.images[test.rows(torch.tensor([official]))[0]]
            assert torch.equal(image, decode_image(data))


@pytest.mark.skipif(not REAL_CIFAR10_ZIP.is_file(), reason=NO_REAL_DATA)
def test_real_subset_keeps_official_indices(real_cifar10_subset_zip):
    labels = official_labels("cifar10")
    test = load_split(real_cifar10_subset_zip, "cifar10", "test")
    ids = test.ids.numpy()
    assert ids.size == 1000 and (np.diff(ids) > 0).all() and ids.max() > 1000
    np.testing.assert_array_equal(test.labels.numpy(), labels[ids])
    assert load_split(real_cifar10_subset_zip, "cifar10", "train").ids is None


def test_cifar100_first20_fixture_image_0_is_mountain():
    if not FIRST20_CIFAR100.is_file():
        pytest.skip(f"{FIRST20_CIFAR100} not found (set CNNSTRESS_DATA)")
    test = load_split(FIRST20_CIFAR100, "cifar100", "test")  # no train/, 17 of 100 classes
    assert torch.equal(test.ids, torch.arange(20))
    assert CIFAR100_CLASSES[int(test.labels[0])] == "mountain" and int(test.labels[0]) == 49
    assert test.labels[:5].tolist() == [49, 33, 72, 51, 71]
    np.testing.assert_array_equal(test.labels.numpy(), official_labels("cifar100")[:20])
    errors = load_label_errors("cifar100")
    assert np.flatnonzero(errors.is_error(test.ids.numpy())).tolist() == [5]  # tulip / bee


def planted_image(pred: int, label: int, official: int) -> torch.Tensor:
    """Flat image whose red value is the planted prediction (see :class:`PlantedNet`)."""
    image = torch.empty(3, 32, 32, dtype=torch.uint8)
    image[0], image[1], image[2] = pred, 40 + label, official % 256
    return image


def make_official_zip(
    path: Path, dataset: str, planted: dict[int, tuple[int, int]], train_per_class: int = 2
) -> Path:
    """Zip with a generated train split (per-class counters) and test files named by official
    index, ``planted`` mapping official index -> (label, planted prediction)."""
    classes = DATASET_CLASSES[dataset]
    rng = random.Random(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for label, name in enumerate(classes):
            for i in range(train_per_class):
                png = encode_png(class_pattern_image(label, rng)).numpy().tobytes()
                archive.writestr(f"train/{name}/{i:04d}.png", png)
        for official, (label, pred) in planted.items():
            png = encode_png(planted_image(pred, label, official)).numpy().tobytes()
            archive.writestr(f"test/{classes[label]}/{official:05d}.png", png)
    return path


def test_generated_test_split_is_ordered_by_official_index(tmp_path):
    root = make_official_zip(tmp_path / "o.zip", "cifar10", PLANTED10)
    test = load_split(root, "cifar10", "test")
    assert test.ids.tolist() == sorted(PLANTED10)
    assert test.labels.tolist() == [PLANTED10[i][0] for i in sorted(PLANTED10)]
    assert test.images[:, 0, 0, 0].tolist() == [PLANTED10[i][1] for i in sorted(PLANTED10)]
    rows = test.rows(np.array([2405, 0]))
    assert rows.tolist() == [sorted(PLANTED10).index(2405), 0]
    assert test.contains(np.array([2405, 2, 10_000])).tolist() == [True, False, False]
    with pytest.raises(IndexError, match=r"\[2\]"):
        test.rows(np.array([0, 2]))


def test_folder_without_train_split_has_the_same_official_indices(tmp_path):
    root = make_official_zip(tmp_path / "o.zip", "cifar10", PLANTED10)
    with zipfile.ZipFile(root) as archive:
        archive.extractall(tmp_path / "tree", [n for n in archive.namelist() if n[:5] == "test/"])
    from_folder = load_split(tmp_path / "tree", "cifar10", "test")  # 6 of 10 classes, no train/
    from_zip = load_split(root, "cifar10", "test")
    assert torch.equal(from_folder.ids, from_zip.ids)
    assert torch.equal(from_folder.images, from_zip.images)
    assert torch.equal(from_folder.labels, from_zip.labels)


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"cat": ["0000", "0001"], "dog": ["0000"]}, "1 file numbers repeat"),
        ({"cat": ["00000", "10000"]}, "file number 10000 is not below"),
        ({"cat": ["00000", "img_1"]}, "is not named by an integer"),
        ({"cat": ["00000"], "airplane": ["00020"]}, "1 images have labels other than the official"),
    ],
)
def test_files_not_named_by_official_indices_are_positions(tmp_path, caplog, files, reason):
    # Without official indices every class must be present: the other classes get one file
    # each, named by an index the workers never checked (so its label cannot disagree).
    checked = set(load_label_errors("cifar10").checked_ids.tolist())
    fillers = (i for i in range(5000, 10_000) if i not in checked)
    files = files | {n: [f"{next(fillers):05d}"] for n in CIFAR10_CLASSES if n not in files}
    path = tmp_path / "data.zip"
    png = encode_png(planted_image(0, 0, 0)).numpy().tobytes()
    with zipfile.ZipFile(path, "w") as archive:
        for label_name, stems in files.items():
            for stem in stems:
                archive.writestr(f"test/{label_name}/{stem}.png", png)
    with caplog.at_level(logging.WARNING, logger="cnnstress.core.data.sources"):
        test = load_split(path, "cifar10", "test")
        load_split(path, "cifar10", "test")  # cached: no second message
    assert test.ids is None
    assert torch.equal(test.rows(np.array([1, 0])), torch.tensor([1, 0]))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "indexed by position" in messages[0] and "label-error features are off" in messages[0]
    assert reason in messages[0]


def test_test_batches_carry_official_indices_validation_positions(tmp_path):
    root = make_official_zip(tmp_path / "o.zip", "cifar10", PLANTED10)
    config = DatasetConfig(name="cifar10", root=str(root), num_classes=10, mean=[0.5] * 3,
                           std=[0.25] * 3, val_size=4, batch_size=2)  # fmt: skip
    dm = CIFARDataModule(config)
    dm.setup()
    assert dm.official_test_index and dm.test_set.official_index
    batch = next(iter(dm.test_dataloader()))
    assert batch["index"].tolist() == sorted(PLANTED10)
    assert torch.equal(dm.test_set.images[dm.test_set.rows(batch["index"])], batch["image"])
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val["index"], dm.val_set.indices)  # positions in the train split
    assert not dm.val_set.official_index
    assert dm.label_errors("test") is load_label_errors("cifar10")
    assert dm.label_errors("val") is None and dm.label_errors("train") is None


def test_predictions_file_records_whether_the_index_is_official(tmp_path):
    index, target, probs = np.array([3, 20]), np.array([0, 7]), np.full((2, 10), 0.1)
    write_predictions(tmp_path, index, target, probs, official_index=True)
    assert read_predictions(tmp_path)["official_index"].item() is True
    write_predictions(tmp_path, index, target, probs)
    assert read_predictions(tmp_path)["official_index"].item() is False
    np.savez(tmp_path / "predictions.npz", index=index, target=target, probs=probs)  # older file
    old = read_predictions(tmp_path)
    assert old["official_index"].item() is False and old["index"].tolist() == [3, 20]


# -- the callbacks with a planted model -----------------------------------------------------


class PlantedNet(nn.Module):
    """Predicts the class written in the red channel of the image (:func:`planted_image`) with
    confidence about 0.96; differentiable in the input, so saliency maps exist."""

    def __init__(self, num_classes: int, mean: float, std: float, sharpness: float = 4.0) -> None:
        super().__init__()
        self.num_classes, self.mean, self.std, self.sharpness = num_classes, mean, std, sharpness
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so the module has a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, 0].mean((1, 2)) * self.std + self.mean) * 255
        classes = torch.arange(self.num_classes, device=x.device, dtype=x.dtype)
        return -self.sharpness * self.scale * (red[:, None] - classes) ** 2


def run_planted_test(make_config, root: Path, dataset: str, *overrides: str):
    cfg = make_config(
        f"dataset={dataset}",
        f"dataset.root={root}",
        "callbacks.gradcam.method=saliency",
        "callbacks.gradcam.target_layer=null",
        "callbacks.high_conf_failures.ncols=1",
        "callbacks.failure_modes=null",  # PlantedNet has no linear head
        *overrides,
    )
    prepared(cfg)
    datamodule = build_datamodule(cfg)
    net = PlantedNet(cfg.dataset.num_classes, cfg.dataset.mean[0], cfg.dataset.std[0])
    module = build_module(cfg, net)
    trainer = build_trainer(cfg)
    trainer.test(module, datamodule=datamodule)
    return trainer


def framed_tiles(grid: torch.Tensor, num_tiles: int, title_px: int = 24) -> list[int]:
    """Tiles (one per row) whose frame colour is drawn, from the pixels of a grid PNG."""
    hwc = grid.permute(1, 2, 0)
    hit = (hwc == torch.tensor(FRAME_COLOR, dtype=torch.uint8)).all(-1)
    rows = torch.nonzero(hit.any(1)).flatten()
    cell = (grid.shape[1] - title_px) / num_tiles
    return sorted({int((y - title_px) // cell) for y in rows.tolist()})


def test_planted_label_errors_in_failures_grids_and_clean_accuracy(
    make_config, tmp_path, monkeypatch
):
    root = make_official_zip(tmp_path / "planted10.zip", "cifar10", PLANTED10)
    cam_targets = []
    import cnnstress.train.callbacks.gradcam as gradcam_module

    real = gradcam_module.compute_heatmaps

    def recording(net, images, targets, *args, **kwargs):
        cam_targets.append(torch.as_tensor(targets).tolist())
        return real(net, images, targets, *args, **kwargs)

    monkeypatch.setattr(gradcam_module, "compute_heatmaps", recording)
    trainer = run_planted_test(make_config, root, "cifar10", "callbacks.gradcam.indices=[6877,0]")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["test/acc"] == pytest.approx(0.4)
    assert metrics["test/high_conf_failures"] == 6
    assert metrics["test/high_conf_failures_label_errors"] == 3
    assert metrics["test/acc_clean"] == pytest.approx(0.4)
    assert metrics["test/acc_corrected"] == pytest.approx(0.5)

    run = tmp_path / "run"
    data = json.loads((run / "failures" / "failures.json").read_text())
    assert [f["index"] for f in data["failures"]] == PLANTED10_FAILURES
    assert data["label_errors"]["count"] == 3 and "cleanlab" in data["label_errors"]["source"]
    marks = {f["index"]: (f["label_error"], f["likely_true"]) for f in data["failures"]}
    assert marks == {
        1: (False, None),
        4: (False, None),
        20: (False, None),
        165: (True, None),
        1227: (True, {"id": 5, "name": "dog"}),
        2405: (True, {"id": 6, "name": "frog"}),
    }

    callback = next(c for c in trainer.callbacks if isinstance(c, HighConfidenceFailures))
    shown = callback.last_grid["test"]
    assert [t["framed"] for t in shown] == [False, False, False, True, True, True]
    assert shown[4]["caption"] == "#1227\ncat ->\ndog (0.96)\nlabel error\nlikely: dog"
    assert shown[3]["caption"] == "#165\ndeer ->\nbird (0.96)\nlabel error\ntrue unclear"
    assert "label error" not in shown[2]["caption"]
    grid = read_image(str(run / "failures" / "failures_grid.png"))
    assert framed_tiles(grid, len(shown)) == [3, 4, 5]

    # Grad-CAM at test: the 6 failures, then the fixed 6877 and 0. The third panel explains
    # the likely true class of a label error where the workers agreed, else the label.
    gradcam = next(c for c in trainer.callbacks if isinstance(c, GradCAMGrids))
    third = gradcam.last_captions[2::3]
    assert third == [
        "saliency\ntrue: ship",
        "saliency\ntrue: frog",
        "saliency\ntrue: horse",
        "saliency\nlabel: deer\n(label error)",
        "saliency\nlikely true: dog\n(label error)",
        "saliency\nlikely true: frog\n(label error)",
        "saliency\nlikely true: ship\n(label error)",
        "saliency\ntrue: cat",
    ]
    predicted, explained = cam_targets[-1][:8], cam_targets[-1][8:]
    assert predicted == [0, 2, 5, 2, 5, 6, 0, 3]
    assert explained == [8, 6, 7, 4, 5, 6, 8, 3]

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    scalars = events.Tags()["scalars"]
    assert {"test/acc_clean", "test/acc_corrected", "test/high_conf_failures_label_errors"} <= set(
        scalars
    )
    assert events.Scalars("test/acc_corrected")[-1].value == pytest.approx(0.5)


# CIFAR-100, id -> (official label, planted prediction). By hand: failures 1, 2, 5, 33 (4), label
# errors among them 5 and 33 (2); clean: 0, 1, 2 -> 1/3; corrected: + 33 as shark (right),
# 86 as worm (wrong): 2/5.
PLANTED100 = {
    0: (49, 49),  # mountain, right
    1: (33, 0),  # forest -> apple: failure
    2: (72, 55),  # seal -> otter: failure; checked, label confirmed
    5: (92, 6),  # tulip -> bee: failure; label error, workers split
    33: (93, 73),  # turtle -> shark: failure; label error, likely true shark
    86: (78, 78),  # snake, right by the label; label error, likely true worm (99)
}


def test_planted_cifar100_label_errors(make_config, tmp_path):
    root = make_official_zip(tmp_path / "planted100.zip", "cifar100", PLANTED100, 1)
    trainer = run_planted_test(make_config, root, "cifar100", "callbacks.gradcam=null")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["test/high_conf_failures"] == 4
    assert metrics["test/high_conf_failures_label_errors"] == 2
    assert metrics["test/acc_clean"] == pytest.approx(1 / 3)
    assert metrics["test/acc_corrected"] == pytest.approx(0.4)
    data = json.loads((tmp_path / "run" / "failures" / "failures.json").read_text())
    marks = {f["index"]: f["likely_true"] for f in data["failures"] if f["label_error"]}
    assert marks == {5: None, 33: {"id": 73, "name": "shark"}}


def test_nothing_label_error_related_without_official_indices(
    make_config, tiny_cifar10_zip, tmp_path
):
    trainer = constant_model_trainer(make_config, tiny_cifar10_zip)
    assert not [k for k in trainer.callback_metrics if "clean" in k or "label_error" in k]
    assert "test/acc_corrected" not in trainer.callback_metrics
    data = json.loads((tmp_path / "run" / "failures" / "failures.json").read_text())
    assert data["count"] == 72 and "label_errors" not in data
    assert not any("label_error" in f or "likely_true" in f for f in data["failures"])


def test_gradcam_indices_are_checked_against_the_official_indices(make_config, tmp_path):
    root = make_official_zip(tmp_path / "o.zip", "cifar10", PLANTED10)
    message = r"indices \[2\] out of range.*official indices \(valid 0\.\.1, 3\.\.4, 20, 165, 792"
    with pytest.raises(ConfigError, match=message):
        run_planted_test(make_config, root, "cifar10", "callbacks.gradcam.indices=[2405,2]")


def test_training_run_records_official_indices_and_clean_accuracy(make_config, tmp_path):
    root = make_official_zip(tmp_path / "o.zip", "cifar10", PLANTED10)
    metrics = run_training(make_config(f"dataset.root={root}", "callbacks.gradcam=null"))
    run = tmp_path / "run"
    preds = read_predictions(run)
    assert preds["official_index"].item() is True
    assert preds["index"].tolist() == sorted(PLANTED10)
    clean = load_label_errors("cifar10").clean_accuracy(
        preds["index"], preds["target"], preds["probs"].argmax(1)
    )
    on_disk = read_metrics(run)
    assert on_disk["test/acc_clean"] == pytest.approx(metrics["test/acc_clean"])
    assert on_disk["test/acc_clean"] == pytest.approx(clean.acc_clean)
    assert on_disk["test/acc_corrected"] == pytest.approx(clean.acc_corrected)
    assert "test/high_conf_failures_label_errors" in on_disk
