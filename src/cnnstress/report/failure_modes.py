"""The failure modes' sentences: the verdict's first-screen line per improvement and the
Grad-CAM agreement line per group, from :mod:`cnnstress.analysis.failure_modes` (wording only;
the numbers are the analysis')."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnstress.analysis.failure_modes import CamAgreement, ImprovementModes, ModeFamily


def fix_sentence(result: ImprovementModes, classes: Sequence[str], max_modes: int = 2) -> str:
    """The verdict's first-screen line, e.g. ``cutout fixes 'ship -> airplane: bright surround'
    in 3 of 3 seeds, 38% [27, 49] of its images (a re-run: 21%); introduces none``.

    Names the stable modes whose fix beats a re-run in every shared seed (at most
    ``max_modes``, in the reference's order: largest first); otherwise says that none does.
    Introduced modes: named up to ``max_modes``, else counted with ``max_modes`` examples.
    """
    parts = []
    for fix in result.fixes:
        n = len(fix.reseed)
        if n < 2 or fix.seeds_better < n:
            continue
        e = fix.fixed_estimate
        interval = ""
        if e.ci_low is not None and e.ci_high is not None:  # a share: shown within [0, 100]
            low, high = max(e.ci_low, 0.0), min(e.ci_high, 1.0)
            interval = f" [{100 * low:.0f}, {100 * high:.0f}]"
        reseed = float(np.nanmean(list(fix.reseed.values())))
        parts.append(
            f"'{short_name(fix.family, classes)}' in {fix.seeds_better} of {n} seeds, "
            f"{100 * e.mean:.0f}%{interval} of its images (a re-run: {100 * reseed:.0f}%)"
        )
        if len(parts) == max_modes:
            break
    text = f"{result.improvement} fixes " + (
        "; ".join(parts)
        if parts
        else ("no stable failure mode of the reference beyond what a re-run fixes")
    )
    introduced = [f"'{short_name(m.family, classes)}'" for m in result.introduced]
    if len(introduced) > max_modes:
        introduced = [f"{len(introduced)} modes, e.g. {', '.join(introduced[:max_modes])}"]
    text += "; introduces " + (", ".join(introduced) if introduced else "none")
    return text


def short_name(family: ModeFamily, classes: Sequence[str]) -> str:
    """``ship -> airplane: <traits>`` (the description without counts and CAM)."""
    pair = f"{classes[family.true]} -> {classes[family.predicted]}"
    _, _, rest = family.description.partition(": ")
    traits = rest.split("; CAM")[0]
    if not traits or traits.startswith("no measured"):
        return pair
    return f"{pair}: {traits}"


def agreement_sentence(group: str, agreements: Sequence[CamAgreement]) -> str:
    """One line per group, e.g. ``baseline: two seeds' gradcam maps of the same confident
    failure correlate 0.42 (median Spearman; layercam 0.51): a single-seed Grad-CAM story is
    partly reliable here: show more than one seed``."""
    if not agreements:
        return f"{group}: CAM agreement across seeds not measured"
    if agreements[0].index.size == 0:
        return f"{group}: the reference has no confident failure to compare CAMs on"
    if not agreements[0].per_pair:
        return f"{group}: one seed only, CAM agreement across seeds unknown"
    first = agreements[0]
    others = "; ".join(f"{a.method} {a.median:.2f}" for a in agreements[1:])
    verdict = {
        "reliable": "a single-seed Grad-CAM story is reliable here",
        "partly": "a single-seed Grad-CAM story is only partly reliable here: show more than "
        "one seed",
        "unreliable": "a single-seed Grad-CAM story is not reliable here: seeds disagree on "
        "where the model looks",
        "unknown": "agreement unknown",
    }[first.judgement]
    return (
        f"{group}: two seeds' {first.method} maps of the same confident failure correlate "
        f"{first.median:.2f} (median Spearman over {first.index.size} images x "
        f"{len(first.per_pair)} seed pairs" + (f"; {others}" if others else "") + f"): {verdict}"
    )
