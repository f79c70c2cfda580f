"""Test-time confusion matrix, per-class accuracy and calibration (ECE, reliability diagram)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import lightning as L
import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from cnnstress.core.metrics import ECE_BINS, expected_calibration_error, reliability_bins
from cnnstress.core.plots.canvas import figure_to_array, save_png
from cnnstress.core.plots.diagrams import confusion_matrix_figure, reliability_figure
from cnnstress.core.rules import Integer
from cnnstress.core.run_dir import RunDir, write_json
from cnnstress.train.callbacks.context import (
    label_errors_of,
    tensorboard_writer,
    trainer_class_names,
)


@dataclass(eq=False)
class EvaluationCallback(L.Callback):
    """At the end of the test, from the whole gathered test split (every rank calls the gather):

    * logs ``test/ece`` (expected calibration error, torchmetrics, ``n_bins`` equal-width bins,
      L1 norm) and ``test/acc_class/<class name>`` (per-class accuracy = recall), which land in
      ``metrics.json``;
    * where the test indices are official and the dataset has a list of known label errors,
      logs ``test/acc_clean`` (those errors left out) and ``test/acc_corrected`` (likely true
      class as the target where the workers agreed, the other errors left out; see
      :meth:`~cnnstress.core.data.label_errors.LabelErrors.clean_accuracy`); absent otherwise;
    * on global rank 0 writes ``confusion_matrix.json`` (``classes`` in the dataset's official
      order, ``matrix[true][predicted]`` counts), ``confusion_matrix.png``,
      ``reliability.json`` (per-bin count, accuracy, mean confidence) and ``reliability.png``
      into the run directory, and logs both figures to TensorBoard (``test/confusion_matrix``,
      ``test/reliability``).

    Args:
        n_bins: calibration bins (15 is the usual choice for ECE).
    """

    n_bins: Annotated[int, Integer(1)] = ECE_BINS

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        preds = pl_module.predictions("test")  # a collective: every rank calls it
        if preds.index.size == 0:
            return
        logits, target = torch.from_numpy(preds.logits), torch.from_numpy(preds.target)
        num_classes = logits.shape[1]
        probs = logits.softmax(1)
        matrix = multiclass_confusion_matrix(logits, target, num_classes).numpy()
        ece = expected_calibration_error(probs, target, self.n_bins)
        names = trainer_class_names(trainer, num_classes)
        support = matrix.sum(1)
        per_class = np.where(support > 0, np.diag(matrix) / np.maximum(support, 1), np.nan)
        metrics = {"test/ece": ece}
        metrics |= {f"test/acc_class/{n}": float(a) for n, a in zip(names, per_class, strict=True)}
        errors = label_errors_of(trainer, "test")
        if errors is not None:
            clean = errors.clean_accuracy(preds.index, preds.target, logits.argmax(1).numpy())
            if clean.num_clean:
                metrics["test/acc_clean"] = clean.acc_clean
            if clean.num_corrected:
                metrics["test/acc_corrected"] = clean.acc_corrected
        pl_module.log_dict(metrics, sync_dist=False)  # same gathered values on every rank
        if not trainer.is_global_zero:
            return
        run = RunDir(trainer.default_root_dir)
        write_json(
            run.file("confusion_matrix.json"),
            {
                "classes": names,
                "rows": "true class",
                "columns": "predicted class",
                "matrix": matrix.astype(int).tolist(),
            },
        )
        confidence, predicted = probs.max(1)
        correct = (predicted == target).numpy()
        bins = reliability_bins(confidence.numpy(), correct, self.n_bins)
        write_json(
            run.file("reliability.json"),
            {
                "ece": ece,
                "n_bins": self.n_bins,
                **{key: value.tolist() for key, value in bins.items()},
            },
        )
        writer = tensorboard_writer(trainer)
        figures = {
            "confusion_matrix": confusion_matrix_figure(matrix, names),
            "reliability": reliability_figure(confidence.numpy(), correct, self.n_bins, ece),
        }
        for name, figure in figures.items():
            array = figure_to_array(figure)
            save_png(array, run.file(f"{name}.png"))
            if writer is not None:
                writer.add_image(f"test/{name}", array, trainer.global_step, dataformats="HWC")
