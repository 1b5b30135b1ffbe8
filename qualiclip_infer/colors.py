"""The colour map of quality maps and reports: viridis, as a table. numpy only, so torch-free front ends (the HTML
report) colour scores exactly as the rendered maps do."""

from __future__ import annotations

from typing import Tuple

import numpy as np

# Viridis (van der Walt & Smith, CC0), sampled at 0, 1/8, ..., 1: dark blue to yellow, lightness rising steadily, so
# brighter always means better, also in grey and for colour-blind readers. Linear interpolation between these anchors
# stays within about 1% of the full table.
_VIRIDIS_ANCHORS = np.array([
    (0.267004, 0.004874, 0.329415), (0.282623, 0.140926, 0.457517), (0.229739, 0.322361, 0.545706),
    (0.172719, 0.448791, 0.557885), (0.127568, 0.566949, 0.550556), (0.157851, 0.683765, 0.501686),
    (0.369214, 0.788888, 0.382914), (0.678489, 0.863742, 0.189503), (0.993248, 0.906157, 0.143936),
])
TABLE_SIZE = 256


def colormap_table() -> np.ndarray:
    """The colour map as a ``256 x 3`` uint8 table, entry ``k`` for the value ``k / 255``."""
    positions = np.linspace(0, 1, len(_VIRIDIS_ANCHORS))
    values = np.linspace(0, 1, TABLE_SIZE)
    table = np.stack([np.interp(values, positions, _VIRIDIS_ANCHORS[:, c]) for c in range(3)], axis=1)
    return np.round(table * 255).astype(np.uint8)


def colorize(values: np.ndarray, value_range: Tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Colours of values: ``... x 3`` uint8, the low end of ``value_range`` darkest, values outside it clipped."""
    low, high = value_range
    scaled = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0, 1)
    return colormap_table()[np.round(scaled * (TABLE_SIZE - 1)).astype(np.intp)]
