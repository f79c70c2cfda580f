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
from cnnstress.analysis.seed_table import Metric, SeedTable
from cnnstress.analysis.statistics import holm
from cnnstress.analysis.stress import _holm
from cnnstress.app.analyze import analyze
from cnnstress.core.errors import ConfigError
from tests.conftest import ROOT, compose_train_config
from tests.integration.test_analyze import _train_run, noisy_zip

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
    torch.set_num_threads(1)  # tiny tensors: see tests/integration/test_analyze.py
    try:
        for improvement in IMPROVEMENTS:
            for seed in SEEDS:
                _train_run(sweep / f"{improvement}_{seed}", data, improvement, seed)
        analyze(compose_train_config(out, [f"sweep={sweep}", *STRESS], config_name="analyze"))
    finally:
        torch.set_num_threads(threads)
    return sweep, out


def _stored(run: Path) -> dict:
    return json.loads((run / "stress.json").read_text())["stresses"]


def _value(sweep: Path, improvement: str, seed: int, stress: str, metric: str, **where) -> float:
    """One measurement of a run's stress.json."""
    rows = _stored(sweep / f"{improvement}_{seed}")[stress]["measurements"]
    (row,) = [r for r in rows if r["metric"] == metric and r["where"] == where]
    return row["value"]


def _rows(out: Path) -> dict[tuple, dict[str, str]]:
    """stress.csv by (group name, stress, metric, the conditions as sorted (name, text) pairs)."""
    rows = {}
    for r in csv.DictReader((out / "stress.csv").open()):
        fixed = {"dataset", "model", "name", "label", "is_reference", "stress", "metric",
                 "headline", "n_seeds", "seeds", "mean", "std", "ci_low", "ci_high", "reference",
                 "delta_of_means", "paired_n", "paired_delta_mean", "paired_delta_std",
                 "paired_t", "paired_p_unadjusted", "paired_p_holm", "holm_family"}  # fmt: skip
        where = tuple(sorted((k, v) for k, v in r.items() if k not in fixed and v != ""))
        rows[(r["name"], r["stress"], r["metric"], where)] = r
    return rows


EPS8 = 8 / 255


@pytest.mark.slow
def test_every_run_has_its_stress_json(analysed):
    sweep, _ = analysed
    for improvement in IMPROVEMENTS:
        for seed in SEEDS:
            stored = _stored(sweep / f"{improvement}_{seed}")
            assert set(stored) == {"corruptions", "adversarial", "calibration", "background"}
            for severity in (1, 5):
                for name in TYPES:
                    acc = _value(sweep, improvement, seed, "corruptions", "acc",
                                 corruption=name, severity=severity)  # fmt: skip
                    assert 0 <= acc <= 1
            corruptions = stored["corruptions"]
            assert corruptions["info"]["num_images"] == 40
            assert corruptions["computed_by"] == "analyze.py"
            assert corruptions["settings"]["max_images"] == 40
            assert corruptions["device"] == "cpu"
            for attack in ("fgsm", "pgd"):
                assert _value(sweep, improvement, seed, "adversarial", "acc", attack=attack,
                              eps=pytest.approx(EPS8)) is not None  # fmt: skip
            assert _value(sweep, improvement, seed, "calibration", "temperature") > 0
            assert (sweep / f"{improvement}_{seed}" / "stress_corruptions.png").is_file()


CHECKED = [
    ("corruptions", "mean_acc", {"types": "benchmark"}),
    ("corruptions", "acc", {"corruption": "brightness", "severity": 5}),
    ("adversarial", "acc", {"attack": "pgd", "eps": EPS8}),
    ("adversarial", "acc", {"attack": "fgsm", "eps": 1 / 255}),
    ("calibration", "ece_after", {}),
    ("calibration", "nll_before", {}),
    ("calibration", "temperature", {}),
]


def _matching(sweep, improvement, seed, stress, metric, where) -> float:
    rows = _stored(sweep / f"{improvement}_{seed}")[stress]["measurements"]
    (row,) = [r for r in rows if r["metric"] == metric and r["where"].keys() == where.keys()
              and all(r["where"][k] == pytest.approx(v) for k, v in where.items())]  # fmt: skip
    return row["value"]


def _csv_row(rows, improvement, stress, metric, where) -> dict[str, str]:
    (row,) = [r for (name, s, m, w), r in rows.items()
              if (name, s, m) == (improvement, stress, metric) and dict(w).keys() == where.keys()
              and all(float(dict(w)[k]) == pytest.approx(v) if isinstance(v, float)
                      else dict(w)[k] == str(v) for k, v in where.items())]  # fmt: skip
    return row


@pytest.mark.slow
@pytest.mark.parametrize(("stress", "metric", "where"), CHECKED)
def test_summary_is_the_mean_over_seeds_of_stress_json(analysed, stress, metric, where):
    sweep, out = analysed
    rows = _rows(out)
    for improvement in IMPROVEMENTS:
        values = [_matching(sweep, improvement, s, stress, metric, where) for s in SEEDS]
        row = _csv_row(rows, improvement, stress, metric, where)
        assert float(row["mean"]) == pytest.approx(np.mean(values))
        assert float(row["std"]) == pytest.approx(np.std(values, ddof=1))
        assert row["n_seeds"] == "2"
    ref = np.mean([_matching(sweep, "baseline", s, stress, metric, where) for s in SEEDS])
    other = _csv_row(rows, "label_smoothing", stress, metric, where)
    assert float(other["delta_of_means"]) == pytest.approx(float(other["mean"]) - ref)
    assert other["reference"] == "cifar10/simple_cnn/baseline"
    assert _csv_row(rows, "baseline", stress, metric, where)["reference"] == ""


@pytest.mark.slow
def test_mce_is_relative_to_the_reference_group(analysed):
    sweep, out = analysed
    rows = _rows(out)
    assert float(rows[("baseline", "corruptions", "mce", ())]["mean"]) == pytest.approx(1.0)

    def errors(improvement: str, seed: int, name: str) -> np.ndarray:
        return np.array([1 - _value(sweep, improvement, seed, "corruptions", "acc",
                                    corruption=name, severity=s) for s in (1, 5)])  # fmt: skip

    # By hand: CE_c = sum over severities of the run's errors / the same sum of the
    # reference's errors averaged over its seeds; mCE = mean over types; then mean over seeds.
    base = {n: np.mean([errors("baseline", s, n) for s in SEEDS], axis=0).sum() for n in TYPES}
    ces = [[errors("label_smoothing", s, n).sum() / base[n] for n in TYPES] for s in SEEDS]
    mces = [np.mean(per_type) for per_type in ces]
    row = rows[("label_smoothing", "corruptions", "mce", ())]
    assert float(row["mean"]) == pytest.approx(np.mean(mces))
    assert row["seeds"] == "1;2"


@pytest.mark.slow
def test_report_has_the_stress_section_and_figures(analysed):
    _, out = analysed
    md = (out / "report.md").read_text()
    assert "## Stress" in md and "corruptions mce" in md and "mCE / relative mCE" in md
    assert "adversarial acc (attack=pgd, eps=8/255)" in md
    assert "stress_corruptions.png" in md and "stress_adversarial.png" in md
    # where the numbers came from, stress by stress
    assert "corruptions, cifar10/simple_cnn: 4 runs, computed by analyze.py (4) on cpu" in md
    assert "## Stress" in (out / "summary.md").read_text()
    html = (out / "report.html").read_text()
    assert '<h2 id="stress">Stress</h2>' in html
    # five analysis figures (no Grad-CAM), two stress figures and the background one, embedded
    images = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(images) == 8 and all(s.startswith("data:image/png;base64,") for s in images)
    assert (out / "stress_corruptions.png").stat().st_size > 0


@pytest.mark.slow
def test_stored_numbers_are_reused_and_other_settings_recomputed(analysed, tmp_path):
    sweep, _ = analysed
    copies = tmp_path / "runs"  # a copy: the fixture's stress.json files stay as analysed
    shutil.copytree(sweep, copies)
    before = {p.name: _stored(p) for p in copies.iterdir()}
    # without stress=: the stored numbers are shown as they are
    out = tmp_path / "stored"
    analyze(compose_train_config(out, [f"sweep={copies}", "gradcam.top_n=0"], "analyze"))
    assert {p.name: _stored(p) for p in copies.iterdir()} == before
    assert "## Stress" in (out / "report.md").read_text()
    assert ("label_smoothing", "calibration", "temperature", ()) in _rows(out)
    # the same settings: reused, nothing recomputed
    out = tmp_path / "same"
    analyze(compose_train_config(out, [f"sweep={copies}", *STRESS], "analyze"))
    assert {p.name: _stored(p) for p in copies.iterdir()} == before
    # other settings for one stress: that stress is recomputed, the others kept
    out = tmp_path / "other"
    changed = [a for a in STRESS if not a.startswith("stress.calibration")]
    analyze(compose_train_config(out, [f"sweep={copies}", *changed,
                                       "stress.calibration.max_iter=5"], "analyze"))  # fmt: skip
    for run in copies.iterdir():
        after = _stored(run)
        assert after["calibration"]["settings"]["max_iter"] == 5
        assert after["calibration"]["time"] >= before[run.name]["calibration"]["time"]
        assert after["corruptions"] == before[run.name]["corruptions"]


@pytest.mark.slow
def test_runs_with_other_settings_are_left_out_with_a_note(analysed, tmp_path):
    sweep, _ = analysed
    copies = tmp_path / "runs"
    shutil.copytree(sweep, copies)
    path = copies / "label_smoothing_2" / "stress.json"
    data = json.loads(path.read_text())
    data["stresses"]["calibration"]["settings"]["max_iter"] = 7  # planted: other settings
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    analyze(compose_train_config(out, [f"sweep={copies}", "gradcam.top_n=0"], "analyze"))
    rows = _rows(out)
    assert rows[("label_smoothing", "calibration", "temperature", ())]["seeds"] == "1"
    assert rows[("baseline", "calibration", "temperature", ())]["seeds"] == "1;2"
    md = (out / "report.md").read_text()
    assert "calibration (cifar10/simple_cnn): 1 of 4 runs computed it with other settings" in md


@pytest.mark.slow
def test_unknown_stress_section_is_a_config_error(analysed, tmp_path):
    sweep, _ = analysed
    with pytest.raises(ConfigError, match="unknown stress 'nope'; valid: adversarial, background"):
        compose_train_config(tmp_path, [f"sweep={sweep}", "+stress.nope.x=1"], "analyze")


@pytest.mark.slow
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
    assert rows[("baseline", "corruptions", "mce", ())]["mean"] == "1.0"
    mean_acc = rows[("label_smoothing", "corruptions", "mean_acc", (("types", "benchmark"),))]
    assert (mean_acc["n_seeds"], mean_acc["std"]) == ("1", "")
    stored = _stored(copies / "baseline_1")
    assert stored["corruptions"]["info"]["num_types"] == 1  # recomputed: other settings
    assert "adversarial" in stored  # kept
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


BACKGROUND = [
    ("surround_share", {}, "the surround share (cue conflict)"),
    ("acc", {"image": "only_surround"}, None),
    ("bg_gap", {}, None),
]


@pytest.mark.slow
def test_background_reliance_section_with_its_statistics(analysed):
    sweep, out = analysed
    rows = _rows(out)
    report = (out / "report.md").read_text()
    section = report.split("## Background reliance", 1)[1].split("\n## ", 1)[0]
    for metric, where, said in BACKGROUND:
        values = {i: [_value(sweep, i, s, "background", metric, **where) for s in SEEDS]
                  for i in IMPROVEMENTS}  # fmt: skip
        key = tuple(sorted(where.items()))
        for improvement in IMPROVEMENTS:
            row = rows[(improvement, "background", metric, key)]
            assert float(row["mean"]) == pytest.approx(np.mean(values[improvement]))
        row = rows[("label_smoothing", "background", metric, key)]
        if np.ptp(np.subtract(values["label_smoothing"], values["baseline"])) > 1e-12:
            paired = stats.ttest_rel(values["label_smoothing"], values["baseline"])
            assert float(row["paired_p_unadjusted"]) == pytest.approx(paired.pvalue)
            assert float(row["paired_p_holm"]) >= float(row["paired_p_unadjusted"])
            assert row["holm_family"].startswith(
                "background headline vs cifar10/simple_cnn/baseline ("
            )
        if said:
            ref, other = np.mean(values["baseline"]), np.mean(values["label_smoothing"])
            assert f"{said} from {ref:.3f} to {other:.3f}" in section
    assert any(s == "background" and "class" in dict(w) for _, s, _, w in rows)
    assert "proxy" in section and "![" in section  # the figure next to accuracy
    assert (out / "background.png").stat().st_size > 0
    assert "## Background reliance" in (out / "summary.md").read_text()


def test_stress_p_values_are_holm_adjusted_per_stress_and_reference():
    table = SeedTable()
    ref, cutout, mixup = (GroupKey("cifar10", "net", n) for n in ("baseline", "cutout", "mixup"))
    metrics = [Metric("corruptions", "mean_acc"), Metric("corruptions", "mce"),
               Metric("background", "bg_gap"),
               Metric("corruptions", "acc", (("corruption", "fog"),), headline=False)]  # fmt: skip
    for key, shift in ((ref, 0.0), (cutout, 0.01), (mixup, -0.02)):
        for metric, base in zip(metrics, (0.8, 1.0, 0.7, 0.9), strict=True):
            for s in range(3):
                table.add(key, metric, s, base + shift * (1 + 0.1 * s) + 0.001 * s * s)
    others = (cutout, mixup)
    adjusted, sizes = _holm(table, {cutout: ref, mixup: ref}, metrics)
    corruptions = [(k, m) for k in others for m in metrics[:2]]
    raw = [table.paired(ref, k, m).pvalue for k, m in corruptions]
    assert [adjusted[k] for k in corruptions] == pytest.approx(holm(raw))
    assert {sizes[k] for k in corruptions} == {4}
    background = [(k, metrics[2]) for k in others]
    assert [adjusted[k] for k in background] == pytest.approx(
        holm([table.paired(ref, k, metrics[2]).pvalue for k in others])
    )
    assert (cutout, metrics[3]) not in adjusted  # a detail: unadjusted


def test_train_time_stress_numbers_are_in_the_report_without_stress(trained_run, tmp_path):
    """stress=[...] at the end of training: analyze.py shows those numbers without computing."""
    before = (trained_run / "stress.json").read_bytes()
    out = tmp_path / "out"
    analyze(compose_train_config(out, [f"runs=[{trained_run}]", "gradcam.top_n=0"], "analyze"))
    assert (trained_run / "stress.json").read_bytes() == before  # nothing recomputed
    md = (out / "report.md").read_text()
    assert "Stresses: adversarial, calibration." in md
    assert "mCE / relative mCE" not in md  # method notes only of the stresses shown
    assert "calibration, cifar10/simple_cnn: 1 run, computed by train.py (1) on cpu" in md
    temperature = _stored(trained_run)["calibration"]["measurements"]
    (row,) = [r for r in temperature if r["metric"] == "temperature"]
    assert float(_rows(out)[("baseline", "calibration", "temperature", ())]["mean"]) == (
        pytest.approx(row["value"])
    )
