"""Accuracy under the CIFAR-10-C / CIFAR-100-C corruptions, published files or generated.

Keys written (``<type>`` a corruption name, ``<s>`` a severity 1-5):

* ``corruptions/<type>/<s>/acc``: top-1 accuracy on the corrupted images;
* ``corruptions/<type>/mean_acc``: mean over the evaluated severities;
* ``corruptions/mean_acc``: mean over the evaluated *benchmark* types (the 15 of Hendrycks &
  Dietterich) and severities; ``corruptions/benchmark_types``: how many of the 15 it covers
  (12 when generated: motion_blur, snow and frost need the published files);
* ``corruptions/extra_mean_acc``, ``corruptions/extra_types``: the same over the 4 extra
  ("validation") types, reported apart as the paper does, when any was evaluated;
* ``corruptions/clean_acc``: accuracy on the same images uncorrupted (generated), or on the
  run's whole test split (published files, whose image order and encoding differ);
* ``corruptions/num_images`` (per type and severity), ``corruptions/num_types``,
  ``corruptions/seed`` (generated only), ``corruptions/seconds``, and the string
  ``corruptions/source`` (``"generated"`` or ``"files"``).

The corruption error relative to a baseline run (mCE) needs two runs: :func:`mce`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from cnnstress.core.console import Progress
from cnnstress.core.data.sources import LabeledImages
from cnnstress.core.errors import DataError
from cnnstress.core.rules import Either, Integer, ListOf, OneOf, Text
from cnnstress.report.figures.stress import plot_corruption_heatmap
from cnnstress.stress.context import (
    StressContext,
    accuracy,
    seeded_subset,
)
from cnnstress.stress.corruptions import (
    BENCHMARK_TYPES,
    CORRUPTIONS,
    EXTRA_TYPES,
    GENERATED_BENCHMARK_TYPES,
    PUBLISHED_TYPES,
    SEVERITIES,
    check_severity,
    check_type,
    corrupt,
)

log = logging.getLogger(__name__)

PLOT_FILE = "stress_corruptions.png"
LABELS_FILE = "labels.npy"


@dataclasses.dataclass
class CorruptionSettings:
    """Knobs of ``stress.corruptions`` (conf/stress/corruptions.yaml)."""

    # folder of the published <type>.npy + labels.npy; null: generate from the test split
    root: Annotated[str | None, Text(optional=True)] = None
    # "benchmark" (the paper's 15, those available), "all" (the 4 extra types too), or a list
    types: Annotated[Any, Either((OneOf(("benchmark", "all")), ListOf(Text(), 1), Text()))] = (
        "benchmark"
    )
    severities: Annotated[list[int], ListOf(OneOf(SEVERITIES), 1)] = dataclasses.field(
        default_factory=lambda: list(SEVERITIES)
    )
    batch_size: Annotated[int, Integer(1)] = 1000
    # a fixed random subset of this many images (per type and severity); null: all
    max_images: Annotated[int | None, Integer(1, optional=True)] = None
    # generated corruptions: fixed across runs (like dataset.val_seed), not the run's seed
    seed: Annotated[int, Integer(0)] = 0


# -- generated --------------------------------------------------------------------------------
def batch_seed(seed: int, name: str, severity: int, start: int) -> int:
    """Seed of the batch starting at image ``start``, stable across type lists and runs."""
    key = [seed, zlib.crc32(name.encode()), severity, start]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def iter_corrupted(
    images: torch.Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
) -> Iterator[torch.Tensor]:
    """Yield the corrupted ``images`` batch by batch, uint8 ``(B, 3, 32, 32)`` on ``device``.

    Deterministic for a given ``(seed, batch_size, device type)``: each batch draws from its
    own generator seeded by :func:`batch_seed`.
    """
    device = torch.device(device)
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        generator = torch.Generator(device=device).manual_seed(
            batch_seed(seed, name, severity, start)
        )
        yield corrupt(batch, name, severity, generator)


def _generated(ctx: StressContext, s: CorruptionSettings, types: list[str]) -> dict[str, Any]:
    subset = seeded_subset(len(ctx.test), s.max_images, s.seed)
    images, labels = ctx.test.images[subset], ctx.test.labels[subset]
    out: dict[str, Any] = {
        "corruptions/source": "generated",
        "corruptions/seed": s.seed,
        "corruptions/clean_acc": accuracy(ctx.clean_logits()[subset], labels),
        "corruptions/num_images": len(subset),
    }
    progress = Progress("corruptions", len(types), log)
    for name in types:
        for severity in s.severities:
            correct = 0
            start = 0
            for batch in iter_corrupted(images, name, severity, s.seed, s.batch_size, ctx.device):
                logits = ctx.logits(batch, s.batch_size)
                correct += (logits.argmax(1) == labels[start : start + len(batch)]).sum().item()
                start += len(batch)
            out[f"corruptions/{name}/{severity}/acc"] = correct / max(len(labels), 1)
        progress.step(f"{name} on {len(subset)} images x {len(s.severities)} severities")
    return out


# -- published files --------------------------------------------------------------------------
def published_types(root: str | Path) -> list[str]:
    """The published corruption types with a ``<type>.npy`` in ``root``, in the paper's order."""
    return [t for t in PUBLISHED_TYPES if (Path(root) / f"{t}.npy").is_file()]


def _open(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from None


def load_published(
    root: str | Path, name: str, severity: int, indices: torch.Tensor | None = None
) -> LabeledImages:
    """One severity of a published ``<name>.npy`` (CIFAR-10-C / CIFAR-100-C layout).

    Layout: ``<name>.npy`` uint8 ``(5 k, 32, 32, 3)``, severities 1-5 in blocks of ``k``
    (``k = 10000`` for the published files); ``labels.npy`` ``(5 k,)`` or ``(k,)``.

    Args:
        indices: rows within the severity block (default: the whole block).

    Returns:
        uint8 ``(n, 3, 32, 32)`` images and int64 labels.
    """
    root = Path(root)
    check_severity(severity)
    path = root / f"{name}.npy"
    if not path.is_file():
        found = ", ".join(published_types(root)) or "none"
        raise DataError(f"no {name}.npy in {root} (corruption files found: {found})")
    data = _open(path)
    if data.ndim != 4 or data.shape[1:] != (32, 32, 3) or data.dtype != np.uint8:
        raise DataError(f"{path} is {data.dtype} {data.shape}; expected uint8 (5 x N, 32, 32, 3)")
    if data.shape[0] % len(SEVERITIES):
        raise DataError(f"{path} has {data.shape[0]} images, not 5 severities of equal size")
    block = data.shape[0] // len(SEVERITIES)
    labels_path = root / LABELS_FILE
    if not labels_path.is_file():
        raise DataError(f"no {LABELS_FILE} in {root}")
    labels = _open(labels_path).reshape(-1)
    if labels.shape[0] not in (data.shape[0], block):
        raise DataError(
            f"{labels_path} has {labels.shape[0]} labels for {data.shape[0]} images in {path}"
        )
    rows = np.arange(block) if indices is None else np.asarray(indices, dtype=np.int64)
    offset = (severity - 1) * block
    images = torch.from_numpy(np.ascontiguousarray(data[offset + rows])).permute(0, 3, 1, 2)
    label_rows = offset + rows if labels.shape[0] == data.shape[0] else rows
    return LabeledImages(images.contiguous(), torch.from_numpy(labels[label_rows].astype(np.int64)))


def _from_files(ctx: StressContext, s: CorruptionSettings, types: list[str]) -> dict[str, Any]:
    first = _open(Path(s.root) / f"{types[0]}.npy")
    block = first.shape[0] // len(SEVERITIES)
    subset = seeded_subset(block, s.max_images, s.seed)
    out: dict[str, Any] = {
        "corruptions/source": "files",
        "corruptions/clean_acc": ctx.clean_acc(),
        "corruptions/num_images": len(subset),
    }
    progress = Progress("corruptions", len(types), log)
    for name in types:
        for severity in s.severities:
            data = load_published(s.root, name, severity, subset)
            if int(data.labels.max()) >= ctx.num_classes:
                raise DataError(
                    f"{s.root}/{LABELS_FILE} has class {int(data.labels.max())}, but the run "
                    f"has {ctx.num_classes} classes (CIFAR-10-C files for a CIFAR-100 run?)"
                )
            logits = ctx.logits(data.images, s.batch_size)
            out[f"corruptions/{name}/{severity}/acc"] = accuracy(logits, data.labels)
        progress.step(f"{name} ({s.root})")
    return out


# -- the stress -------------------------------------------------------------------------------
def _select_types(s: CorruptionSettings, key: str) -> list[str]:
    if s.root is not None:
        if not Path(s.root).is_dir():
            raise DataError(f"{key}.root={s.root} is not a directory")
        available = published_types(s.root)
        if not available:
            raise DataError(
                f"{key}.root={s.root} holds none of the published files "
                f"({', '.join(f'{t}.npy' for t in PUBLISHED_TYPES[:3])}, ...)"
            )
        benchmark = [t for t in BENCHMARK_TYPES if t in available]
    else:
        available, benchmark = list(CORRUPTIONS), list(GENERATED_BENCHMARK_TYPES)
    if s.types == "all":
        return available
    if s.types == "benchmark":
        return benchmark
    names = [s.types] if isinstance(s.types, str) else list(s.types)  # one type, or a list
    if s.root is not None:
        for name in names:
            check_type(name, PUBLISHED_TYPES)
            if name not in available:
                raise DataError(f"{key}.types has {name}, but {s.root}/{name}.npy is missing")
        return names
    return [check_type(name) for name in names]


def evaluate(ctx: StressContext, settings: CorruptionSettings | None = None) -> dict[str, Any]:
    """Run the corruption stress on a run and draw ``stress_corruptions.png`` in its directory."""
    key = "stress.corruptions"
    s = settings or CorruptionSettings()
    types = _select_types(s, key)
    start = time.perf_counter()
    out = _from_files(ctx, s, types) if s.root is not None else _generated(ctx, s, types)
    table = corruption_accuracies(out)
    for name, by_severity in table.items():
        out[f"corruptions/{name}/mean_acc"] = float(np.mean(list(by_severity.values())))
    for prefix, group in (("", BENCHMARK_TYPES), ("extra_", EXTRA_TYPES)):
        accs = [a for t, row in table.items() if t in group for a in row.values()]
        if accs or not prefix:
            out[f"corruptions/{prefix}mean_acc"] = float(np.mean(accs)) if accs else float("nan")
            kind = "benchmark" if not prefix else "extra"
            out[f"corruptions/{kind}_types"] = sum(t in group for t in table)
    out["corruptions/num_types"] = len(table)
    out["corruptions/seconds"] = time.perf_counter() - start
    plot_corruption_heatmap(
        table,
        ctx.run_dir / PLOT_FILE,
        clean_acc=out["corruptions/clean_acc"],
        title=f"{ctx.run_dir.name}: corruption accuracy ({out['corruptions/source']})",
    )
    return out


# -- reading results and comparing runs ---------------------------------------------------------
def corruption_accuracies(stress: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """``{type: {severity: acc}}`` from flat ``corruptions/<type>/<s>/acc`` keys."""
    table: dict[str, dict[int, float]] = {}
    for key, value in stress.items():
        parts = key.split("/")
        is_acc = len(parts) == 4 and parts[0] == "corruptions" and parts[3] == "acc"
        if is_acc and parts[2].isdigit() and value is not None:
            table.setdefault(parts[1], {})[int(parts[2])] = float(value)
    order = {name: i for i, name in enumerate(PUBLISHED_TYPES)}
    return {
        t: dict(sorted(table[t].items())) for t in sorted(table, key=lambda t: order.get(t, 99))
    }


def corruption_errors(stress: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """``{type: {severity: top-1 error}}`` from a run's ``stress.json`` contents."""
    return {
        t: {s: 1.0 - a for s, a in by_severity.items()}
        for t, by_severity in corruption_accuracies(stress).items()
    }


def mce(
    errors: Mapping[str, Mapping[int, float]],
    baseline_errors: Mapping[str, Mapping[int, float]],
    clean_error: float | None = None,
    baseline_clean_error: float | None = None,
) -> dict[str, float]:
    """Corruption errors relative to a baseline (Hendrycks & Dietterich 2019, Sec. 3).

    ``CE_c = sum_s E_{s,c} / sum_s B_{s,c}`` and ``mCE = mean_c CE_c``, over the benchmark
    types (the 4 extra types never count) and, per type, the severities present in both; the
    caller makes sure both cover the same types. With both clean errors also the relative
    ``rCE_c = sum_s (E_{s,c} - E_clean) / sum_s (B_{s,c} - B_clean)`` and its mean. Values are
    ratios (1.0 = as the baseline; the paper prints them in %). The paper normalises by AlexNet
    over all 15 types; here the baseline is whatever run is passed, over the common types, so
    numbers compare only within one study.

    Args:
        errors: ``{type: {severity: error}}`` of the evaluated run (:func:`corruption_errors`).
        baseline_errors: the same for the baseline run.
        clean_error, baseline_clean_error: clean test errors (``1 - corruptions/clean_acc``).

    Returns:
        ``corruptions/<type>/ce``, ``corruptions/mce``; with clean errors also
        ``corruptions/<type>/relative_ce`` and ``corruptions/relative_mce``. A type whose
        baseline denominator is 0 gets NaN.
    """
    common = [t for t in errors if t in baseline_errors and t in BENCHMARK_TYPES]
    if not common:
        raise ValueError(
            f"no benchmark corruption type in common (run: {sorted(errors)}, "
            f"baseline: {sorted(baseline_errors)})"
        )
    relative = clean_error is not None and baseline_clean_error is not None
    out: dict[str, float] = {}
    ces, rces = [], []
    for name in common:
        severities = sorted(set(errors[name]) & set(baseline_errors[name]))
        if not severities:
            raise ValueError(f"no severity of {name} in common between the run and the baseline")
        run = np.array([errors[name][s] for s in severities], dtype=np.float64)
        base = np.array([baseline_errors[name][s] for s in severities], dtype=np.float64)
        ce = _ratio(run.sum(), base.sum())
        out[f"corruptions/{name}/ce"] = ce
        ces.append(ce)
        if relative:
            rce = _ratio((run - clean_error).sum(), (base - baseline_clean_error).sum())
            out[f"corruptions/{name}/relative_ce"] = rce
            rces.append(rce)
    out["corruptions/mce"] = float(np.mean(ces))
    if relative:
        out["corruptions/relative_mce"] = float(np.mean(rces))
    return out


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator != 0 else float("nan")
