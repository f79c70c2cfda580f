"""Human-verified label errors of the CIFAR-10 and CIFAR-100 test sets.

The lists ship with the package (``label_error_lists/``, see the README there): the data of
Northcutt, Athalye & Mueller, "Pervasive Label Errors in Test Sets Destabilize Machine Learning
Benchmarks" (NeurIPS 2021 Datasets and Benchmarks), from cleanlab/label-errors, Apache-2.0.
Five Mechanical Turk workers checked each flagged test image. The paper's rule: an image is a
label error when fewer than 3 of the 5 chose the given label; where 3 or more chose the guessed
label, that is the likely true class. That gives 54 errors in CIFAR-10 (18 with a likely true
class) and 585 in CIFAR-100 (318).

Everything keys on the official test index (the order of torchvision's ``CIFAR10(train=False)``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

LISTS_FOLDER = "label_error_lists"
_LIST_FILES = {"cifar10": "cifar10_mturk.json", "cifar100": "cifar100_mturk.json"}
SOURCE = (
    "cleanlab/label-errors @ 6d5d6b31a13216290afc40e5c6319399c4d15c06 "
    "(Northcutt, Athalye & Mueller, NeurIPS 2021 D&B; Apache-2.0)"
)
WORKERS_AGREE = 3  # of the 5 workers: the paper's majority


@dataclass(frozen=True)
class CleanAccuracy:
    """Test accuracy on the paper's cleaned test sets.

    Attributes:
        acc_clean: accuracy with the known label errors left out (NaN when nothing is left).
        acc_corrected: accuracy with the likely true class as the target where the workers
            agreed, and the other label errors left out (the paper's corrected test set).
        num_clean: images counted in ``acc_clean``.
        num_corrected: images counted in ``acc_corrected``.
    """

    acc_clean: float
    acc_corrected: float
    num_clean: int
    num_corrected: int


@dataclass(frozen=True)
class LabelErrors:
    """The known label errors of one dataset's official test set.

    Attributes:
        dataset: ``cifar10`` or ``cifar100``.
        ids: ``(E,)`` int64 official test indices of the label errors, sorted.
        given: ``(E,)`` int64 the official (wrong) label of each error.
        true_class: ``(E,)`` int64 the likely true class of each error, -1 where fewer than 3
            of the 5 workers chose the guessed label.
        checked_ids: ``(M,)`` int64 every image the workers checked (errors or not), sorted.
        checked_given: ``(M,)`` int64 the official label of each checked image.
    """

    dataset: str
    ids: np.ndarray
    given: np.ndarray
    true_class: np.ndarray
    checked_ids: np.ndarray
    checked_given: np.ndarray

    @property
    def count(self) -> int:
        """Number of label errors in the whole official test set."""
        return int(self.ids.size)

    @property
    def count_with_true_class(self) -> int:
        """Number of label errors whose likely true class is known."""
        return int((self.true_class >= 0).sum())

    def _lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids).clip(max=max(self.ids.size - 1, 0))
        found = self.ids[pos] == ids if self.ids.size else np.zeros(ids.shape, bool)
        return pos, found

    def is_error(self, ids: np.ndarray) -> np.ndarray:
        """Bool array, the shape of ``ids`` (official test indices): a known label error?"""
        return self._lookup(ids)[1]

    def likely_true(self, ids: np.ndarray) -> np.ndarray:
        """int64 array, the shape of ``ids``: the likely true class, -1 where none is known
        (not a label error, or the workers did not agree)."""
        pos, found = self._lookup(ids)
        return np.where(found, self.true_class[pos] if self.ids.size else -1, -1)

    def label_mismatches(self, ids: np.ndarray, labels: np.ndarray) -> int:
        """How many checked images among ``ids`` have a label other than the official one.

        ``ids`` ``(N,)`` official test indices and their ``labels`` ``(N,)``. Non-zero means
        ``ids`` are not official test indices (or the labels were changed): the lists must not
        be applied.
        """
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.checked_ids, ids).clip(max=self.checked_ids.size - 1)
        checked = self.checked_ids[pos] == ids
        return int((self.checked_given[pos[checked]] != np.asarray(labels)[checked]).sum())

    def clean_accuracy(
        self, ids: np.ndarray, target: np.ndarray, pred: np.ndarray
    ) -> CleanAccuracy:
        """Accuracies on the cleaned test set for predictions ``pred`` ``(N,)`` of the images at
        official test indices ``ids`` ``(N,)`` with official labels ``target`` ``(N,)``."""
        ids, target, pred = (np.asarray(a, dtype=np.int64) for a in (ids, target, pred))
        error = self.is_error(ids)
        true = self.likely_true(ids)
        clean = ~error
        corrected_target = np.where(true >= 0, true, target)
        corrected = clean | (true >= 0)
        return CleanAccuracy(
            acc_clean=_mean(pred[clean] == target[clean]),
            acc_corrected=_mean(pred[corrected] == corrected_target[corrected]),
            num_clean=int(clean.sum()),
            num_corrected=int(corrected.sum()),
        )


def _mean(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else float("nan")


@functools.cache
def load_label_errors(dataset: str) -> LabelErrors | None:
    """The known label errors of ``dataset``'s official test set; None for a dataset without
    a list (any other than ``cifar10`` and ``cifar100``)."""
    filename = _LIST_FILES.get(dataset)
    if filename is None:
        return None
    text = (resources.files("cnnstress.core.data") / LISTS_FOLDER / filename).read_text("utf-8")
    entries = sorted(json.loads(text), key=lambda e: e["id"])
    errors = [e for e in entries if e["mturk"]["given"] < WORKERS_AGREE]
    return LabelErrors(
        dataset=dataset,
        ids=_frozen([e["id"] for e in errors]),
        given=_frozen([e["given_original_label"] for e in errors]),
        true_class=_frozen(
            [
                e["our_guessed_label"] if e["mturk"]["guessed"] >= WORKERS_AGREE else -1
                for e in errors
            ]
        ),
        checked_ids=_frozen([e["id"] for e in entries]),
        checked_given=_frozen([e["given_original_label"] for e in entries]),
    )


def _frozen(values: list[int]) -> np.ndarray:
    """Read-only int64 array: the loaded lists are cached and shared."""
    array = np.array(values, dtype=np.int64)
    array.setflags(write=False)
    return array
