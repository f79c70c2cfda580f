"""The report's failure-modes section: built from a planted analysis, rendered by its macro."""

from __future__ import annotations

from pathlib import Path

from cnnstress.analysis.failure_modes import (
    FailureModeAnalysis,
    GroupModes,
    fixes,
    match_across_seeds,
)
from cnnstress.core.data.classes import CIFAR10_CLASSES
from cnnstress.report.view import _failure_mode_verdicts, _failure_modes
from cnnstress.report.write import _environment
from tests.analysis.test_failure_modes import (
    STABLE,
    correctness,
    mode,
    reference_group,
    run_modes,
)


def planted_analysis(improvement_seeds: tuple[int, ...] = (1, 2, 3)) -> FailureModeAnalysis:
    """The reference's stable ship -> airplane mode (images 0..79) that cutout gets right
    except 0..19, in every seed; cutout's own runs have only that small mode left."""
    reference = reference_group()
    ref_runs = {s: correctness(set(STABLE[s])) for s in (1, 2, 3)}
    imp_runs = {s: correctness(set(range(0, 20))) for s in improvement_seeds}
    improvement = {s: run_modes(mode(0, range(0, 20))) for s in improvement_seeds}
    matching = {g: match_across_seeds(reference, g) for g in ("errors", "confident")}
    imp_matching = {g: match_across_seeds(improvement, g) for g in ("errors", "confident")}
    result = {
        g: fixes(
            matching[g],
            reference,
            ref_runs,
            imp_matching[g],
            improvement,
            imp_runs,
            reference_name="baseline",
            improvement_name="cutout",
        )
        for g in ("errors", "confident")
    }
    groups = {
        "baseline": GroupModes("baseline", (1, 2, 3), matching, (), (), {}, "switched off"),
        "cutout": GroupModes(
            "cutout",
            improvement_seeds,
            imp_matching,
            (),
            (),
            {4: "failure_modes.json is malformed (errors)"},
            "switched off",
        ),
    }
    return FailureModeAnalysis("baseline", groups, {"cutout": result}, tuple(CIFAR10_CLASSES))


def test_the_section_names_the_stable_mode_and_what_the_improvement_fixes(tmp_path: Path):
    results = [("cifar10/simple_cnn", planted_analysis())]
    view = _failure_modes(results, ["a note of the analysis"])
    [setting] = view.settings
    assert setting.title == "cifar10/simple_cnn (reference: baseline)"
    assert setting.notes == ["cutout, seed 4: left out: failure_modes.json is malformed (errors)"]
    assert setting.groups.rows[0][:4] == ["baseline (reference)", "1, 2, 3", "0 / 1", "0 / 3"]
    errors = next(g for g in setting.groupings if g.title.startswith("All errors"))
    assert errors.title == "All errors: 1 stable and 3 seed-specific modes of baseline"
    [stable] = errors.stable.rows
    assert stable[:3] == ["ship -> airplane: bright surround", "3 of 3", "60"]
    [fix] = errors.fixes.rows
    # cutout gets 40, 50, 60 of the 60 images right: 67, 83, 100%; t-interval 83 ± 41
    assert fix[1:4] == ["cutout", "1: 67%, 2: 83%, 3: 100%", "83% [42, 100]"]
    assert errors.sentences[0].startswith(
        "cutout fixes 'ship -> airplane: bright surround' in 3 of 3 seeds, 83% [42, 100]"
    )
    confident = next(g for g in setting.groupings if g.title.startswith("Confident"))
    assert confident.stable.rows == [] and confident.sentences[0].startswith(
        "cutout fixes no stable failure mode"
    )
    [line] = _failure_mode_verdicts(results)
    assert line.startswith("Failure modes (cifar10/simple_cnn, confident errors): cutout fixes")
    macros = _environment(tmp_path, for_html=False).get_template("sections.md.j2").module
    view_of = type("View", (), {"failure_modes": view, "figures": {"failure_modes": []}})
    text = str(macros.failure_modes(view_of, "Failure modes"))
    assert text.startswith("## Failure modes")
    assert "### cifar10/simple_cnn (reference: baseline)" in text
    assert "#### All errors: 1 stable and 3 seed-specific modes of baseline" in text
    assert "| ship -> airplane: bright surround | cutout | 1: 67%, 2: 83%, 3: 100% |" in text
    assert "No stable mode." in text and "- a note of the analysis" in text


def test_a_fix_is_unknown_without_two_reference_seeds_or_improvement_runs():
    result = planted_analysis(improvement_seeds=())
    [line] = _failure_mode_verdicts([("cifar10/simple_cnn", result)])
    assert line.endswith("cutout: unknown; none of its runs has failure modes")
    assert _failure_modes([], []) is None
