"""Failure modes across seeds and improvements; Grad-CAM agreement across seeds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cnnstress.analysis.failure_modes import (
    Correctness,
    FailureModeAnalysis,
    GroupModes,
    analyse_failure_modes,
    cam_agreement,
    fixes,
    jaccard,
    jaccard_matrix,
    judge,
    match_across_seeds,
    spearman_rows,
)
from cnnstress.analysis.runs import load_run
from cnnstress.core.cam import compute_heatmaps
from cnnstress.core.data.classes import CIFAR10_CLASSES
from cnnstress.core.errors import ConfigError
from cnnstress.core.failure_modes.modes import FailureMode, FailureModes, ModeGrouping, PairCount
from cnnstress.core.models import SimpleCNN
from cnnstress.core.plots.canvas import figure_to_array
from cnnstress.report.failure_modes import agreement_sentence, fix_sentence
from cnnstress.report.figures.failure_modes import failure_mode_fixes_figure
from cnnstress.train.training import train
from tests.conftest import prepared

pytestmark = pytest.mark.usefixtures("one_thread")

N = 1000  # test images 0..999


def mode(k: int, members, true: int = 8, predicted: int = 0, traits=("bright surround",)):
    members = tuple(sorted(members))
    pair = f"{CIFAR10_CLASSES[true]} -> {CIFAR10_CLASSES[predicted]}"
    return FailureMode(
        id=k,
        size=len(members),
        true=true,
        predicted=predicted,
        purity=1.0,
        composition=(PairCount(true, predicted, len(members)),),
        class_share=0.1,
        mean_confidence=0.9,
        label_errors=None,
        attributes=(),
        traits=tuple(traits),
        cam_outside=None,
        cam_images=0,
        description=f"{pair}, {len(members)} images (10.0% of class {CIFAR10_CLASSES[true]}): "
        + "; ".join(traits),
        members=members,
        typicality=(1.0,) * len(members),
    )


def run_modes(*modes: FailureMode) -> FailureModes:
    grouping = ModeGrouping("errors", sum(m.size for m in modes), tuple(modes), ())
    return FailureModes(
        classes=CIFAR10_CLASSES,
        threshold=0.8,
        num_images=N,
        official_index=True,
        embedding_layer="fc (input)",
        embedding_dim=8,
        centre_size=16,
        cam_method=None,
        cam_layer=None,
        settings={},
        errors=grouping,
        confident=ModeGrouping("confident", 0, (), ()),
    )


# A mode found in all three seeds (images 0..59 shifted by 10 per seed: 50 of 60 shared with
# the neighbouring seed), a seed-specific one (seed 2 only), and two small modes of another pair
# in seeds 1 and 3 that share too little to match.
STABLE = {1: range(0, 60), 2: range(10, 70), 3: range(20, 80)}
SPECIFIC = range(200, 230)
LOOSE = {1: range(300, 320), 3: range(316, 336)}  # Jaccard 4 / 36 = 0.11 < 0.2


def reference_group() -> dict[int, FailureModes]:
    return {
        1: run_modes(mode(0, STABLE[1]), mode(1, LOOSE[1], 3, 5, ())),
        2: run_modes(mode(0, STABLE[2]), mode(1, SPECIFIC, 1, 9, ("dark centre",))),
        3: run_modes(mode(0, STABLE[3]), mode(1, LOOSE[3], 3, 5, ())),
    }


def test_matching_finds_the_planted_stable_mode_and_leaves_the_others_unmatched():
    matching = match_across_seeds(reference_group())
    assert matching.seeds == (1, 2, 3)
    [stable] = matching.stable
    assert stable.seeds == (1, 2, 3) and stable.num_seeds == 3 and stable.id == 0
    assert (stable.true, stable.predicted) == (8, 0)
    # seeds 1-2 and 2-3: 50 shared of 70 (Jaccard 5/7); 1-3: 40 of 80 (1/2); all three match
    assert sorted(stable.overlaps) == pytest.approx([0.5, 5 / 7, 5 / 7])
    assert stable.median_overlap == pytest.approx(5 / 7)
    assert stable.members(2) == frozenset(STABLE[2]) and stable.members(9) == frozenset()
    specific = matching.seed_specific
    assert sorted((f.seeds, f.true) for f in specific) == [((1,), 3), ((2,), 1), ((3,), 3)]
    assert all(f.median_overlap is None and not f.stable for f in specific)
    assert jaccard(frozenset(LOOSE[1]), frozenset(LOOSE[3])) == pytest.approx(4 / 36)


def test_matching_is_one_to_one_and_needs_most_seeds():
    # seed 2 splits the mode in two halves: only one half matches seed 1's mode
    group = {
        1: run_modes(mode(0, range(0, 40))),
        2: run_modes(mode(0, range(0, 20)), mode(1, range(20, 40))),
    }
    matching = match_across_seeds(group)
    assert [f.seeds for f in matching.families] == [(1, 2), (2,)]
    assert matching.families[0].stable and matching.families[0].overlaps == (0.5,)
    # one seed: nothing is stable
    assert not match_across_seeds({1: group[1]}).stable
    # four seeds: three needed
    group4 = {s: run_modes(mode(0, range(0, 40))) for s in (1, 2)}
    group4 |= {s: run_modes(mode(0, range(500, 540))) for s in (3, 4)}
    assert not match_across_seeds(group4).stable


def correctness(wrong: set[int]) -> Correctness:
    index = np.arange(N)
    return Correctness(index, ~np.isin(index, list(wrong)))


def test_fix_shares_equal_a_hand_count():
    reference = reference_group()
    ref_matching = match_across_seeds(reference)
    # the reference gets its own mode wrong in its seed; other seeds repeat part of it
    ref_runs = {s: correctness(set(STABLE[s]) | set(range(0, 30))) for s in (1, 2, 3)}
    # the improvement: per seed, a planted number of the reference mode's images fixed
    still_wrong = {1: set(range(0, 45)), 2: set(range(10, 40)), 3: set(range(20, 35))}
    imp_runs = {s: correctness(still_wrong[s] | set(range(700, 740))) for s in (1, 2, 3)}
    improvement = {
        s: run_modes(mode(0, range(700, 740), 5, 3, ("low contrast",))) for s in (1, 2, 3)
    }
    result = fixes(
        ref_matching,
        reference,
        ref_runs,
        match_across_seeds(improvement),
        improvement,
        imp_runs,
        reference_name="baseline",
        improvement_name="cutout",
    )
    [fix] = result.fixes
    # hand count: seed 1 mode = 0..59, improvement wrong on 0..44 -> 15 of 60 fixed
    assert fix.fixed == pytest.approx({1: 15 / 60, 2: 30 / 60, 3: 45 / 60})
    # re-run baseline: seed 1's images 0..59 under seeds 2 and 3: seed 2 wrong on 0..69 (all
    # 60), seed 3 wrong on 0..29 and 20..79 (all 60) -> 0 right; seed 2's images 10..69 under
    # seed 1 (wrong 0..59: 10 right) and seed 3 (wrong 0..79: 0 right) -> 5/60 ...
    assert fix.reseed == pytest.approx({1: 0.0, 2: (10 / 60 + 0) / 2, 3: (20 / 60 + 10 / 60) / 2})
    assert fix.seeds_better == 3 and fix.persists == ()
    assert fix.fixed_estimate.mean == pytest.approx(0.5)
    assert fix.test.seeds == (1, 2, 3)
    diffs = [15 / 60 - 0, 30 / 60 - 5 / 60, 45 / 60 - 15 / 60]
    assert fix.test.delta.mean == pytest.approx(np.mean(diffs))
    [new] = result.introduced  # 700..739 is no mode of the baseline: introduced
    assert (new.family.true, new.family.predicted) == (5, 3)
    assert new.reference_right == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0})
    sentence = fix_sentence(result, CIFAR10_CLASSES)
    assert sentence.startswith("cutout fixes 'ship -> airplane: bright surround' in 3 of 3 seeds, ")
    # 50% [-12, 112] over three seeds, shown within [0, 100]; re-run: mean of 0, 5/60, 15/60
    assert "50% [0, 100] of its images (a re-run: 11%)" in sentence
    assert sentence.endswith("introduces 'dog -> cat: low contrast'")


def test_an_improvement_that_keeps_the_mode_fixes_nothing_and_introduces_none():
    reference = reference_group()
    runs = {s: correctness(set(STABLE[s])) for s in (1, 2, 3)}
    result = fixes(
        match_across_seeds(reference),
        reference,
        runs,
        match_across_seeds(copy.deepcopy(reference)),
        reference,
        runs,
    )
    [fix] = result.fixes
    assert fix.fixed == {1: 0.0, 2: 0.0, 3: 0.0} and fix.persists == (1, 2, 3)
    assert result.introduced == ()
    assert fix_sentence(result, CIFAR10_CLASSES) == (
        "improvement fixes no stable failure mode of the reference beyond what a re-run fixes; "
        "introduces none"
    )


def test_spearman_and_the_judgement():
    rng = np.random.default_rng(0)
    maps = rng.random((50, 8, 8))
    np.testing.assert_allclose(spearman_rows(maps, maps), 1.0)
    np.testing.assert_allclose(spearman_rows(maps, 3 * maps**2 + 1), 1.0)  # monotone: 1
    np.testing.assert_allclose(spearman_rows(maps, -maps), -1.0)
    assert abs(np.median(spearman_rows(maps, rng.random((50, 8, 8))))) < 0.1
    assert np.isnan(spearman_rows(np.ones((1, 8, 8)), maps[:1]))[0]
    assert [judge(0.9), judge(0.5), judge(0.1)] == ["reliable", "partly", "unreliable"]


def trained_cnn(seed: int) -> SimpleCNN:
    """A tiny CNN that learned to find a bright square (class = its quadrant)."""
    torch.manual_seed(seed)
    model = SimpleCNN(4, 8)
    images, labels = squares(256, seed)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one bright 8x8 square in a random quadrant (the label)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=gen) * 0.3
    labels = torch.randint(0, 4, (n,), generator=gen)
    offset = torch.randint(0, 8, (n, 2), generator=gen)
    for i in range(n):
        y = 16 * (labels[i] // 2) + offset[i, 0]
        x = 16 * (labels[i] % 2) + offset[i, 1]
        images[i, :, y : y + 8, x : x + 8] += 2.0
    return images, labels


def test_cam_agreement_is_one_for_identical_models_and_low_for_a_randomised_one():
    model = trained_cnn(0)
    images, labels = squares(24, seed=99)
    explained = labels
    same = copy.deepcopy(model)
    randomised = SimpleCNN(4, 8).eval()  # fresh random weights
    maps = {
        name: compute_heatmaps(m, images, explained, "gradcam", "block2").numpy()
        for name, m in (("a", model), ("b", same), ("r", randomised))
    }
    index = np.arange(24)
    identical = cam_agreement({1: maps["a"], 2: maps["b"]}, index, "gradcam", "block2")
    assert identical.median == pytest.approx(1.0) and identical.judgement == "reliable"
    random = cam_agreement({1: maps["a"], 2: maps["r"]}, index, "gradcam", "block2")
    assert random.median < 0.4 and random.judgement == "unreliable"
    assert random.per_image.shape == (24,) and list(random.per_pair) == [(1, 2)]


def test_the_fixes_figure_draws_the_planted_analysis():
    reference = reference_group()
    ref_runs = {s: correctness(set(STABLE[s])) for s in (1, 2, 3)}
    imp_runs = {s: correctness(set(range(0, 20))) for s in (1, 2, 3)}
    improvement = {s: run_modes(mode(0, range(0, 20))) for s in (1, 2, 3)}
    ref_matching, imp_matching = match_across_seeds(reference), match_across_seeds(improvement)
    result = fixes(
        ref_matching,
        reference,
        ref_runs,
        imp_matching,
        improvement,
        imp_runs,
        reference_name="baseline",
        improvement_name="cutout",
    )
    rng = np.random.default_rng(0)
    maps = {s: rng.random((6, 8, 8)) for s in (1, 2, 3)}
    agreement = cam_agreement(maps, np.arange(6), "gradcam", "block3")
    groups = {
        "baseline": GroupModes("baseline", (1, 2, 3), {"errors": ref_matching}, (agreement,), ()),
        "cutout": GroupModes("cutout", (1, 2, 3), {"errors": imp_matching}, (), ()),
    }
    analysis = FailureModeAnalysis(
        "baseline", groups, {"cutout": {"errors": result}}, tuple(CIFAR10_CLASSES)
    )
    figure = failure_mode_fixes_figure(analysis, "errors")
    image = figure_to_array(figure)
    assert image.ndim == 3 and image.shape[2] == 3 and image.shape[0] > 200
    left = figure.axes[0]
    assert [t.get_text() for t in left.get_yticklabels()] == [
        "ship -> airplane: bright surround (3/3\nseeds)"
    ]
    widths = sorted(round(p.get_width(), 6) for p in left.patches)
    # cutout: mean of 20/60, 10/60, 0/60 right; re-run: seed 1's images under seeds 2 and 3 ...
    assert widths[-1] == pytest.approx(100 * np.mean([40 / 60, 50 / 60, 60 / 60]))


@pytest.mark.slow
def test_analysis_of_tiny_runs_reads_or_computes_the_modes(make_config, tiny_cifar10_zip, tmp_path):
    common = (
        f"dataset.root={tiny_cifar10_zip}",
        "callbacks.gradcam=null",
        "callbacks.failure_modes.min_size=2",
        "confidence_threshold=0.1",  # a barely trained model
    )
    runs: dict[str, dict[int, object]] = {"baseline": {}, "cutout": {}}
    for name in runs:
        for seed in (1, 2):
            extra = ["callbacks.failure_modes=null"] if (name, seed) == ("baseline", 2) else []
            out = tmp_path / f"{name}{seed}"
            cfg = make_config(
                *common, f"improvement={name}", f"seed={seed}", *extra, output_dir=out
            )
            train(prepared(cfg))
            runs[name][seed] = load_run(out)
    assert not (tmp_path / "baseline2" / "failure_modes.json").exists()
    result = analyse_failure_modes(runs, "baseline", cam_top_n=4)
    baseline = result.groups["baseline"]
    assert baseline.seeds == (1, 2) and baseline.computed == (2,)  # from its checkpoint
    assert result.groups["cutout"].computed == ()
    assert set(baseline.matching) == {"errors", "confident"}
    assert [a.method for a in baseline.cam] == ["gradcam", "layercam"]
    for agreement in baseline.cam + result.groups["cutout"].cam:
        assert list(agreement.per_pair) == [(1, 2)] and agreement.seeds == (1, 2)
        assert agreement.index.size == min(4, agreement.index.size) > 0
        assert agreement.judgement in ("reliable", "partly", "unreliable")
    np.testing.assert_array_equal(baseline.cam[0].index, result.groups["cutout"].cam[0].index)
    assert agreement_sentence("baseline", baseline.cam).startswith(
        "baseline: two seeds' gradcam maps"
    )
    assert set(result.improvements["cutout"]) == {"errors", "confident"}
    assert fix_sentence(result.improvements["cutout"]["errors"], result.classes).startswith(
        "cutout fixes "
    )
    assert result.classes == tuple(CIFAR10_CLASSES)
    # untrusted run directories: a malformed failure_modes.json leaves that run out, said why
    (tmp_path / "cutout2" / "failure_modes.json").write_text('{"version": 1, "errors": 3}')
    again = analyse_failure_modes(runs, "baseline", cam_top_n=0, compute_missing=False)
    assert again.groups["cutout"].seeds == (1,)
    assert "malformed" in again.groups["cutout"].skipped[2]
    assert again.groups["baseline"].skipped[2].startswith("no failure_modes.json")
    assert again.groups["baseline"].cam_skipped.startswith("switched off")
    with pytest.raises(ConfigError, match="reference=nope is not one of the groups"):
        analyse_failure_modes(runs, "nope")


def test_the_jaccard_matrix_equals_the_pairwise_index():
    rng = np.random.default_rng(1)
    a = [frozenset(rng.choice(100, int(rng.integers(1, 30)), replace=False)) for _ in range(7)]
    b = [frozenset(rng.choice(100, int(rng.integers(1, 30)), replace=False)) for _ in range(5)]
    expected = np.array([[jaccard(x, y) for y in b] for x in a])
    np.testing.assert_allclose(jaccard_matrix(a, b), expected)
    assert jaccard_matrix([], b).shape == (0, 5)
