"""Quality maps: where in a picture QualiCLIP finds it good or poor.

Two methods:

- ``windows`` scores crops of the image on a regular grid: each cell is the exact QualiCLIP score of its crop, the
  value ``QualityScorer.score`` gives that crop. Crops of one image are equally sized, so they share batches.
- ``tokens`` needs one forward pass: each position of the trunk's stride-32 feature grid is projected as the attention
  pool projects values and scored against the prompt pairs (:meth:`QualiCLIP.token_scores`). It is a dense
  approximation of local quality, not the score of any crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Tuple

import torch

from .constants import DEFAULT_STRIDE, DEFAULT_WINDOW, MAP_METHODS, MIN_IMAGE_SIDE  # noqa: F401 (this module's API)
from .engine import group_by_size
from .images import ImageInput, name_of, probe, to_tensor
from .runner import BatchRunner

MapMethod = Literal["windows", "tokens"]
# The trunk reduces each side 32-fold: the cell size of a tokens map.
TOKEN_STRIDE = 32


@dataclass(frozen=True)
class QualityMap:
    """A quality map of one image.

    Attributes:
        values: ``h x w`` float32 tensor in [0, 1], higher is better; ``values[i, j]`` is the cell in row ``i``
            (top to bottom) and column ``j`` (left to right).
        boxes: ``h x w x 4`` int64 tensor: each cell's ``(left, top, right, bottom)`` in image pixels (right and
            bottom exclusive). ``windows``: the crop that was scored; boxes overlap when the stride is below the
            window. ``tokens``: the cell of the 32-pixel feature grid, the last row and column reaching the border.
        score: The whole image's QualiCLIP score.
        method: ``windows`` or ``tokens``.
        image_size: ``(width, height)`` of the image.
    """

    values: torch.Tensor
    boxes: torch.Tensor
    score: float
    method: str
    image_size: Tuple[int, int]


def window_starts(length: int, window: int, stride: int) -> List[int]:
    """Start offsets of the windows along one side of ``length`` pixels.

    Windows start every ``stride`` pixels; the last one ends at the border, so every pixel is covered. Where the
    windows at multiples of ``stride`` leave at most half a stride uncovered, the last of them moves to the border
    (as long as it still overlaps its neighbour) instead of adding a window that would nearly coincide with it. A side
    no longer than the window gets one window, the whole side.
    """
    span = length - window
    if span <= 0:
        return [0]
    starts = list(range(0, span + 1, stride))
    left_over = span - starts[-1]
    if left_over:
        if len(starts) > 1 and 2 * left_over <= stride and stride + left_over <= window:
            starts[-1] = span
        else:
            starts.append(span)
    return starts


def quality_map(runner: BatchRunner, image: ImageInput, *, method: MapMethod = "windows",
                window: int = DEFAULT_WINDOW, stride: int = DEFAULT_STRIDE) -> QualityMap:
    """Where the image is good or poor: a grid of local scores, plus the whole image's score.

    Args:
        runner: The scorer (``QualityScorer.quality_map`` passes itself) whose model, batch caps and pixel limit
            apply.
        image: A path, PIL image, uint8 numpy array or float tensor ``3 x H x W`` in [0, 1].
        method: ``windows``: each cell is the exact score of a ``window`` x ``window`` crop (the value
            ``QualityScorer.score`` gives that crop), crops every ``stride`` pixels, the last row and column aligned
            to the border so every pixel is covered; a side shorter than the window gets one cell spanning it.
            ``tokens``: one forward pass; a cell per 32 x 32 pixels, each position of the trunk's feature grid
            scored as if the attention pool had attended to it alone. A dense approximation, not the score of
            any crop; ``window`` and ``stride`` do not apply.
        window: Crop side in pixels (at least 32), for ``windows``.
        stride: Pixels between crop starts (1 to ``window``), for ``windows``.

    Returns:
        A :class:`QualityMap`: ``values`` (``h x w`` in [0, 1]), ``boxes`` (each cell's ``left, top, right,
        bottom``), ``score`` (the whole image). Draw it with :func:`~qualiclip_infer.render.save_map`.

    Raises:
        ImageError: The image cannot be read or is under 32 x 32 pixels.
        ValueError: An unknown method, or a window or stride out of range.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"method must be 'windows' or 'tokens', got {method!r}")
    if method == "windows":
        if window < MIN_IMAGE_SIDE:
            raise ValueError(f"window must be at least {MIN_IMAGE_SIDE} pixels, got {window}")
        if not 1 <= stride <= window:
            raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
    name = name_of(image, 0)
    probe(image, name, runner.max_image_pixels)  # from the header: refuse what the engine refuses before decoding
    tensor = to_tensor(image, name).to(runner.device)
    if method == "windows":
        return _window_map(runner, tensor, window, stride)
    return _token_map(runner, tensor)


def _window_map(runner: BatchRunner, image: torch.Tensor, window: int, stride: int) -> QualityMap:
    height, width = image.shape[1:]
    crop_width, crop_height = min(window, width), min(window, height)
    lefts, tops = window_starts(width, window, stride), window_starts(height, window, stride)
    boxes = torch.tensor([[(left, top, left + crop_width, top + crop_height) for left in lefts] for top in tops])
    flat_boxes = boxes.view(-1, 4).tolist()
    scores = torch.empty(len(flat_boxes))
    for batch in group_by_size([(crop_width, crop_height)] * len(flat_boxes), runner.batch_size,
                               runner.max_batch_pixels):
        crops = [image[:, top:bottom, left:right] for left, top, right, bottom in (flat_boxes[i] for i in batch)]
        scores[batch] = runner.score_tensor(torch.stack(crops))
    whole = float(runner.score_tensor(image[None])[0])
    return QualityMap(scores.view(len(tops), len(lefts)), boxes, whole, "windows", (width, height))


def _token_map(runner: BatchRunner, image: torch.Tensor) -> QualityMap:
    height, width = image.shape[1:]
    scores, tokens = runner.scores_and_token_scores_tensor(image[None])
    rows, columns = tokens.shape[1:]
    return QualityMap(tokens[0], _grid_boxes(width, height, columns, rows), float(scores[0]), "tokens",
                      (width, height))


def _grid_boxes(width: int, height: int, columns: int, rows: int) -> torch.Tensor:
    """Boxes of a stride-32 grid, the last column and row extended to the border."""
    def edges(count: int, length: int) -> List[Tuple[int, int]]:
        return [(TOKEN_STRIDE * k, length if k == count - 1 else TOKEN_STRIDE * (k + 1)) for k in range(count)]

    return torch.tensor([[(left, top, right, bottom) for left, right in edges(columns, width)]
                         for top, bottom in edges(rows, height)])
