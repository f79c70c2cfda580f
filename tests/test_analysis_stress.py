"""analyze.py stress=[...] on tiny trained runs: per-run stress.json, seed aggregates, mCE,
the report's Stress section, and the command line (composition and unknown names)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from cnnstress.analysis.runs import GroupKey
from cnnstress.analysis.statistics import holm
from cnnstress.analysis.stress import StressGroup, holm_families
from cnnstress.app.analyze import analyze
from cnnstress.core.errors import ConfigError
from tests.conftest import ROOT, compose_train_config
from tests.test_analysis_end_to_end import _train_run, noisy_zip

SEEDS = (1, 2)
IMPROVEMENTS = ("baseline", "label_smoothing")
TYPES = ("gaussian_noise", "brightness")
STRESS = (
    "stress=[corruptions,adversarial,calibration,background]",
    "stress.background.cam_images=16",
    "stress.corruptions.max_images=40",
    f"stress.corruptions.types=[{','.join(TYPES)}]",
    "stress.corruptions.severities=[1,5]",
    "stress.adversarial.max_images=40",
    "stress.adversarial.pgd_steps=2",
    "stress.calibration.max_iter=20",
    "gradcam.top_n=0",
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four tiny runs (two improvements x two seeds) analysed with three stresses."""
    data = noisy_zip(tmp_path_factory.mktemp("data") / "noisy.zip", {"train": 16, "test": 8})
    sweep = tmp_path_factory.mktemp("sweep")
    out = tmp_path_factory.mktemp("analysis")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: see tests/test_analysis_end_to_end.py
    try:
        for improvement in IMPROVEMENTS:
            for seed in SEEDS:
                _train_run(sweep / f"{improvement}_{seed}", data, improvement, seed)
        analyze(compose_train_config(out, [f"sweep={sweep}", *STRESS], config_name="analyze"))
    finally:
        torch.set_num_threads(threads)
    return sweep, out


def _stress(sweep: Path, improvement: str, seed: int) -> dict:
    return json.loads((sweep / f"{improvement}_{seed}" / "stress.json").read_text())


def _rows(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    rows = csv.DictReader((out / "stress.csv").open())
    return {(r["name"], r["metric"]): r for r in rows}


def test_every_run_has_its_stress_json(analysed):
    sweep, _ = analysed
    for improvement in IMPROVEMENTS:
        for seed in SEEDS:
            stress = _stress(sweep, improvement, seed)
            for severity in (1, 5):
                for name in TYPES:
                    assert 0 <= stress[f"corruptions/{name}/{severity}/acc"] <= 1
            assert stress["corruptions/num_images"] == 40
            assert {"adversarial/fgsm/eps8/acc", "adversarial/pgd/eps8/acc"} <= set(stress)
            assert stress["calibration/temperature"] > 0
            assert (sweep / f"{improvement}_{seed}" / "stress_corruptions.png").is_file()


@pytest.mark.parametrize(
    "metric",
    ["corruptions/mean_acc", "corruptions/brightness/5/acc", "adversarial/pgd/eps8/acc",
     "adversarial/fgsm/eps1/acc", "calibration/ece_after", "calibration/nll_before",
     "calibration/temperature"],
)  # fmt: skip
def test_summary_is_the_mean_over_seeds_of_stress_json(analysed, metric):
    sweep, out = analysed
    rows = _rows(out)
    for improvement in IMPROVEMENTS:
        values = [_stress(sweep, improvement, s)[metric] for s in SEEDS]
        row = rows[(improvement, metric)]
        assert float(row["mean"]) == pytest.approx(np.mean(values))
        assert float(row["std"]) == pytest.approx(np.std(values, ddof=1))
        assert row["n_seeds"] == "2"
    ref = np.mean([_stress(sweep, "baseline", s)[metric] for s in SEEDS])
    other = rows[("label_smoothing", metric)]
    assert float(other["delta_of_means"]) == pytest.approx(float(other["mean"]) - ref)
    assert other["reference"] == "cifar10/simple_cnn/baseline"
    assert rows[("baseline", metric)]["reference"] == ""


def test_mce_is_relative_to_the_reference_group(analysed):
    sweep, out = analysed
    rows = _rows(out)
    assert float(rows[("baseline", "corruptions/mce")]["mean"]) == pytest.approx(1.0)

    def errors(improvement: str, seed: int, name: str) -> np.ndarray:
        stress = _stress(sweep, improvement, seed)
        return np.array([1 - stress[f"corruptions/{name}/{s}/acc"] for s in (1, 5)])

    # By hand: CE_c = sum over severities of the run's errors / the same sum of the
    # reference's errors averaged over its seeds; mCE = mean over types; then mean over seeds.
    base = {n: np.mean([errors("baseline", s, n) for s in SEEDS], axis=0).sum() for n in TYPES}
    ces = [[errors("label_smoothing", s, n).sum() / base[n] for n in TYPES] for s in SEEDS]
    mces = [np.mean(per_type) for per_type in ces]
    row = rows[("label_smoothing", "corruptions/mce")]
    assert float(row["mean"]) == pytest.approx(np.mean(mces))
    assert row["seeds"] == "1;2"


def test_report_has_the_stress_section_and_figures(analysed):
    _, out = analysed
    md = (out / "report.md").read_text()
    assert "## Stress" in md and "corruptions/mce" in md and "adversarial/pgd/eps8/acc" in md
    assert "stress_corruptions.png" in md and "stress_adversarial.png" in md
    assert "## Stress" in (out / "summary.md").read_text()
    html = (out / "report.html").read_text()
    assert '<h2 id="stress">Stress</h2>' in html
    # five analysis figures (no Grad-CAM), two stress figures and the background one, embedded
    images = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(images) == 8 and all(s.startswith("data:image/png;base64,") for s in images)
    assert (out / "stress_corruptions.png").stat().st_size > 0


def test_unknown_stress_section_is_a_config_error(analysed, tmp_path):
    sweep, _ = analysed
    with pytest.raises(ConfigError, match="unknown stress 'nope'; valid: adversarial, background"):
        compose_train_config(tmp_path, [f"sweep={sweep}", "+stress.nope.x=1"], "analyze")


def test_cli_composes_one_stress_and_rejects_unknown_names(analysed, tmp_path):
    sweep, _ = analysed
    copies = tmp_path / "runs"  # a copy: the fixture's stress.json files stay as analysed
    for name in ("baseline_1", "label_smoothing_1"):
        shutil.copytree(sweep / name, copies / name)
    out = tmp_path / "cli"
    runs = f"runs=[{copies / 'baseline_1'},{copies / 'label_smoothing_1'}]"
    ok = subprocess.run(
        [sys.executable, "analyze.py", runs, f"hydra.run.dir={out}", "gradcam.top_n=0",
         "stress=[corruptions]", "stress.corruptions.max_images=20",
         "stress.corruptions.types=[brightness]", "stress.corruptions.severities=[2]"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    rows = _rows(out)
    assert rows[("baseline", "corruptions/mce")]["mean"] == "1.0"
    assert rows[("label_smoothing", "corruptions/mean_acc")]["n_seeds"] == "1"
    assert rows[("label_smoothing", "corruptions/mean_acc")]["std"] == ""
    stress = _stress(copies, "baseline", 1)
    assert stress["corruptions/num_types"] == 1 and "adversarial/pgd/eps8/acc" in stress
    bad = subprocess.run(
        [sys.executable, "analyze.py", "stress=[nope]", f"sweep={sweep}",
         f"hydra.run.dir={tmp_path / 'bad'}"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "cnnstress: error: unknown stress option 'nope'; valid choices: adversarial, "
        "background, calibration, corruptions, faithfulness, shift"
    )


def test_background_reliance_section_with_its_statistics(analysed):
    sweep, out = analysed
    rows = _rows(out)
    for metric in ("background/surround_share", "background/only_surround/acc",
                   "background/bg_gap"):  # fmt: skip
        values = {i: [_stress(sweep, i, s)[metric] for s in SEEDS] for i in IMPROVEMENTS}
        for improvement in IMPROVEMENTS:
            row = rows[(improvement, metric)]
            assert float(row["mean"]) == pytest.approx(np.mean(values[improvement]))
        paired = stats.ttest_rel(values["label_smoothing"], values["baseline"])
        row = rows[("label_smoothing", metric)]
        if np.ptp(np.subtract(values["label_smoothing"], values["baseline"])) > 1e-12:
            assert float(row["paired_p_unadjusted"]) == pytest.approx(paired.pvalue)
            assert float(row["paired_p_holm"]) >= float(row["paired_p_unadjusted"])
            assert row["holm_family"].startswith(
                "background headline vs cifar10/simple_cnn/baseline ("
            )
    assert any(m.startswith("background/class/") for _, m in rows)
    report = (out / "report.md").read_text()
    section = report.split("## Background reliance", 1)[1].split("\n## ", 1)[0]
    ref = np.mean([_stress(sweep, "baseline", s)["background/surround_share"] for s in SEEDS])
    other = np.mean(
        [_stress(sweep, "label_smoothing", s)["background/surround_share"] for s in SEEDS]
    )
    assert f"the surround share (cue conflict) from {ref:.3f} to {other:.3f}" in section
    assert "proxy" in section and "![" in section  # the figure next to accuracy
    assert (out / "background.png").stat().st_size > 0
    assert "## Background reliance" in (out / "summary.md").read_text()


def test_stress_p_values_are_holm_adjusted_per_stress_and_reference():
    def group(name: str, shift: float, reference: StressGroup | None = None) -> StressGroup:
        values = {
            metric: {s: base + shift * (1 + 0.1 * s) for s in range(3)}
            for metric, base in (("corruptions/mean_acc", 0.8), ("corruptions/mce", 1.0),
                                 ("background/bg_gap", 0.7), ("corruptions/fog/1/acc", 0.9))
        }  # fmt: skip
        return StressGroup(GroupKey("cifar10", "net", name), values, reference)

    ref = group("baseline", 0.0)
    others = [group("cutout", 0.01, ref), group("mixup", -0.02, ref)]
    adjusted, sizes = holm_families([ref, *others])
    corruptions = [(g.key, m) for g in others for m in ("corruptions/mean_acc", "corruptions/mce")]
    raw = [others[0].paired(m).pvalue for m in ("corruptions/mean_acc", "corruptions/mce")]
    raw += [others[1].paired(m).pvalue for m in ("corruptions/mean_acc", "corruptions/mce")]
    assert [adjusted[k] for k in corruptions] == pytest.approx(holm(raw))
    assert {sizes[k] for k in corruptions} == {4}
    background = [(g.key, "background/bg_gap") for g in others]
    assert [adjusted[k] for k in background] == pytest.approx(
        holm([g.paired("background/bg_gap").pvalue for g in others])
    )
    assert (others[0].key, "corruptions/fog/1/acc") not in adjusted  # a detail: unadjusted
