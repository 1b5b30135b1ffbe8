"""The scoring engine: every front end (``QualityScorer.score``, ``qualiclip-score``, maps, evaluation, Ray actors)
scores collections of images through :func:`iter_scores`.

The pipeline, per window of inputs: read each input's size from its header (in a thread pool), group equal sizes
into batches under the batch-size and pixel caps, decode those batches in the pool ahead of the model, score them,
and hand results back in input order as soon as every earlier input is done. Every failure (unreadable header,
corrupt data, too small, too large, out of memory) is confined to its input and reported on one line; nothing a
single input does can stop the run.
"""

from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .constants import default_workers
from .images import ImageInput, check_size, failure_cause, input_size, name_of, to_tensor
from .messages import first_line
from .results import ScoreResult  # the engine's result type, kept in a torch-free module for the front ends
from .runner import BatchRunner

# Headers are read this many inputs at a time; equal sizes are batched within such a window, and results wait at most
# for the rest of their window to keep input order. Inputs are pulled from the iterable one window at a time.
PROBE_WINDOW = 256
# Batches decoded ahead of the model: enough to keep it busy, few enough to bound memory.
PREFETCH_BATCHES = 2


def iter_scores(runner: BatchRunner, inputs: Iterable[ImageInput], *, names: Optional[Sequence[str]] = None,
                workers: Optional[int] = None) -> Iterator[ScoreResult]:
    """Scores any number of inputs through the streaming engine, yielding one result per input in input order.

    Headers are read first and images of equal size share batches; a pool of threads decodes the next batches
    while the model runs. An input that cannot be scored (unreadable, corrupt, too small, over
    ``max_image_pixels``, out of memory even on its own) gets a result with an ``error`` and the run goes on.

    Example::

        for result in scorer.iter_scores(paths):
            print(result.name, result.score if result.ok else result.error)

    Args:
        runner: The scorer (``QualityScorer.iter_scores`` passes itself) whose model, batch caps and pixel limit
            apply.
        inputs: Paths, encoded image bytes, PIL images, uint8 arrays or ``3 x H x W`` float tensors in [0, 1], in
            any mix; any iterable, consumed a window at a time, so a generator over millions of files is fine.
        names: How results and errors name each input (default: the path, else ``input[<index>]``).
        workers: Threads that read headers and decode images (default: one per available CPU, at most 8).

    Yields:
        :class:`~qualiclip_infer.results.ScoreResult` (index, name, score, width, height, error), in the order of
        ``inputs``. Never raises for a bad input.
    """
    workers = workers or default_workers()
    numbered = ((index, image, names[index] if names is not None else name_of(image, index))
                for index, image in enumerate(inputs))
    order = _InputOrder()
    in_flight: Deque[Tuple[List[_Item], List[Future]]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qualiclip-decode") as pool:
        for batch in _equal_size_batches(runner, numbered, pool, order):
            in_flight.append((batch, [pool.submit(_decode, item) for item in batch]))
            if len(in_flight) > PREFETCH_BATCHES:
                yield from _finish(runner, *in_flight.popleft(), order)
            yield from order.release()
        while in_flight:
            yield from _finish(runner, *in_flight.popleft(), order)
    yield from order.release()


@dataclass
class _Item:
    """An input on its way through the pipeline, with its result filled in as it goes."""

    image: ImageInput
    result: ScoreResult


class _InputOrder:
    """Holds finished results until every result before them is finished."""

    def __init__(self) -> None:
        self._finished: Dict[int, ScoreResult] = {}
        self._next = 0

    def add(self, result: ScoreResult) -> None:
        self._finished[result.index] = result

    def release(self) -> List[ScoreResult]:
        results = []
        while self._next in self._finished:
            results.append(self._finished.pop(self._next))
            self._next += 1
        return results


def _equal_size_batches(runner: BatchRunner, numbered: Iterator[Tuple[int, ImageInput, str]], pool: ThreadPoolExecutor,
                  order: _InputOrder) -> Iterator[List[_Item]]:
    """Reads headers a window at a time; failures go straight to ``order``, the rest come in equal-size batches."""
    while True:
        window = list(itertools.islice(numbered, PROBE_WINDOW))
        if not window:
            return
        items = [_Item(image, ScoreResult(index, name)) for index, image, name in window]
        sized = []
        for item in pool.map(lambda item: _probe(item, runner.max_image_pixels), items):
            if item.result.error:
                order.add(item.result)
            else:
                sized.append(item)
        for batch in group_by_size([(item.result.width, item.result.height) for item in sized], runner.batch_size,
                                  runner.max_batch_pixels):
            yield [sized[position] for position in batch]


def group_by_size(sizes: Sequence[Tuple[int, int]], batch_size: int, max_batch_pixels: int) -> List[List[int]]:
    """Groups positions of equally sized images into batches, in order of first appearance.

    A batch holds at most ``batch_size`` images and, beyond its first image, at most ``max_batch_pixels`` pixels,
    so that large photos do not exhaust memory (a single image is bounded by the scorer's per-image pixel limit).
    """
    by_size: Dict[Tuple[int, int], List[int]] = {}
    for position, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(position)
    batches = []
    for (width, height), positions in by_size.items():
        per_batch = max(1, min(batch_size, max_batch_pixels // max(1, width * height)))
        batches.extend(positions[i:i + per_batch] for i in range(0, len(positions), per_batch))
    return batches


def _probe(item: _Item, max_pixels: Optional[int]) -> _Item:
    """Fills in the input's upright size from its header, and the error if that size rules it out."""
    result = item.result
    try:
        # The header's size is kept for the row even when the size itself rules the image out.
        result.width, result.height = input_size(item.image, result.name)
        check_size(result.width, result.height, result.name, max_pixels)
    except Exception as error:  # a broken input of any kind must not stop the run
        result.error = failure_cause(error, result.name)
    return item


def _decode(item: _Item) -> Union[torch.Tensor, str]:
    """The input as a ``3 x H x W`` float tensor, or the one-line reason it cannot be decoded."""
    result = item.result
    try:
        tensor = to_tensor(item.image, result.name)
    except Exception as error:  # truncated, corrupt, or too large to hold: report it and go on
        return failure_cause(error, result.name)
    if (tensor.shape[2], tensor.shape[1]) != (result.width, result.height):
        return (f"decoded size {tensor.shape[2]}x{tensor.shape[1]} differs from the header's "
                f"{result.width}x{result.height}")
    return tensor


def _finish(runner: BatchRunner, batch: List[_Item], futures: List[Future],
            order: _InputOrder) -> List[ScoreResult]:
    """Scores a decoded batch and returns the results that are now ready in input order."""
    decoded = []
    for item, future in zip(batch, futures):
        outcome = future.result()
        if isinstance(outcome, str):
            item.result.error = outcome
        else:
            decoded.append((item.result, outcome))
    if decoded:
        _score_batch(runner.score_tensor, decoded)
    for item in batch:
        order.add(item.result)
    return order.release()


def _score_batch(score_tensor: Callable[[torch.Tensor], torch.Tensor],
                 decoded: List[Tuple[ScoreResult, torch.Tensor]]) -> None:
    """Scores a batch; if it fails as a whole (out of memory, above all), retries its images one at a time."""
    try:
        scores = score_tensor(torch.stack([tensor for _, tensor in decoded])).tolist()
    except Exception as error:  # out of memory, or anything else the batch as a whole hit
        if len(decoded) == 1:
            result, tensor = decoded[0]
            result.error = _scoring_failure(error, tensor)
            return
        _release_cached_memory()
        for single in decoded:
            _score_batch(score_tensor, [single])
        return
    for (result, _), score in zip(decoded, scores):
        result.score = score


def _scoring_failure(error: BaseException, tensor: torch.Tensor) -> str:
    _release_cached_memory()
    height, width = tensor.shape[1:]
    # torch.cuda.OutOfMemoryError is torch.OutOfMemoryError from torch 2.5 on, and exists in every supported torch.
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower():
        return f"out of memory scoring a {width}x{height} image on its own: {first_line(error)}"
    return f"scoring failed: {first_line(error)}"


def _release_cached_memory() -> None:
    """Gives the CUDA caching allocator's free blocks back after an out-of-memory error, so retries can fit."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
