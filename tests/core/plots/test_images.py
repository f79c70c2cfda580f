"""Image figures (cnnstress.core.plots.images): CAM overlays and captioned image grids, checked
pixel by pixel (a grid's geometry is exact: tiles land at known positions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnstress.core.plots.images import FRAME_COLOR, image_grid, overlay

WHITE = (255, 255, 255)


# -- overlay ------------------------------------------------------------------------------------
def half_black_images(n: int = 2, size: int = 4) -> np.ndarray:
    images = np.full((n, size, size, 3), 255, np.uint8)
    images[:, : size // 2] = 0
    return images


def test_overlay_without_heatmap_weight_is_the_image():
    images = half_black_images()
    out = overlay(images, np.zeros((2, 4, 4)), alpha=0.0)
    assert out.shape == (2, 4, 4, 3) and out.dtype == np.uint8
    assert np.array_equal(out, images)


def test_overlay_colours_are_rgb_jet_blue_for_zero_and_red_for_one():
    images = half_black_images()
    cold = overlay(images, torch.zeros(2, 4, 4), alpha=1.0)  # a tensor works as well
    hot = overlay(images, np.ones((2, 4, 4), np.float32), alpha=1.0)
    assert (cold == [0, 0, 255]).all()  # RGB, not OpenCV's BGR
    assert (hot == [255, 0, 0]).all()


def test_overlay_blends_each_image_with_its_own_heatmap():
    images = half_black_images()
    maps = np.stack([np.zeros((4, 4)), np.ones((4, 4))]).astype(np.float32)
    out = overlay(images, maps, alpha=0.5)
    # on the white half the heatmap's colour shows: blue-ish for image 0, red-ish for image 1
    assert out[0, 3, 0, 2] > out[0, 3, 0, 0] and out[1, 3, 0, 0] > out[1, 3, 0, 2]
    assert (out[:, 3] > out[:, 0]).any(axis=-1).all()  # white half brighter than black half
    with pytest.raises(ValueError):
        overlay(images, maps[:1])  # one heatmap per image


# -- image_grid ---------------------------------------------------------------------------------
def coloured_tiles(n: int, size: int = 8) -> np.ndarray:
    tiles = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        tiles[i] = (i * 50, 255 - i * 50, 100)
    return tiles


def caption_px(lines: int) -> int:
    """The caption band above a tile: 8-pt lines at 100 dpi, plus 6 px padding."""
    return int(lines * 8 * 1.45 * 100 / 72) + 6


def test_image_grid_size_follows_tiles_scale_columns_captions_and_title():
    tiles = coloured_tiles(5)
    grid = image_grid(tiles, [f"tile {i}" for i in range(5)], ncols=3)
    assert grid.dtype == np.uint8 and grid.shape == (2 * (24 + caption_px(1) + 6), 3 * 30, 3)
    titled = image_grid(tiles, [""] * 5, 3, title="failures", scale=2, caption_lines=2)
    assert titled.shape == (2 * (16 + caption_px(2) + 6) + 24, 3 * (16 + 6), 3)
    # more columns than tiles: one row of as many columns as tiles
    assert image_grid(tiles[:2], ["a", "b"], ncols=10).shape == (24 + caption_px(1) + 6, 60, 3)


def test_image_grid_places_each_tile_scaled_at_its_cell():
    tiles = coloured_tiles(5)
    grid = image_grid(tiles, [""] * 5, ncols=3, scale=3)
    cell_h, cell_w, cap = 24 + caption_px(1) + 6, 30, caption_px(1)
    for i in range(5):
        r, c = divmod(i, 3)
        y, x = r * cell_h + cap, c * cell_w + 3
        block = grid[y : y + 24, x : x + 24]
        assert (block == tiles[i, 0, 0]).all(), i
    empty = grid[cell_h + cap : cell_h + cap + 24, 2 * cell_w + 3 : 2 * cell_w + 27]
    assert (empty == WHITE).all()  # the sixth cell has no tile


def test_image_grid_scales_with_nearest_neighbour():
    tile = np.zeros((1, 2, 2, 3), np.uint8)
    tile[0, 0, 1] = 255  # one white pixel, top right
    grid = image_grid(tile, [""], ncols=1, scale=4)
    y, x = caption_px(1), 3
    assert (grid[y : y + 4, x + 4 : x + 8] == WHITE).all()
    assert (grid[y : y + 4, x : x + 4] == 0).all() and (grid[y + 4 : y + 8, x : x + 8] == 0).all()


def test_framed_tiles_get_a_magenta_ring_and_others_none():
    tiles = coloured_tiles(2)
    grid = image_grid(tiles, ["", ""], ncols=2, framed=[True, False])
    y, ring = caption_px(1), 3
    first, second = 0 * 30 + ring, 1 * 30 + ring
    assert (grid[y - ring : y, first : first + 24] == FRAME_COLOR).all()  # above tile 0
    assert (grid[y + 24 : y + 24 + ring, first - ring : first] == FRAME_COLOR).all()  # corner
    assert (grid[y - ring : y, second : second + 24] == WHITE).all()
    assert (grid[y : y + 24, first : first + 24] == tiles[0, 0, 0]).all()  # tile drawn on top


def test_captions_and_title_are_drawn_in_their_bands():
    tiles = coloured_tiles(2)
    grid = image_grid(tiles, ["cat 0.93", ""], ncols=2, title="confident failures", scale=8)
    band, cell_w = slice(24, 24 + caption_px(1)), 8 * 8 + 6  # below the 24-px title band
    assert (grid[band, :cell_w] < 128).any()  # text above tile 0
    assert (grid[band, cell_w:] == WHITE).all()  # no caption above tile 1
    assert (grid[:24] < 128).any()  # the title
    untitled = image_grid(tiles, ["", ""], ncols=2)
    assert (untitled[: caption_px(1)] == WHITE).all()
