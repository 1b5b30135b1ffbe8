"""Quality-map pictures read back pixel by pixel: a map with known vertical and horizontal gradients lands the right
way up and the right way round (row 0 at the top, column 0 at the left), in ``render_map`` and in the PNG
``save_map`` writes; the colour bar's tick labels rise from bottom to top, each beside the colour of its value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from qualiclip_infer.maps import QualityMap
from qualiclip_infer.render import colorize, render_map, save_map

WIDTH, HEIGHT, CELL = 96, 64, 32  # a 2 x 3 grid of 32-pixel cells


def grid_map(values: np.ndarray) -> QualityMap:
    rows, columns = values.shape
    boxes = torch.tensor([[(CELL * j, CELL * i, CELL * (j + 1), CELL * (i + 1)) for j in range(columns)]
                          for i in range(rows)])
    return QualityMap(torch.tensor(values, dtype=torch.float32), boxes, 0.5, "tokens", (WIDTH, HEIGHT))


def corner_blocks(picture: np.ndarray) -> dict:
    """The picture's four corner blocks of the photo area, each 16 x 16 pixels: outside the cell centres the map
    is clamped to its border cells, so each block is one colour."""
    q = CELL // 2
    return {"top left": picture[:q, :q], "top right": picture[:q, WIDTH - q:WIDTH],
            "bottom left": picture[HEIGHT - q:HEIGHT, :q], "bottom right": picture[HEIGHT - q:HEIGHT, WIDTH - q:WIDTH]}


@pytest.mark.parametrize("gradient", ["vertical", "horizontal", "both"])
def test_a_gradient_map_is_drawn_the_right_way_up_and_round(gradient, tmp_path):
    rows, columns = np.mgrid[0:2, 0:3]
    values = {"vertical": 0.1 + 0.8 * rows, "horizontal": 0.1 + 0.4 * columns,
              "both": 0.05 + 0.6 * rows + 0.15 * columns}[gradient]
    result = grid_map(values)
    values = result.values.double().numpy()  # as stored: float32
    photo = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    drawn = np.asarray(render_map(photo, result, alpha=1.0))
    save_map(photo, result, tmp_path / "map.png", alpha=1.0)
    with Image.open(tmp_path / "map.png") as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), drawn)

    expected = {"top left": values[0, 0], "top right": values[0, -1], "bottom left": values[-1, 0],
                "bottom right": values[-1, -1]}
    for corner, block in corner_blocks(drawn).items():
        colour = colorize(np.array(expected[corner]))
        assert (block == colour).all(), (corner, block[0, 0], colour)
    # Between the cell centres the colours run monotonically in lightness along the gradient.
    lightness = drawn[:HEIGHT, :WIDTH].astype(float) @ [0.299, 0.587, 0.114]
    if gradient in ("vertical", "both"):
        column = lightness[:, WIDTH // 2]
        assert (np.diff(column) >= -0.5).all() and column[-1] - column[0] > 50
    if gradient in ("horizontal", "both"):
        row = lightness[HEIGHT // 2]
        assert (np.diff(row) >= -0.5).all() and row[-1] - row[0] > 20


def test_blending_over_the_grey_photo_keeps_the_orientation():
    values = 0.1 + 0.8 * np.mgrid[0:2, 0:3][0]
    photo = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    photo[:, WIDTH // 2:] = 200  # right half bright: its grey shows through at (1 - alpha)
    result = grid_map(values)
    values = result.values.double().numpy()
    drawn = np.asarray(render_map(photo, result, alpha=0.6)).astype(float)
    blocks = corner_blocks(drawn)
    grey = {"top left": 0.0, "bottom left": 0.0, "top right": 200.0, "bottom right": 200.0}
    for corner, block in blocks.items():
        value = values[0, 0] if corner.startswith("top") else values[-1, 0]
        expected = np.round(0.6 * colorize(np.array(value)).astype(float) + 0.4 * grey[corner])
        assert np.abs(block - expected).max() <= 1, corner


def _drawn_labels(monkeypatch, result: QualityMap, **options) -> list:
    """(y, text) of every text the panel draws, in drawing order, and the rendered picture."""
    texts = []
    real = ImageDraw.ImageDraw.text

    def text(self, xy, string, *args, **kwargs):
        texts.append((xy[1], string))
        return real(self, xy, string, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    photo = np.full((HEIGHT * 4, WIDTH * 4, 3), 128, np.uint8)
    scaled = QualityMap(result.values, result.boxes * 4, result.score, result.method, (WIDTH * 4, HEIGHT * 4))
    picture = np.asarray(render_map(photo, scaled, **options))
    return texts, picture


@pytest.mark.parametrize("value_range, labels", [((0.0, 1.0), ["0.00", "0.25", "0.50", "0.75", "1.00"]),
                                                 (None, ["0.200", "0.220", "0.240", "0.260", "0.280"])])
def test_colour_bar_ticks_rise_from_bottom_to_top(monkeypatch, value_range, labels):
    values = np.array([[0.2, 0.25, 0.28], [0.22, 0.27, 0.26]])  # stretched: 0.2 to 0.28
    texts, picture = _drawn_labels(monkeypatch, grid_map(values), value_range=value_range)
    ticks = [(y, text) for y, text in texts if text in labels]
    assert sorted(text for _, text in ticks) == labels
    by_height = [text for _, text in sorted(ticks)]  # top of the picture first
    assert by_height == labels[::-1], by_height
    # Each label sits beside the bar's colour for its value.
    panel = picture[:, WIDTH * 4:]
    low, high = (0.2, 0.28) if value_range is None else value_range
    table = {tuple(colorize(np.array(v), (low, high))): v for v in np.linspace(low, high, 1001)}
    in_bar = np.array([[tuple(pixel) in table for pixel in row] for row in panel])
    column = int(np.argmax(in_bar.sum(axis=0)))
    for y, text in ticks:
        row = int(round(y)) + 6  # about the label's vertical middle (11-pixel font): text is drawn from its top
        near = range(max(0, row - 8), min(len(panel), row + 9))
        candidates = [table[tuple(panel[r, column])] for r in near if in_bar[r, column]]
        assert candidates and min(abs(v - float(text)) for v in candidates) < 0.03 * (high - low), text
