"""Drawing quality maps: the map over the photo in a perceptually uniform colour map, with a legend. Pillow and numpy.

The map is interpolated between the centres of its cells (bilinear, clamped at the borders) to the photo's size, so
overlapping windows and border-aligned last rows land where they were scored. It is blended over a grey version of
the photo, so the colours read as the colour bar says. A panel on the right holds the whole-image score and the colour
bar with its scale.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .colors import colorize, colormap_table  # noqa: F401 (colormap_table: part of this module's API)
from .images import ImageInput, name_of, to_tensor
from .maps import QualityMap

_PANEL_BACKGROUND = (24, 24, 24)
_TEXT = (240, 240, 240)
_TICKS = 5
# Luma weights of ITU-R BT.601, as Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114])


def upsample(result: QualityMap, width: int, height: int) -> np.ndarray:
    """The map at ``height x width`` pixels: linear between cell centres along each axis, constant beyond them."""
    values = result.values.detach().cpu().double().numpy()
    boxes = result.boxes.cpu().numpy()
    column_centres = (boxes[0, :, 0] + boxes[0, :, 2]) / 2  # each column's cells share their left and right
    row_centres = (boxes[:, 0, 1] + boxes[:, 0, 3]) / 2
    scale_x, scale_y = result.image_size[0] / width, result.image_size[1] / height
    x = (np.arange(width) + 0.5) * scale_x
    y = (np.arange(height) + 0.5) * scale_y
    along_x = np.stack([np.interp(x, column_centres, row) for row in values])  # rows x width
    return np.stack([np.interp(y, row_centres, column) for column in along_x.T], axis=1)  # height x width


def render_map(image: ImageInput, result: QualityMap, *, alpha: float = 0.6,
               value_range: Optional[Tuple[float, float]] = (0.0, 1.0)) -> Image.Image:
    """Draws a quality map over its photo, with a colour bar and the whole-image score in a panel on the right.

    Args:
        image: The photo the map was computed on (path, PIL image, uint8 array or float tensor ``3 x H x W``).
        result: Its :class:`~qualiclip_infer.maps.QualityMap`.
        alpha: Weight of the map's colours over the grey photo, from 0 (photo only) to 1 (map only).
        value_range: Scores mapped to the ends of the colour map; ``(0, 1)`` (default) keeps colours comparable
            between images, ``None`` stretches them over this map's own minimum and maximum.

    Returns:
        An RGB image as wide as the photo plus the panel, and as tall as the photo (taller only when the photo is
        too short for the legend).

    Raises:
        ImageError: The photo cannot be read.
        ValueError: The photo's size differs from the map's, or ``alpha`` is outside [0, 1].
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    photo = (to_tensor(image, name_of(image, 0)).detach().cpu().permute(1, 2, 0).numpy() * 255).round()
    height, width = photo.shape[:2]
    if (width, height) != tuple(result.image_size):
        raise ValueError(f"the map was computed on a {result.image_size[0]}x{result.image_size[1]} image, "
                         f"the photo is {width}x{height}")
    value_range = _value_range(result, value_range)
    grey = (photo @ _LUMA.astype(np.float32))[..., None]
    colours = colorize(upsample(result, width, height), value_range).astype(np.float32)
    blended = np.round(alpha * colours + (1 - alpha) * grey).clip(0, 255).astype(np.uint8)

    font_size = int(np.clip(round(height / 28), 11, 64))
    legend = _Legend(font_size, result, value_range)
    canvas = Image.new("RGB", (width + legend.width, max(height, legend.min_height)), _PANEL_BACKGROUND)
    canvas.paste(Image.fromarray(blended), (0, 0))
    legend.draw(canvas, left=width, height=canvas.height)
    return canvas


def save_map(image: ImageInput, result: QualityMap, path: Union[str, os.PathLike], **options) -> None:
    """Writes :func:`render_map`'s picture as a PNG file (``options`` are those of :func:`render_map`).

    Raises:
        ImageError: The photo cannot be read.
        ValueError: The photo's size differs from the map's.
        OSError: The file cannot be written.
    """
    render_map(image, result, **options).save(path, format="PNG")


def _value_range(result: QualityMap, value_range: Optional[Tuple[float, float]]) -> Tuple[float, float]:
    if value_range is None:
        low, high = float(result.values.min()), float(result.values.max())
        if high - low < 1e-6:
            low, high = low - 0.005, high + 0.005
        return low, high
    low, high = map(float, value_range)
    if not low < high:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    return low, high


def _load_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's built-in scalable font, drawn by FreeType
    except (ImportError, OSError):
        return ImageFont.load_default()  # a Pillow built without FreeType: its small fixed bitmap font


class _Legend:
    """The panel: the whole-image score, how the map was made, and a vertical colour bar with ticks."""

    def __init__(self, font_size: int, result: QualityMap, value_range: Tuple[float, float]):
        self.font = _load_font(font_size)
        self.big_font = _load_font(round(font_size * 1.6))
        self.pad = max(4, font_size // 2)
        self.value_range = value_range
        self.header = [("score", self.font), (f"{result.score:.3f}", self.big_font), (_method_label(result), self.font)]
        self.ticks = [value_range[0] + (value_range[1] - value_range[0]) * k / (_TICKS - 1) for k in range(_TICKS)]
        decimals = 2 if value_range[1] - value_range[0] >= 0.1 else 3
        self.labels = [f"{tick:.{decimals}f}" for tick in self.ticks]
        self.line = _text_size("0.9", self.font)[1] + self.pad // 2
        self.bar_width = max(10, font_size)
        self.tick_length = max(3, font_size // 3)
        label_width = max(_text_size(label, self.font)[0] for label in self.labels)
        header_width = max(_text_size(text, font)[0] for text, font in self.header)
        self.header_height = sum(_text_size(text, font)[1] + self.pad // 2 for text, font in self.header) + self.pad
        self.width = 2 * self.pad + max(header_width, self.bar_width + self.tick_length + self.pad // 2 + label_width)
        self.min_height = self.header_height + (_TICKS + 1) * self.line + 2 * self.pad

    def draw(self, canvas: Image.Image, left: int, height: int) -> None:
        draw = ImageDraw.Draw(canvas)
        x, y = left + self.pad, self.pad
        for text, font in self.header:
            draw.text((x, y), text, fill=_TEXT, font=font)
            y += _text_size(text, font)[1] + self.pad // 2
        top, bottom = self.header_height + self.line // 2, height - self.pad - self.line // 2
        values = np.linspace(self.value_range[1], self.value_range[0], max(bottom - top, 2))
        strip = np.repeat(colorize(values, self.value_range)[:, None, :], self.bar_width, axis=1)
        canvas.paste(Image.fromarray(strip), (x, top))
        for tick, label in zip(self.ticks, self.labels):
            fraction = (tick - self.value_range[0]) / (self.value_range[1] - self.value_range[0])
            y = round(bottom - fraction * (bottom - top))
            tick_end = x + self.bar_width + self.tick_length
            draw.line([(x + self.bar_width, y), (tick_end, y)], fill=_TEXT)
            text_height = _text_size(label, self.font)[1]
            draw.text((tick_end + self.pad // 2, y - text_height // 2 - 1), label, fill=_TEXT, font=self.font)


def _method_label(result: QualityMap) -> str:
    if result.method == "windows":
        box = result.boxes[0, 0].tolist()
        return f"windows {box[2] - box[0]}x{box[3] - box[1]}"
    return result.method


def _text_size(text: str, font: ImageFont.ImageFont) -> Sequence[int]:
    left, top, right, bottom = font.getbbox(text)
    return right, bottom
