"""Scoring a Hugging Face ``datasets.Dataset`` or ``IterableDataset`` with an ``Image`` column, decoding once.

The column is read undecoded (``Image(decode=False)``: the stored bytes, or a path) and handed to the engine, which
decodes each image once at native resolution; the dataset's own decoding is never run. ``datasets`` is optional:
nothing here imports it until a dataset is scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

from .entries import Entry, SourceResult, score_entries

if TYPE_CHECKING:
    from ..scorer import QualityScorer

SCORE_COLUMN = "qualiclip"


def _undecoded(dataset: Any, column: str) -> Any:
    from datasets import Image

    if column not in (dataset.column_names or []):
        raise ValueError(f"the dataset has no column {column!r}; columns: {', '.join(dataset.column_names or [])}")
    return dataset.cast_column(column, Image(decode=False))


def _entries(values: Iterable[Any], column: str, start: int = 0) -> Iterator[Entry]:
    for index, value in enumerate(values, start):
        data = (value.get("bytes") or value.get("path")) if isinstance(value, dict) else value
        if data is None:
            yield Entry(str(index), None, {}, f"no image in column {column!r}")
        else:
            yield Entry(str(index), data)


def iter_dataset_scores(scorer: QualityScorer, dataset: Any, *, column: str = "image",
                        workers: Optional[int] = None) -> Iterator[SourceResult]:
    """Scores the images of a dataset's ``Image`` column, one result per example, in order, named by its index.

    Example:
        ```python
        for result in iter_dataset_scores(scorer, load_dataset("imagefolder", data_dir="photos")["train"]):
            print(result.name, result.score if result.ok else result.error)
        ```

    Args:
        scorer: A :class:`~qualiclip_infer.scorer.QualityScorer`.
        dataset: A ``datasets.Dataset`` or ``IterableDataset``.
        column: The image column.
        workers: Decoding threads.

    Raises:
        ImportError: ``datasets`` is not installed.
        ValueError: The dataset has no such column.
    """
    undecoded = _undecoded(dataset, column).select_columns([column])
    values = (example[column] for example in undecoded)
    return score_entries(scorer, _entries(values, column), workers=workers)


def add_dataset_scores(scorer: QualityScorer, dataset: Any, *, column: str = "image", score_column: str = SCORE_COLUMN,
                       workers: Optional[int] = None) -> Any:
    """The dataset with a ``score_column`` of QualiCLIP scores (``None`` where an image could not be scored).

    A ``Dataset`` is scored now and returned with the column added; an ``IterableDataset`` is returned lazily mapped,
    scoring batches of examples as they are iterated. The image column keeps its decoding either way.

    Example:
        ```python
        dataset = add_dataset_scores(scorer, dataset)
        kept = dataset.filter(lambda example: example["qualiclip"] is not None and example["qualiclip"] > 0.5)
        ```

    Raises:
        ImportError: ``datasets`` is not installed.
        ValueError: The dataset has no such column, or already has ``score_column``.
    """
    import datasets

    if score_column in (dataset.column_names or []):
        raise ValueError(f"the dataset already has a column {score_column!r}")
    if isinstance(dataset, datasets.Dataset):
        scores = [result.score for result in iter_dataset_scores(scorer, dataset, column=column, workers=workers)]
        return dataset.add_column(score_column, scores, feature=datasets.Value("float64"))
    feature = dataset.features[column] if dataset.features else datasets.Image()

    def score_batch(batch: dict) -> dict:
        results = score_entries(scorer, _entries(batch[column], column), workers=workers)
        return {score_column: [result.score for result in results]}

    undecoded = _undecoded(dataset, column)
    features = datasets.Features({**undecoded.features, score_column: datasets.Value("float64")})
    return undecoded.map(score_batch, batched=True, batch_size=256, features=features).cast_column(column, feature)
