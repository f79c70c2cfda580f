"""analyze.py on real tiny runs: numbers checked against the runs' predictions.npz directly.

Four runs are trained once per module (two improvements x two seeds, simple_cnn for two
epochs on a generated CIFAR-10-layout zip) into one sweep folder, each with the
``.hydra/config.yaml`` Hydra would have written, plus one copied run without
``metrics.json`` (an incomplete run). The images carry extra noise so that the two
improvements disagree on some test images (the plain tiny zip is learnt perfectly by both).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from scipy import stats
from torchvision.io import encode_png

from cnnstress.analysis import collect_runs, compare_groups
from cnnstress.analysis.gradcam import side_by_side
from cnnstress.analysis.runs import latest_multirun
from cnnstress.app.analyze import analyze
from cnnstress.app.train import run_training
from cnnstress.core.checkpoints import load_backbone
from cnnstress.core.data.classes import CIFAR10_CLASSES
from cnnstress.core.errors import ConfigError, DataError
from cnnstress.report.view import differs_in
from tests.conftest import CONF_DIR, ROOT, TINY_RUN, class_pattern_image, compose_train_config

SEEDS = (1, 2)
IMPROVEMENTS = ("baseline", "label_smoothing")
# Two epochs on 160 images leave the top-1 confidences between about 0.1 and 0.3.
THRESHOLDS = (0.0, 0.15, 0.2, 0.5)
# The training callbacks the analysis needs: last.ckpt (for Grad-CAM; no validation split here).
KEEP_CALLBACKS = ("last_checkpoint",)


def noisy_zip(path: Path, per_class: dict[str, int], noise: float = 80.0) -> Path:
    """CIFAR-10-layout zip of the conftest class patterns plus Gaussian noise of std ``noise``."""
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    with zipfile.ZipFile(path, "w") as archive:
        for split, count in per_class.items():
            for label, name in enumerate(CIFAR10_CLASSES):
                for i in range(count):
                    image = class_pattern_image(label, rng).float()
                    image += torch.randn(image.shape, generator=gen) * noise
                    png = encode_png(image.clamp(0, 255).to(torch.uint8)).numpy().tobytes()
                    archive.writestr(f"{split}/{name}/{i:04d}.png", png)
    return path


def _improvement_overrides(name: str) -> list[str]:
    if name == "baseline" or (CONF_DIR / "improvement" / f"{name}.yaml").is_file():
        return [f"improvement={name}"]
    return ["improvement=baseline"]


def _train_run(out: Path, zip_path: Path, improvement: str, seed: int) -> Path:
    overrides = [*TINY_RUN, "trainer.max_epochs=2", f"dataset.root={zip_path}",
                 f"seed={seed}", *_improvement_overrides(improvement)]  # fmt: skip
    cfg = compose_train_config(out, overrides)
    with open_dict(cfg):
        # Stress callbacks only cost time here: the analysis reads the run files.
        cfg.callbacks = {k: v for k, v in cfg.callbacks.items() if k in KEEP_CALLBACKS}
        if cfg.improvement != improvement:
            # conf/improvement/label_smoothing.yaml is not in this tree: make its change by
            # hand so the group still differs from the baseline in that one key.
            cfg.improvement = improvement
            cfg.module.loss.label_smoothing = 0.1
    run_training(cfg)
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")  # what Hydra saves for a real run
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder: <improvement>_<seed>/ for every pair, and incomplete/ (no metrics)."""
    data = noisy_zip(tmp_path_factory.mktemp("data") / "noisy.zip", {"train": 16, "test": 8})
    root = tmp_path_factory.mktemp("sweep")
    threads = torch.get_num_threads()
    # Width-8 convolutions gain nothing from threads, and on a busy 2-core machine the
    # spinning intra-op threads made these four runs 30x slower (0.6 s -> 20 s each).
    torch.set_num_threads(1)
    try:
        for improvement in IMPROVEMENTS:
            for seed in SEEDS:
                _train_run(root / f"{improvement}_{seed}", data, improvement, seed)
    finally:
        torch.set_num_threads(threads)
    shutil.copytree(root / "baseline_1", root / "incomplete")
    (root / "incomplete" / "metrics.json").unlink()
    return root


def _predictions(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "predictions.npz") as data:
        return {k: data[k] for k in data.files}


def _correct(run_dir: Path) -> np.ndarray:
    p = _predictions(run_dir)
    return p["probs"].argmax(1) == p["target"]


def _analysis_config(out: Path, *overrides: str):
    return compose_train_config(out, overrides, config_name="analyze")


def test_runs_are_grouped_and_incomplete_run_is_skipped(sweep):
    collection = collect_runs(sweep=sweep)
    assert sorted((r.improvement, r.seed) for r in collection.runs) == [
        (i, s) for i in IMPROVEMENTS for s in SEEDS
    ]
    assert [s.path for s in collection.skipped] == [sweep / "incomplete"]
    assert "metrics.json" in collection.skipped[0].reason


def test_accuracies_and_intervals_match_predictions(sweep):
    analysis = compare_groups(collect_runs(sweep=sweep), "baseline", THRESHOLDS)
    assert [g.key.label for g in analysis.groups] == [
        "cifar10/simple_cnn/baseline", "cifar10/simple_cnn/label_smoothing"
    ]  # fmt: skip
    for group in analysis.groups:
        accs = [_correct(sweep / f"{group.key.name}_{s}").mean() for s in SEEDS]
        metrics = [r.metrics["test/acc"] for r in group.runs]
        assert metrics == pytest.approx(accs, abs=1e-6)
        est = group.accuracy
        half = stats.t.ppf(0.975, 1) * np.std(accs, ddof=1) / np.sqrt(2)
        assert (est.mean, est.std, est.n) == pytest.approx((np.mean(accs), np.std(accs, ddof=1), 2))
        assert (est.ci_low, est.ci_high) == pytest.approx(
            (np.mean(accs) - half, np.mean(accs) + half)
        )


def test_transitions_mcnemar_and_paired_test_match_predictions(sweep):
    analysis = compare_groups(collect_runs(sweep=sweep), "baseline", THRESHOLDS)
    (comparison,) = analysis.comparisons
    assert comparison.reference.key.name == "baseline"
    assert comparison.constrained and comparison.changed_keys == ["module.loss.label_smoothing"]
    b_sum = c_sum = 0
    for seed in SEEDS:
        ref, other = (
            _correct(sweep / f"baseline_{seed}"),
            _correct(sweep / f"label_smoothing_{seed}"),
        )
        table = comparison.transitions[seed]
        expected = (
            (~ref & other).sum(),
            (ref & ~other).sum(),
            (~ref & ~other).sum(),
            (ref & other).sum(),
        )
        assert (table.corrected, table.worsened, table.both_wrong, table.both_right) == expected
        assert table.total == 80
        b_sum, c_sum = b_sum + expected[0], c_sum + expected[1]
    pooled = comparison.pooled
    assert (pooled.corrected, pooled.worsened) == (b_sum, c_sum)
    assert pooled.mcnemar is None  # the pooled test is the crossed one over images and seeds
    crossed = comparison.crossed
    assert (crossed.seeds, crossed.images) == (2, 80)
    assert crossed.delta == pytest.approx((b_sum - c_sum) / (2 * 80))
    per_seed = [comparison.transitions[s].corrected - comparison.transitions[s].worsened
                for s in SEEDS]  # fmt: skip
    if len(set(per_seed)) > 1:
        assert crossed.tested and crossed.ci_low <= crossed.delta <= crossed.ci_high
    else:  # the tiny runs can move the same number of images on both seeds
        assert crossed.identical and not crossed.tested
    for seed in SEEDS:  # per seed: McNemar, exact below 25 discordant pairs
        table = comparison.transitions[seed]
        n, k = table.corrected + table.worsened, min(table.corrected, table.worsened)
        if n < 25:
            tail = sum(stats.binom.pmf(i, n, 0.5) for i in range(k + 1))
            assert table.mcnemar.method == "exact"
            assert table.mcnemar.pvalue == pytest.approx(min(1.0, 2 * tail))
    ref_acc = [_correct(sweep / f"baseline_{s}").mean() for s in SEEDS]
    ls_acc = [_correct(sweep / f"label_smoothing_{s}").mean() for s in SEEDS]
    diffs = np.subtract(ls_acc, ref_acc)
    assert comparison.paired.delta.mean == pytest.approx(diffs.mean())
    if np.ptp(diffs) > 0:
        assert comparison.paired.pvalue == pytest.approx(stats.ttest_rel(ls_acc, ref_acc).pvalue)


def test_threshold_curve_matches_predictions(sweep):
    analysis = compare_groups(collect_runs(sweep=sweep), "baseline", THRESHOLDS)
    for group in analysis.groups:
        for row, seed in enumerate(group.seeds):
            p = _predictions(sweep / f"{group.key.name}_{seed}")
            conf, wrong = p["probs"].max(1), p["probs"].argmax(1) != p["target"]
            # the analysis' thresholds and the runs' own confidence_threshold (0.8)
            assert analysis.thresholds == (*THRESHOLDS, 0.8)
            expected = [int((wrong & (conf >= t)).sum()) for t in analysis.thresholds]
            assert group.high_conf[row].tolist() == expected
            assert expected[0] == wrong.sum()  # threshold 0 counts every error


def test_analyze_writes_every_file_and_embeds_images(sweep, tmp_path):
    out = tmp_path / "analysis"
    cfg = _analysis_config(out, f"sweep={sweep}", "gradcam.top_n=3")
    assert analyze(cfg) == out
    for name in ("summary.md", "summary.csv", "transitions.csv", "report.md", "report.html",
                 "transitions.png", "confidence.png", "high_conf_errors.png",
                 "per_class_delta.png", "reliability.png", "gradcam_side_by_side.png"):  # fmt: skip
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    # Contents first, then the verdict; every in-page link has its target; tables scroll.
    headings = re.findall(r'<h2 id="([^"]+)">([^<]+)</h2>', html)
    assert [text for _, text in headings[:2]] == ["Contents", "Verdict"]
    links = re.findall(r'<a href="#([^"]+)">', html)
    assert set(links) == {anchor for anchor, _ in headings[1:]}
    assert html.count("<table>") >= 4 and "table{border-collapse:collapse;" in html
    assert "overflow-x:auto" in re.search(r"table\{[^}]*\}", html).group(0)
    verdict = re.search(r'id="verdict">Verdict</h2>\s*<ul>\s*<li>([^<]+)</li>', html).group(1)
    assert verdict.startswith("label_smoothing vs baseline (cifar10/simple_cnn): accuracy ")
    # the runs' failures callback is off here: no threshold recorded, the closest to 0.8 counted
    assert "Confident failures (≥ 0.8): " in verdict
    images = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(images) == 6 and all(s.startswith("data:image/png;base64,") for s in images)
    md = (out / "report.md").read_text()
    assert str(sweep / "incomplete") in md and "no metrics.json" in md
    assert str(sweep / "incomplete") in (out / "summary.md").read_text()
    rows = {r["name"]: r for r in csv.DictReader((out / "summary.csv").open())}
    for improvement in IMPROVEMENTS:
        accs = [_correct(sweep / f"{improvement}_{s}").mean() for s in SEEDS]
        assert float(rows[improvement]["acc_mean"]) == pytest.approx(np.mean(accs))
        assert rows[improvement]["n_seeds"] == "2"
    assert rows["label_smoothing"]["reference"] == "cifar10/simple_cnn/baseline"
    assert rows["label_smoothing"]["constrained"] == "1"
    assert rows["label_smoothing"]["differs_in"] == "module.loss.label_smoothing: 0.0 -> 0.1"


def test_gradcam_shows_the_reference_top_failures(sweep):
    analysis = compare_groups(collect_runs(sweep=sweep), "baseline", THRESHOLDS)
    side = side_by_side(analysis.comparisons, top_n=3)
    p = _predictions(sweep / "baseline_1")  # seed 1: the smallest seed both groups have
    conf, wrong = p["probs"].max(1), p["probs"].argmax(1) != p["target"]
    expected = sorted(np.flatnonzero(wrong), key=lambda i: (-conf[i], i))[:3]
    assert side.index.tolist() == [int(p["index"][i]) for i in expected]
    assert side.target.tolist() == p["target"][expected].tolist()
    assert [c.title for c in side.columns] == ["baseline (seed 1)", "label_smoothing (seed 1)"]
    ls = _predictions(sweep / "label_smoothing_1")
    assert side.columns[1].pred.tolist() == ls["probs"].argmax(1)[expected].tolist()
    for column in side.columns:
        assert column.heatmaps.shape == (3, 32, 32)
        assert column.heatmaps.min() >= 0 and column.heatmaps.max() <= 1
        assert (column.method, column.target_layer) == ("gradcam", "block3")


def test_one_seed_reports_no_spread(sweep, tmp_path):
    out = tmp_path / "analysis"
    runs = f"runs=[{sweep / 'baseline_1'},{sweep / 'label_smoothing_1'}]"
    analyze(_analysis_config(out, runs, "gradcam.top_n=0"))
    rows = {r["name"]: r for r in csv.DictReader((out / "summary.csv").open())}
    for row in rows.values():
        assert row["n_seeds"] == "1"
        assert row["acc_std"] == row["acc_ci_low"] == row["acc_ci_high"] == ""
    assert rows["label_smoothing"]["paired_p_unadjusted"] == ""
    assert rows["label_smoothing"]["verdict"] == "untested"
    assert "n/a" in (out / "summary.md").read_text()


def edit_run(source: Path, target: Path, **changes: object) -> Path:
    """Copy run ``source`` to ``target`` and set dotted config keys in its run.json."""
    shutil.copytree(source, target)
    record = json.loads((target / "run.json").read_text())
    cfg = OmegaConf.create(record["config"])
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    record["config"] = OmegaConf.to_container(cfg)
    (target / "run.json").write_text(json.dumps(record))
    return target


def test_other_model_is_never_pooled(sweep, tmp_path):
    other = edit_run(sweep / "baseline_2", tmp_path / "other_model", model__name="other_cnn")
    analysis = compare_groups(collect_runs([other], sweep=sweep), "baseline", THRESHOLDS)
    labels = {g.key.label: len(g.runs) for g in analysis.groups}
    assert labels == {
        "cifar10/simple_cnn/baseline": 2,
        "cifar10/simple_cnn/label_smoothing": 2,
        "cifar10/other_cnn/baseline": 1,
    }
    assert all(c.reference.key.model == c.other.key.model for c in analysis.comparisons)


def test_groups_differing_in_epochs_are_apart_and_unconstrained(sweep, tmp_path):
    longer = [
        edit_run(sweep / f"label_smoothing_{s}", tmp_path / f"ls30_{s}", trainer__max_epochs=30)
        for s in SEEDS
    ]
    base30 = edit_run(sweep / "baseline_1", tmp_path / "b30", trainer__max_epochs=30)
    analysis = compare_groups(collect_runs([*longer, base30], sweep=sweep), "baseline", THRESHOLDS)
    names = {g.key.name: [r.seed for r in g.runs] for g in analysis.groups}
    assert names == {
        "baseline [trainer.max_epochs=2]": [1, 2],
        "baseline [trainer.max_epochs=30]": [1],
        "label_smoothing [trainer.max_epochs=2]": [1, 2],
        "label_smoothing [trainer.max_epochs=30]": [1, 2],
    }
    # Each group is compared with the baseline it differs from least: the same epochs.
    refs = {c.other.key.name: c.reference.key.name for c in analysis.comparisons}
    assert refs == {
        "label_smoothing [trainer.max_epochs=2]": "baseline [trainer.max_epochs=2]",
        "label_smoothing [trainer.max_epochs=30]": "baseline [trainer.max_epochs=30]",
    }
    assert all(c.constrained for c in analysis.comparisons)

    # With only the 2-epoch baseline as reference, the 30-epoch runs are unconstrained.
    analysis = compare_groups(collect_runs(longer, sweep=sweep), "baseline", THRESHOLDS)
    (unconstrained,) = [c for c in analysis.comparisons if not c.constrained]
    assert unconstrained.other.key.name == "label_smoothing [trainer.max_epochs=30]"
    assert unconstrained.unconstrained_keys == ["trainer.max_epochs"]
    assert unconstrained.changed_keys == ["module.loss.label_smoothing"]
    assert any("unconstrained comparison" in n and "trainer.max_epochs: 2 -> 30" in n
               for n in analysis.notes)  # fmt: skip
    out = tmp_path / "report"
    analyze(_analysis_config(out, f"runs=[{','.join(map(str, longer))}]", f"sweep={sweep}",
                             "gradcam.top_n=0"))  # fmt: skip
    summary = (out / "summary.md").read_text()
    assert "UNCONSTRAINED: trainer.max_epochs: 2 -> 30" in summary
    assert "(unconstrained comparison)" in (out / "report.md").read_text()


def test_reference_picks_one_of_same_named_groups_by_its_items(sweep, tmp_path):
    # e.g. the same recipe in two precisions: reference='baseline [trainer.max_epochs=30]'
    longer = [
        edit_run(sweep / f"baseline_{s}", tmp_path / f"b30_{s}", trainer__max_epochs=30)
        for s in SEEDS
    ]
    runs = collect_runs([*longer, *(sweep / f"baseline_{s}" for s in SEEDS)])
    analysis = compare_groups(runs, "baseline [trainer.max_epochs=30]", THRESHOLDS)
    (comparison,) = analysis.comparisons
    assert comparison.reference.key.name == "baseline [trainer.max_epochs=30]"
    assert comparison.other.key.name == "baseline [trainer.max_epochs=2]"
    assert not comparison.constrained and comparison.unconstrained_keys == ["trainer.max_epochs"]
    assert differs_in(comparison) == "UNCONSTRAINED: trainer.max_epochs: 30 -> 2"
    # the bare name matches both: neither is compared
    assert compare_groups(runs, "baseline", THRESHOLDS).comparisons == []
    with pytest.raises(ConfigError, match="matches no group"):
        compare_groups(runs, "baseline [trainer.max_epochs=3]", THRESHOLDS)


def test_second_run_of_a_seed_is_skipped_with_reason(sweep, tmp_path):
    copy = tmp_path / "again"
    shutil.copytree(sweep / "label_smoothing_2", copy)
    collection = collect_runs([copy], sweep=sweep)
    assert len(collection.runs) == 4
    duplicate = next(s for s in collection.skipped if s.path == sweep / "label_smoothing_2")
    assert f"seed 2 of the same config already analysed from {copy}" in duplicate.reason


def test_broken_run_directories_are_skipped_with_reasons(sweep, tmp_path):
    source = sweep / "baseline_1"

    def broken(name: str) -> Path:
        target = tmp_path / "broken" / name
        shutil.copytree(source, target)
        return target

    npz = broken("truncated_npz") / "predictions.npz"
    npz.write_bytes(npz.read_bytes()[:200])
    (broken("bad_run_json") / "run.json").write_text("{not json")
    (broken("no_run_json") / "run.json").unlink()
    metrics = broken("metrics_without_acc") / "metrics.json"
    metrics.write_text(json.dumps({"test/loss": 1.0}))
    edit_run(source, tmp_path / "broken" / "other_dataset", dataset__name="mnist")
    edit_run(source, tmp_path / "broken" / "fewer_classes", dataset__name="cifar100")
    hydra_yaml = broken("bad_hydra_yaml") / ".hydra" / "config.yaml"
    hydra_yaml.write_text("model: [unclosed")  # run.json is what counts: still analysed
    collection = collect_runs(sweep=tmp_path / "broken")
    reasons = {s.path.name: s.reason for s in collection.skipped}
    assert [r.path.name for r in collection.runs] == ["bad_hydra_yaml"]
    assert "predictions.npz is unreadable (BadZipFile" in reasons["truncated_npz"]
    assert "run.json is unreadable (JSONDecodeError" in reasons["bad_run_json"]
    assert "no run.json" in reasons["no_run_json"]
    assert "no number test/acc" in reasons["metrics_without_acc"]
    assert "dataset 'mnist' is not one cnnstress analyses" in reasons["other_dataset"]
    assert "has 10 classes, cifar100 has 100" in reasons["fewer_classes"]
    # The whole analysis goes through and lists every skipped directory.
    out = tmp_path / "report"
    analyze(_analysis_config(out, f"sweep={tmp_path / 'broken'}", "gradcam.top_n=1"))
    md = (out / "report.md").read_text()
    assert all(str(tmp_path / "broken" / name) in md for name in reasons)


def test_foreign_target_in_a_run_config_is_refused(sweep, tmp_path):
    evil = edit_run(sweep / "baseline_1", tmp_path / "evil", model__net___target_="os.system")
    with pytest.raises(DataError, match=r"rebuild model\.net with _target_='os\.system'"):
        load_backbone(evil)
    nested = edit_run(
        sweep / "baseline_1", tmp_path / "nested",
        model__net__width={"_target_": "builtins.eval", "_args_": ["1"]},
    )  # fmt: skip
    with pytest.raises(DataError, match=r"width=\{'_target_': 'builtins\.eval'.* is not a plain"):
        load_backbone(nested)


def test_bad_reference_and_no_runs_are_one_line_errors(sweep, tmp_path):
    with pytest.raises(ConfigError, match="reference=cutmixx matches no group; give a group name"):
        compare_groups(collect_runs(sweep=sweep), "cutmixx", THRESHOLDS)
    with pytest.raises(DataError, match="no run directories"):
        collect_runs(sweep=tmp_path)
    with pytest.raises(ConfigError, match="runs=\\[DIR"):
        collect_runs()


def test_cli_on_sweep_and_on_empty_folder(sweep, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see the sweep fixture
    out = tmp_path / "cli"
    ok = subprocess.run(
        [sys.executable, "analyze.py", f"sweep={sweep}", f"hydra.run.dir={out}", "gradcam.top_n=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (out / "report.html").is_file() and (out / ".hydra" / "config.yaml").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run(
        [sys.executable, "analyze.py", f"sweep={empty}", f"hydra.run.dir={tmp_path / 'x'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert lines[-1] == f"cnnstress: error: no run directories (with run.json) below sweep={empty}"


def test_latest_multirun_is_analysed_when_nothing_is_named(sweep, tmp_path):
    logs = tmp_path / "outputs"
    for when in ("2026-11-22/23-59-59", "2026-11-23/09-00-00", "2026-11-23/09-00-00-1"):
        shutil.copytree(sweep / "baseline_1", logs / "multiruns" / when / "0")
    (logs / "multiruns" / "2026-11-24" / "00-00-00").mkdir(parents=True)  # holds no run
    assert latest_multirun(logs).name == "09-00-00-1"
    assert latest_multirun(logs, 3).name == "23-59-59"
    with pytest.raises(ConfigError, match="only 3 multirun"):
        latest_multirun(logs, 4)
    newest = logs / "multiruns" / "2026-11-23" / "09-00-00-1"
    shutil.rmtree(newest / "0")
    for name in ("baseline_1", "label_smoothing_1"):
        shutil.copytree(sweep / name, newest / name)
    out = analyze(_analysis_config(tmp_path / "report", f"paths.log_dir={logs}", "gradcam.top_n=0"))
    assert f"sweep={newest}" in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="no multirun with runs under"):
        analyze(_analysis_config(tmp_path / "r2", f"paths.log_dir={tmp_path / 'none'}"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("thresholds=[0.5,1.5]", r"^thresholds must be a non-empty list, each item a probability "
                                 r"in \[0, 1\], got \[0.5, 1.5\]$"),
        ("thresholds=[]", r"^thresholds must be a non-empty list"),
        ("gradcam.top_n=-1", r"^gradcam.top_n must be an integer >= 0, got -1$"),
        ("gradcam.method=nope", r"^gradcam.method must be one of gradcam, gradcam\+\+"),
        ("device=cuda:3", r"^device must be a torch device available here"),
        ("+colour=red", r"^unknown key colour; the top-level keys are runs, sweep"),
    ],
)  # fmt: skip
def test_bad_analysis_settings_are_one_line_before_any_work(sweep, tmp_path, override, message):
    if override.startswith("device") and torch.cuda.is_available():
        pytest.skip("a CUDA device exists on this machine: cuda:3 may be valid")
    with pytest.raises(ConfigError, match=message):
        analyze(_analysis_config(tmp_path / "out", f"sweep={sweep}", override))
    assert not (tmp_path / "out" / "report.html").exists()
