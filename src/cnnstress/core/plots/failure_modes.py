"""Failure-mode figures: a row of representative images per mode, captioned with its description
(per run), and the across-seeds/improvements summary (analysis)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import torch

from cnnstress.core.failure_modes.modes import FailureModes, ModeGrouping
from cnnstress.core.plots.canvas import figure_to_array, new_figure, to_hwc
from cnnstress.core.plots.images import image_grid

TITLES = {"errors": "all errors", "confident": "confident errors"}


def _text_strip(text: str, width: int, fontsize: int = 12, bold: bool = True) -> np.ndarray:
    """A white strip ``(h, width, 3)`` with ``text`` left-aligned, wrapped to the width."""
    dpi = 100
    # about 0.6 em per character of DejaVu Sans
    chars = max(20, int((width - 12) / (0.6 * fontsize * dpi / 72)))
    lines = textwrap.wrap(text, chars) or [""]
    height = int(len(lines) * fontsize * 1.45 * dpi / 72) + 10
    fig = new_figure(width / dpi, height / dpi, dpi)
    fig.text(
        6 / width,
        0.5,
        "\n".join(lines),
        ha="left",
        va="center",
        fontsize=fontsize,
        weight="bold" if bold else "normal",
        linespacing=1.2,
    )
    return figure_to_array(fig)


def _pad(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Stack ``(h, w, 3)`` arrays vertically, padding each on the right with white."""
    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    return np.concatenate(padded)


def _grouping_rows(
    grouping: ModeGrouping,
    images: Callable[[np.ndarray], torch.Tensor],
    captions: Mapping[int, str],
    framed: set[int],
    per_mode: int,
    modes_shown: int,
    width: int,
    heading: str,
) -> list[np.ndarray]:
    shown = grouping.modes[:modes_shown]
    extra = f"; the {len(shown)} largest shown" if len(grouping.modes) > len(shown) else ""
    rows = [
        _text_strip(
            f"{heading}: {grouping.num_errors} errors in {len(grouping.modes)} modes, "
            f"{len(grouping.unassigned)} in none{extra}",
            width,
        )
    ]
    for mode in shown:
        members = np.asarray(mode.members[:per_mode], np.int64)
        tiles = to_hwc(images(members))
        blank = per_mode - len(members)  # white tiles: every row has the same width
        tiles = np.concatenate([tiles, np.full((blank, *tiles.shape[1:]), 255, np.uint8)])
        rows.append(_text_strip(f"mode {mode.id}: {mode.description}", width, 10, bold=False))
        rows.append(
            image_grid(
                tiles,
                [captions.get(int(i), f"#{i}") for i in members] + [""] * blank,
                per_mode,
                scale=3,
                caption_lines=2,
                framed=[int(i) in framed for i in members] + [False] * blank,
            )
        )
    if not shown:
        rows.append(_text_strip("(no mode)", width, fontsize=10, bold=False))
    return rows


def failure_modes_figure(
    result: FailureModes,
    images: Callable[[np.ndarray], torch.Tensor],
    captions: Mapping[int, str] | None = None,
    per_mode: int = 8,
    modes_shown: int = 10,
    title: str | None = None,
    framed: Collection[int] = (),
) -> np.ndarray:
    """``failure_modes.png`` as an RGB array ``(H, W, 3)``: for each grouping (all errors, then
    the confident ones), a heading and one row per mode (the ``modes_shown`` largest) of its
    ``per_mode`` most typical images, titled with the mode's description.

    Args:
        images: maps test indices ``(K,)`` to uint8 images ``(K, 3, H, W)``.
        captions: per test index, the caption under its tile (default ``#index``).
        title: a first line above everything (e.g. the run).
        framed: test indices whose tiles get a frame (known label errors).
    """
    captions = captions or {}
    framed = {int(i) for i in framed}
    width = per_mode * (32 * 3 + 6)
    rows: list[np.ndarray] = []
    if title:
        rows.append(_text_strip(title, width, fontsize=13))
    for name in ("errors", "confident"):
        grouping = result.grouping(name)
        heading = TITLES[name]
        if name == "confident":
            heading += f" (confidence >= {result.threshold:g})"
        rows += _grouping_rows(
            grouping, images, captions, framed, per_mode, modes_shown, width, heading
        )
    return _pad(rows)
