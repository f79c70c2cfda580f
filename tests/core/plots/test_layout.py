"""The panel layout of multi-panel figures (cnnstress.core.plots.layout)."""

from __future__ import annotations

import pytest

from cnnstress.core.plots.layout import LABEL_WIDTH, group_legend, label_panel, panel_grid, wrap


# -- wrap ---------------------------------------------------------------------------------------
def test_wrap_breaks_long_labels_into_lines_of_at_most_the_width():
    label = "cutout augmentation.cutout.size=8 [trainer.max_epochs=30, optimizer.lr=0.05]"
    wrapped = wrap(label)
    assert all(len(line) <= LABEL_WIDTH for line in wrapped.split("\n"))
    assert wrapped.replace("\n", " ") == label  # only spaces became line breaks
    assert wrap("a b c d e f", 3) == "a b\nc d\ne f"


def test_wrap_keeps_existing_line_breaks_blank_lines_and_hyphenated_words():
    assert wrap("short\n\nlines") == "short\n\nlines"
    assert wrap("") == ""
    assert wrap("label-smoothing-0.1 x", 10) == "label-smoo\nthing-0.1\nx"  # no hyphen breaks
    assert wrap("cifar10/resnet18/baseline", 100) == "cifar10/resnet18/baseline"


# -- panel_grid ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "ncols", "inches", "shown_columns"),
    [(5, 3, (6.0, 3.0), 3), (2, 4, (4.0, 1.5), 2), (1, 2, (2.0, 1.5), 1), (6, 3, (6.0, 3.0), 3)],
)
def test_panel_grid_makes_n_visible_panels_of_the_given_size(n, ncols, inches, shown_columns):
    fig, axes = panel_grid(n, ncols, (2.0, 1.5))
    assert len(axes) == n
    assert tuple(fig.get_size_inches()) == inches
    assert all(ax.get_visible() for ax in axes)
    hidden = [ax for ax in fig.axes if not ax.get_visible()]
    assert len(fig.axes) == len(hidden) + n and len(hidden) < shown_columns
    assert fig.get_layout_engine() is not None  # constrained


def test_panels_run_left_to_right_then_down():
    fig, axes = panel_grid(4, 2, (2.0, 2.0))
    fig.canvas.draw()
    boxes = [ax.get_position() for ax in axes]
    assert boxes[0].x0 < boxes[1].x0 and boxes[0].y0 == pytest.approx(boxes[1].y0)
    assert boxes[2].y0 < boxes[0].y0 and boxes[2].x0 == pytest.approx(boxes[0].x0)


def test_label_panel_and_group_legend_finish_a_panel_with_wrapped_entries():
    _, (ax,) = panel_grid(1, 1, (4.0, 3.0))
    long_name = (
        "baseline [trainer.max_epochs=30, optimizer.lr=0.05, module.loss.label_smoothing=0.1]"
    )
    ax.plot([0, 1], [0, 1], label=long_name)
    ax.plot([0, 1], [1, 0], label="cutout")
    label_panel(ax, ("cifar10", "resnet18"), "severity", "accuracy", ylim=(0.0, 1.0))
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "severity", "accuracy", "cifar10/resnet18",
    )  # fmt: skip
    assert ax.get_ylim() == (0.0, 1.0)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == [wrap(long_name), "cutout"] and "\n" in texts[0]
    assert {t.get_fontsize() for t in ax.get_legend().get_texts()} == {8}
    group_legend(ax, fontsize=6, loc="lower left")
    assert {t.get_fontsize() for t in ax.get_legend().get_texts()} == {6}
