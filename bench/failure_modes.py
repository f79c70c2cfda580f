"""Failure modes (issue 25): does the method recover a planted slice, and what does it cost?

Real CIFAR-10 images (``$CNNSTRESS_DATA/cifar10-jpeg.zip``, default ``../shared/datasets``).
Two slices are planted in one training set, each a fixed fraction of one class given a visual
feature and relabelled, so the model learns to misclassify that feature:

* ``tint``: 30% of the training ships get an orange surround (the 16-of-32 centre kept) and the
  label airplane; in the test split, ``--planted`` ships (100 of 1,000) get the same surround.
* ``grey``: 30% of the training cats are turned grey and labelled dog; ``--planted`` test cats.

A plain PyTorch loop trains the simple CNN (width 32) on ``--per-class`` images per class for
``--epochs`` epochs (bf16 autocast + channels_last where the CPU has bf16). The slice to recover
is the planted test images the model gets wrong (or gets wrong with confidence >= 0.8, for the
confident grouping). Each candidate groups the errors; the mode with the best F1 against the
slice gives its precision and recall (the Domino paper's evaluation, Eyuboglu et al. 2022):

* ``pairs``: the confusion pair alone (true -> predicted), no embeddings;
* ``global-gmm``: one mixture over all errors (PCA 32, whitened, diagonal covariances, BIC);
* ``pairs+gmm-bic``: cnnstress's grouping with the BIC instead of the ICL;
* ``pairs+gmm-icl d=K``: cnnstress's grouping (:func:`cluster_errors`), PCA to K dimensions;
* ``domino``: an error-aware mixture written here after the paper's description (not its
  code): diagonal Gaussians over the embeddings of *all* test images (PCA 32) times
  categorical distributions of the label and of the predicted probabilities, weighted by
  ``gamma = 10``, 25 components initialised on the largest confusion cells, 100 EM steps; a
  mode = the errors of one component.

Cost: the whole per-run step (:func:`cnnstress.core.failure_modes.run.compute_failure_modes`: one
forward pass of the errors, attributes of the 10,000 test images, the grouping, CAMs of the
modes' most typical members) against a plain forward pass of the test split in the same run.
With ``--sweep DIR`` (a finished 3-seed x 2-group sweep), also ``python analyze.py sweep=DIR``
in a subprocess, and the analysis-side step on that sweep: matching and fix shares from the
runs' ``failure_modes.json``, the CAM agreement (checkpoints), and the per-run step from the
checkpoints for runs trained without the callback.

    python bench/failure_modes.py                      # about 5-10 minutes on 2 CPU cores
    python bench/failure_modes.py --sweep outputs/multiruns/DATE/TIME
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import logsumexp
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from cnnstress.core.checkpoints import load_backbone
from cnnstress.core.data import load_split
from cnnstress.core.data.classes import CIFAR10_CLASSES
from cnnstress.core.data.label_errors import load_label_errors
from cnnstress.core.data.normalize import Normalize
from cnnstress.core.failure_modes.clustering import cluster_errors
from cnnstress.core.failure_modes.embeddings import embed
from cnnstress.core.failure_modes.run import compute_failure_modes
from cnnstress.core.failure_modes.settings import FailureModeSettings
from cnnstress.core.models import SimpleCNN
from cnnstress.train.precision import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CNNSTRESS_DATA", ROOT.parent / "shared" / "datasets"))
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SHIP, AIRPLANE, CAT, DOG = 8, 0, 3, 5
SLICES = {"tint": (SHIP, AIRPLANE), "grey": (CAT, DOG)}
CONFIDENCE = 0.8  # the confident errors' threshold (the default confidence_threshold)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def tint(images: torch.Tensor) -> torch.Tensor:
    surround = torch.ones(32, 32, dtype=torch.bool)
    surround[8:24, 8:24] = False
    orange = torch.tensor([255.0, 140.0, 0.0]).view(1, 3, 1, 1)
    out = torch.where(surround, 0.5 * images.float() + 0.5 * orange, images.float())
    return out.round().clamp(0, 255).to(torch.uint8)


def grey(images: torch.Tensor) -> torch.Tensor:
    x = images.float()
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return luma.round().clamp(0, 255).to(torch.uint8)[:, None].expand(-1, 3, -1, -1).clone()


FEATURES = {"tint": tint, "grey": grey}


def plant(args: argparse.Namespace):
    root = DATA / "cifar10-jpeg.zip"
    train, test = load_split(root, "cifar10", "train"), load_split(root, "cifar10", "test")
    gen = torch.Generator().manual_seed(args.seed)
    keep = torch.cat([torch.nonzero(train.labels == c)[: args.per_class, 0] for c in range(10)])
    x, y = train.images[keep].clone(), train.labels[keep].clone()
    xt, yt = test.images.clone(), test.labels.clone()
    planted = {}
    for name, (source, target) in SLICES.items():
        rows = torch.nonzero(y == source)[:, 0]
        pick = rows[torch.randperm(rows.numel(), generator=gen)[: int(0.3 * rows.numel())]]
        x[pick], y[pick] = FEATURES[name](x[pick]), target
        rows = torch.nonzero(yt == source)[:, 0]
        pick = rows[torch.randperm(rows.numel(), generator=gen)[: args.planted]].sort().values
        xt[pick] = FEATURES[name](xt[pick])
        planted[name] = pick.numpy()
    return x, y, xt, yt, test.ids.numpy() if test.ids is not None else np.arange(len(yt)), planted


def train_model(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> SimpleCNN:
    torch.manual_seed(args.seed)
    norm = Normalize(MEAN, STD)
    net = SimpleCNN(10, 32).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    bf16 = cpu_has_native_bf16()
    for _ in range(args.epochs):
        net.train()
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(order), 128):
            b = order[start : start + 128]
            batch = norm(x[b])
            flip = torch.rand(len(b), generator=gen) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(
                    net(batch.contiguous(memory_format=torch.channels_last)), y[b]
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def predict(net: SimpleCNN, images: torch.Tensor) -> np.ndarray:
    return predict_with(net, Normalize(MEAN, STD), images)


def predict_with(net: torch.nn.Module, norm: Normalize, images: torch.Tensor) -> np.ndarray:
    """Softmax probabilities of ``images`` in batches of 1,000 (the plain reference pass)."""
    with torch.no_grad():
        return torch.cat(
            [
                net(norm(images[s : s + 1000])).float().softmax(1)
                for s in range(0, len(images), 1000)
            ]
        ).numpy()


# -- candidates -------------------------------------------------------------------------------


def by_pairs(true: np.ndarray, pred: np.ndarray, min_size: int) -> np.ndarray:
    cells = true * 10 + pred
    labels = np.full(cells.size, -1)
    for k, c in enumerate(np.unique(cells)):
        if (cells == c).sum() >= min_size:
            labels[cells == c] = k
    return labels


def global_gmm(embeddings: np.ndarray, max_modes: int = 20, seed: int = 0) -> np.ndarray:
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    x = PCA(min(32, len(x) - 1), whiten=True, random_state=seed).fit_transform(x)
    best = None
    for k in range(1, max_modes + 1):
        g = GaussianMixture(k, covariance_type="diag", reg_covar=1e-3, random_state=seed).fit(x)
        if best is None or g.bic(x) < best[0]:
            best = (g.bic(x), g)
    return best[1].predict(x)


def domino(
    embeddings: np.ndarray,
    target: np.ndarray,
    probs: np.ndarray,
    k: int = 25,
    gamma: float = 10.0,
    steps: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """Component of every image under an error-aware mixture (see the module docstring)."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    x = PCA(32, random_state=seed).fit_transform(x)
    y = np.eye(probs.shape[1])[target]
    cells = target * probs.shape[1] + probs.argmax(1)
    values, counts = np.unique(cells, return_counts=True)
    resp = np.full((len(x), k), 1e-3)
    for j, cell in enumerate(values[np.argsort(-counts, kind="stable")][:k]):
        resp[cells == cell, j] = 1.0
    resp /= resp.sum(1, keepdims=True)
    for _ in range(steps):
        w = resp.sum(0) + 1e-10
        mu = resp.T @ x / w[:, None]
        var = resp.T @ x**2 / w[:, None] - mu**2 + 1e-3
        p_y = (resp.T @ y + 1e-3) / w[:, None]
        p_hat = (resp.T @ probs + 1e-3) / w[:, None]
        p_y /= p_y.sum(1, keepdims=True)
        p_hat /= p_hat.sum(1, keepdims=True)
        # log N(x | mu, var) expanded into matrix products (no (N, K, D) temporaries)
        log_gauss = -0.5 * (
            (x**2) @ (1 / var).T
            - 2 * x @ (mu / var).T
            + ((mu**2) / var).sum(1)
            + np.log(2 * np.pi * var).sum(1)
        )
        ll = log_gauss + gamma * (y @ np.log(p_y).T + probs @ np.log(p_hat).T)
        ll += np.log(w / w.sum())
        resp = np.exp(ll - logsumexp(ll, 1, keepdims=True))
    return resp.argmax(1)


def best_match(labels: np.ndarray, in_slice: np.ndarray) -> tuple[float, float, int]:
    """Precision and recall of the label with the best F1 against ``in_slice``; modes."""
    best = (0.0, 0.0, 0.0)
    modes = np.unique(labels[labels >= 0])
    for k in modes:
        m = labels == k
        hit = int((m & in_slice).sum())
        if hit:
            p, r = hit / m.sum(), hit / in_slice.sum()
            best = max(best, (2 * p * r / (p + r), p, r))
    return best[1], best[2], len(modes)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def recovery(args, net, xt, yt, ids, planted) -> None:
    probs = predict(net, xt)
    pred, conf, target = probs.argmax(1), probs.max(1), yt.numpy()
    print(f"test accuracy {np.mean(pred == target):.4f}")
    norm = Normalize(MEAN, STD)
    all_embeddings = embed(net, norm(xt))
    sets = {"errors": pred != target, "confident": (pred != target) & (conf >= CONFIDENCE)}
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        dom, dom_s = timed(domino, all_embeddings, target, probs)
        rows_table = []
        for name, (source, wrong_as) in SLICES.items():
            is_planted = np.zeros(len(yt), bool)
            is_planted[planted[name]] = True
            as_target = int((pred[planted[name]] == wrong_as).sum())
            cell = (target == source) & (pred == wrong_as)
            print(
                f"slice {name}: {args.planted} planted, {as_target} predicted as "
                f"{CIFAR10_CLASSES[wrong_as]}; natural {CIFAR10_CLASSES[source]} -> "
                f"{CIFAR10_CLASSES[wrong_as]} errors: {int((cell & ~is_planted).sum())} "
                f"(confident: {int((cell & ~is_planted & (conf >= CONFIDENCE)).sum())})"
            )
            for grouping, mask in sets.items():
                rows = np.flatnonzero(mask)
                in_slice = is_planted[rows]
                e, t, p = all_embeddings[rows], target[rows], pred[rows]
                candidates = {
                    "pairs": lambda t=t, p=p: by_pairs(t, p, 5),
                    "global-gmm": lambda e=e: global_gmm(e),
                    "pairs+gmm-bic d=4": lambda e=e, t=t, p=p: (
                        cluster_errors(e, t, p, pca_dim=4, criterion="bic").labels
                    ),
                    "pairs+gmm-icl d=2": lambda e=e, t=t, p=p: (
                        cluster_errors(e, t, p, pca_dim=2).labels
                    ),
                    "pairs+gmm-icl d=4": lambda e=e, t=t, p=p: (
                        cluster_errors(e, t, p, pca_dim=4).labels
                    ),
                    "pairs+gmm-icl d=8": lambda e=e, t=t, p=p: (
                        cluster_errors(e, t, p, pca_dim=8).labels
                    ),
                }
                for method, run in candidates.items():
                    labels, seconds = timed(run)
                    precision, recall, modes = best_match(np.asarray(labels), in_slice)
                    rows_table.append(
                        (
                            name,
                            grouping,
                            int(in_slice.sum()),
                            method,
                            precision,
                            recall,
                            modes,
                            seconds,
                        )
                    )
                precision, recall, modes = best_match(dom[rows], in_slice)
                rows_table.append(
                    (name, grouping, int(in_slice.sum()), "domino", precision, recall, modes, dom_s)
                )
    print("\n| slice | grouping | slice size | method | precision | recall | modes | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, grouping, size, method, p, r, m, s in rows_table:
        print(f"| {name} | {grouping} | {size} | {method} | {p:.2f} | {r:.2f} | {m} | {s:.2f} |")


def cost(net, xt, yt, ids, args, planted) -> float:
    """Seconds of the per-run step on the 10,000 test images (median of ``--repeats``),
    against a plain forward pass of the test split timed alternately in the same process."""
    probs = predict(net, xt)
    norm = Normalize(MEAN, STD)
    steps, forwards = [], []
    for _ in range(args.repeats):
        forwards.append(timed(predict, net, xt)[1])
        result, seconds = timed(
            compute_failure_modes,
            net,
            xt,
            ids,
            yt.numpy(),
            probs,
            normalize=norm,
            classes=CIFAR10_CLASSES,
            settings=FailureModeSettings(threshold=CONFIDENCE),
            label_errors=load_label_errors("cifar10"),
            cam=("gradcam", "block3"),
        )
        steps.append(seconds)
    step, forward = float(np.median(steps)), float(np.median(forwards))
    for name, rows in planted.items():
        wanted = set(ids[rows].tolist())
        for grouping in (result.errors, result.confident):
            best = max(
                grouping.modes,
                key=lambda m: len(wanted & set(m.members)) / (len(wanted) + m.size),
                default=None,
            )
            if best is not None:
                print(f"slice {name}, {grouping.name}: best mode: {best.description}")
    cams = sum(m.cam_images for g in (result.errors, result.confident) for m in g.modes)
    print(
        f"\nper-run step on {len(yt)} test images ({result.errors.num_errors} errors, "
        f"{len(result.errors.modes)} + {len(result.confident.modes)} modes, {cams} CAMs): "
        f"{step:.1f} s (median of {args.repeats}: {', '.join(f'{s:.1f}' for s in steps)}); "
        f"plain forward pass of the test split: {forward:.1f} s (ratio {step / forward:.1f})"
    )
    return step


def sweep_cost(sweep: Path) -> None:
    """On a finished sweep: ``python analyze.py`` against the failure-mode analysis."""
    from cnnstress.analysis.failure_modes import analyse_failure_modes
    from cnnstress.analysis.groups import group_runs
    from cnnstress.analysis.runs import find_run_dirs, load_run
    from cnnstress.core.failure_modes.run import failure_modes_of_run
    from cnnstress.report.failure_modes import agreement_sentence, fix_sentence

    runs = [load_run(p) for p in find_run_dirs(sweep) if (p / "metrics.json").is_file()]
    groups = {key.name: {r.seed: r for r in members} for key, members in group_runs(runs).items()}
    reference = "baseline" if "baseline" in groups else sorted(groups)[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = sweep.parent / f"{sweep.name}_analysis_bench"
    analysis, analysis_with = [], []
    fm_with_cam, fm_without_cam, per_run = [], [], []
    # Warm-up, untimed: decodes the test split once (cached, as analyze.py's Grad-CAM figure
    # has it decoded before any failure-mode step would run) and loads the torch kernels.
    analyse_failure_modes(groups, reference)

    def analyze(*extra: str) -> float:
        start = time.perf_counter()
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(
            [sys.executable, str(ROOT / "analyze.py"), f"sweep={sweep}", f"hydra.run.dir={out}",
             *extra],
            check=True,
            env=env,
            capture_output=True,
        )  # fmt: skip
        return time.perf_counter() - start

    for _ in range(3):  # alternate: the machine's load drifts
        # the analysis without the step (what the step's share is of), then with it (default)
        analysis.append(analyze("failure_modes.enabled=false"))
        analysis_with.append(analyze())
        result, seconds = timed(analyse_failure_modes, groups, reference)
        fm_with_cam.append(seconds)
        fm_without_cam.append(timed(analyse_failure_modes, groups, reference, cam_top_n=0)[1])
    forwards = []
    for run in runs:
        # the run's recorded knobs, with today's default CAM budget
        default_cams = {"cam_per_mode": FailureModeSettings.cam_per_mode}
        per_run.append(timed(failure_modes_of_run, run.path, default_cams)[1])
        net, cfg = load_backbone(run.path)
        split = load_split(str(cfg.dataset.root), "cifar10", "test")
        forwards.append(timed(predict_with, net, Normalize.of(cfg.dataset), split.images)[1])
    a, w, wo = (float(np.median(x)) for x in (analysis, fm_with_cam, fm_without_cam))
    a_with = float(np.median(analysis_with))
    total = float(np.sum(per_run))
    print(f"\nsweep {sweep}: {len(runs)} runs in {len(groups)} groups ({', '.join(groups)})")
    print(
        f"python analyze.py failure_modes.enabled=false: {a:.1f} s "
        f"(runs: {', '.join(f'{x:.1f}' for x in analysis)}); with the failure modes (default): "
        f"{a_with:.1f} s (runs: {', '.join(f'{x:.1f}' for x in analysis_with)})"
    )
    print(
        f"failure-mode analysis from the runs' failure_modes.json: {wo:.2f} s without the CAM "
        f"agreement ({100 * wo / a:.1f}% of analyze.py), {w:.1f} s with it ({100 * w / a:.1f}%)"
    )
    print(
        f"per-run step from the checkpoints (runs trained without the callback): "
        f"{total:.1f} s for {len(runs)} runs ({', '.join(f'{x:.1f}' for x in per_run)}; "
        f"{100 * total / a:.0f}% of analyze.py); a plain forward pass of the test split: "
        f"{', '.join(f'{x:.1f}' for x in forwards)} s (median ratio "
        f"{np.median(np.array(per_run) / np.array(forwards)):.1f})"
    )
    for improvement in result.improvements.values():
        for grouping, modes in improvement.items():
            print(f"  verdict line [{grouping}]: {fix_sentence(modes, result.classes)}")
    for group in result.groups.values():
        print(f"  {agreement_sentence(group.name, group.cam)}")
        for grouping, matching in group.matching.items():
            print(
                f"  {group.name} [{grouping}]: {len(matching.stable)} stable modes, "
                f"{len(matching.seed_specific)} seed-specific; stable: "
                + "; ".join(
                    f"{f.description} (seeds {f.seeds}, median overlap {f.median_overlap:.2f})"
                    for f in matching.stable[:5]
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=2500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--planted", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep-only", action="store_true", help="skip the planted benchmark")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows in a redirected log
    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}")
    if not args.sweep_only:
        (x, y, xt, yt, ids, planted), load_s = timed(plant, args)
        net, train_s = timed(train_model, x, y, args)
        print(
            f"data {load_s:.0f} s; training {len(y)} images x {args.epochs} epochs: {train_s:.0f} s"
        )
        recovery(args, net, xt, yt, ids, planted)
        cost(net, xt, yt, ids, args, planted)
    if args.sweep is not None:
        sweep_cost(args.sweep)


if __name__ == "__main__":
    main()
