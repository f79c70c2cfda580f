"""The canvas every figure is drawn on and saved from (cnnstress.core.plots.canvas)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.io import decode_png, read_file

from cnnstress.core.plots.canvas import figure_to_array, new_figure, save_figure, save_png, to_hwc


def test_save_figure_writes_a_png_torchvision_decodes_at_inches_times_dpi(tmp_path):
    fig = new_figure(3, 2)
    fig.add_subplot().plot([0, 1], [0, 1])
    path = save_figure(fig, tmp_path / "figure.png")
    assert path == tmp_path / "figure.png"
    image = decode_png(read_file(str(path)))
    assert image.dtype == torch.uint8 and tuple(image.shape[1:]) == (220, 330)  # dpi 110
    assert image.shape[0] in (3, 4)
    smaller = decode_png(read_file(str(save_figure(fig, tmp_path / "small.png", dpi=50))))
    assert tuple(smaller.shape[1:]) == (100, 150)


def test_figure_to_array_renders_rgb_at_the_figure_dpi():
    fig = new_figure(2, 1, dpi=100)
    fig.patch.set_facecolor((1.0, 0.0, 0.0))
    array = figure_to_array(fig)
    assert array.shape == (100, 200, 3) and array.dtype == np.uint8
    assert (array == [255, 0, 0]).all()
    array[0, 0] = 0  # a copy, not a view of the canvas buffer
    assert (figure_to_array(fig) == [255, 0, 0]).all()


def test_save_png_round_trips_an_array_and_creates_the_folder(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = save_png(array, tmp_path / "new" / "x.png")
    decoded = decode_png(read_file(str(path))).permute(1, 2, 0).numpy()
    assert np.array_equal(decoded, array)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]


def test_to_hwc_moves_channels_last_for_tensors_and_arrays():
    chw = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5).to(torch.uint8)
    hwc = to_hwc(chw)
    assert hwc.shape == (2, 4, 5, 3) and hwc.dtype == np.uint8 and hwc.flags.c_contiguous
    assert hwc[1, 2, 3, 0] == chw[1, 0, 2, 3] and hwc[0, 1, 4, 2] == chw[0, 2, 1, 4]
    assert np.array_equal(to_hwc(chw.numpy()), hwc)
