"""What a source yields (an :class:`Entry`), and scoring a stream of entries with the engine.

Entries that a source could not read (a truncated tar member, a row without bytes) carry their error and never reach
the engine; :func:`score_entries` merges them back into the rows in source order.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterable, Iterator, Optional, Union

from ..results import SourceResult

if TYPE_CHECKING:
    from ..scorer import QualityScorer


# Between a shard or Parquet file and the member or row in a row's path: ``shards/00042.tar::000420017.jpg``.
SOURCE_SEPARATOR = "::"


class SourceError(ValueError):
    """A shard or Parquet input that cannot be used at all (bad ``--image-col``, unknown pattern); one line."""


@dataclass
class Entry:
    """One image of a source.

    Attributes:
        name: The row's ``path``: ``SHARD::MEMBER`` for a tar member, ``FILE::ROW`` for a Parquet row.
        data: The encoded image (or a path to it); ``None`` when ``error`` says why there is none.
        extra: Columns carried into the row (``key``, ``--id-col`` values).
        error: Why the source could not give this image; empty when ``data`` is set.
    """

    name: str
    data: Union[bytes, str, os.PathLike, None] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    error: str = ""


def score_entries(scorer: QualityScorer, entries: Iterable[Entry], *,
                  workers: Optional[int] = None) -> Iterator[SourceResult]:
    """Scores entries through ``scorer.iter_scores``, yielding one result per entry in the order of ``entries``.

    Entries with an error become error rows without being decoded. The engine pulls entries a window at a time, so
    memory holds at most a few windows of encoded images, however long the stream.

    Args:
        scorer: A :class:`~qualiclip_infer.scorer.QualityScorer`.
        entries: Any iterable of entries (a generator over millions of shards is fine).
        workers: Decoding threads (default: the engine's).
    """
    pending: Deque[Entry] = deque()

    def images() -> Iterator[Any]:
        for entry in entries:
            pending.append(entry)
            if not entry.error:
                # The engine holds the bytes as long as it needs them; the entry waiting for its result must not,
                # or a long run of inputs without a batch to score (all failing) would hold every image.
                data, entry.data = entry.data, None
                yield data

    index = 0
    for scored in scorer.iter_scores(images(), workers=workers):
        while pending[0].error:
            yield _failed(index, pending.popleft())
            index += 1
        entry = pending.popleft()
        yield SourceResult(index, entry.name, scored.score, scored.width, scored.height, scored.error,
                           extra=entry.extra)
        index += 1
    while pending:
        yield _failed(index, pending.popleft())
        index += 1


def _failed(index: int, entry: Entry) -> SourceResult:
    return SourceResult(index, entry.name, error=entry.error, extra=entry.extra)
