"""What runs inside a Ray actor: the model loaded once, and the callables Ray Data hands batches to.

:class:`BatchScorer` scores a batch of paths (or encoded images) with one row per input row; :class:`SourceScorer`
streams whole tar shards, Parquet files or runs of images, each through the same readers and engine as a local
``qualiclip-score`` run (``sources``), so a cluster gives the rows one machine gives. Imports torch only in the actor.
"""

from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .allocator import keep_freed_memory
from .hub import go_offline
from .parquet_rows import parquet_values, row_schema
from .results import ScoreResult, row_values
from .sources.entries import score_entries
from .sources.patterns import image_entry, input_entries
from .uris import InputOpener

if TYPE_CHECKING:
    import pyarrow

    from .scorer import QualityScorer

# Rows a SourceScorer hands back at a time while it streams a shard: the driver (and a --resume file) gets rows as
# the shard goes, not only when it is done.
ROWS_PER_OUTPUT = 256


def load_actor_scorer(scorer_options: Dict[str, Any], threads: int) -> QualityScorer:
    """The actor's :class:`~qualiclip_infer.QualityScorer`, with ``threads`` torch CPU threads and freed memory kept
    (:mod:`~qualiclip_infer.allocator`); offline first when ``local_files_only`` asks for it (before huggingface_hub
    is imported in this worker)."""
    if scorer_options.get("local_files_only"):
        go_offline()
    keep_freed_memory()
    import torch

    from .scorer import QualityScorer

    torch.set_num_threads(threads)
    return QualityScorer(**scorer_options)


class BatchScorer:
    """The Ray actor's callable for images: loads a :class:`~qualiclip_infer.QualityScorer` once, then scores
    batches.

    A batch is a pyarrow table with a path column (and optionally a bytes column); the result is a table of
    :data:`~qualiclip_infer.results.COLUMNS`, then the ``keep_columns`` as they were, with one row per input row.
    Inputs that cannot be read or scored become error rows.

    Args:
        scorer_options: Keyword arguments of ``QualityScorer``.
        threads: torch CPU threads.
        workers: Decoding threads of the engine.
        base_dir: The driver's working directory, where relative paths are found (actors may run elsewhere).
        path_column: Column of paths, or of names when ``bytes_column`` is given.
        bytes_column: Column of encoded image files (or of Hugging Face's ``{"bytes", "path"}`` structs), or ``None``
            to read the paths.
        keep_columns: Columns of the batch carried into the result unchanged.
    """

    def __init__(self, scorer_options: Dict[str, Any], *, threads: int, workers: Optional[int], base_dir: str,
                 path_column: str, bytes_column: Optional[str], keep_columns: Sequence[str] = ()):
        self.scorer = load_actor_scorer(scorer_options, threads)
        self.workers = workers
        self.path_column = path_column
        self.bytes_column = bytes_column
        self.keep_columns = tuple(keep_columns)
        self._opener = InputOpener(base_dir)

    def __call__(self, batch: "pyarrow.Table") -> "pyarrow.Table":
        import pyarrow as pa

        names = [str(name) for name in batch.column(self.path_column).to_pylist()]
        if self.bytes_column is not None:
            inputs: List[Any] = [_image_bytes(value) for value in batch.column(self.bytes_column).to_pylist()]
            errors = ["no image bytes" if data is None else "" for data in inputs]
        else:
            inputs, errors = zip(*(self._locate(name) for name in names)) if names else ((), ())
        rows = [row_values(ScoreResult(index, name, error=error))
                for index, (name, error) in enumerate(zip(names, errors))]
        todo = [index for index, error in enumerate(errors) if not error]
        scored = self.scorer.iter_scores([inputs[i] for i in todo], names=[names[i] for i in todo],
                                         workers=self.workers)
        for index, result in zip(todo, scored):
            rows[index] = row_values(result)
        table = pa.Table.from_pylist(rows, schema=row_schema())
        for column in self.keep_columns:
            table = table.append_column(column, batch.column(column))
        return table

    def _locate(self, name: str) -> Tuple[Any, str]:
        """What the engine reads for a path (a local path, or a URI's bytes), or the error that stops it."""
        entry = image_entry(name, self._opener)
        return entry.data, entry.error


def _image_bytes(value: Any) -> Any:
    """The encoded image of a bytes column's value (``None`` for none): Hugging Face's Image feature is stored as
    ``{"bytes", "path"}``, and Ray's readers fill a sample without the column with NaN."""
    if isinstance(value, dict):
        return value.get("bytes")
    return None if isinstance(value, float) else value


def work_unit(kind: str, paths: Sequence[str], skip: Sequence[str] = (),
              row_groups: Optional[Tuple[int, int]] = None) -> str:
    """One row of a :class:`SourceScorer`'s input: a tar shard or Parquet file (``kind`` ``tar`` or ``parquet``, one
    path; ``row_groups`` ``(first, stop)``: a part of the Parquet file), or a run of images (``image``, several),
    with the row names not to score again. JSON text, so that the Dataset has one column of one type whatever the
    units hold."""
    return json.dumps({"kind": kind, "paths": list(paths), "skip": list(skip), "row_groups": row_groups})


class SourceScorer:
    """The Ray actor's callable for tar shards, Parquet files and runs of images (see :func:`work_unit`).

    Each unit is read front to back with the readers of a local run and scored with the same engine, so its rows are
    the local run's rows: ``SHARD::MEMBER`` and ``FILE::ROW`` names, error rows for broken members and shards, and
    the ``extra_columns`` (the ``key``, the ``--id-col`` values) as text, as the Parquet output holds them. Rows are
    handed back :data:`ROWS_PER_OUTPUT` at a time while a unit is read.

    Args:
        scorer_options: Keyword arguments of ``QualityScorer``.
        threads: torch CPU threads.
        workers: Decoding threads of the engine.
        base_dir: The driver's working directory, where relative paths are found.
        extra_columns: The columns after :data:`~qualiclip_infer.results.COLUMNS`.
        image_col: The Parquet image column (``None``: the default choice).
        id_cols: The Parquet id columns (``None``: ``key`` when present, else the row number).
    """

    def __init__(self, scorer_options: Dict[str, Any], *, threads: int, workers: Optional[int], base_dir: str,
                 extra_columns: Sequence[str], image_col: Optional[str] = None,
                 id_cols: Optional[Sequence[str]] = None):
        self.scorer = load_actor_scorer(scorer_options, threads)
        self.workers = workers
        self.extra_columns = tuple(extra_columns)
        self.image_col = image_col
        self.id_cols = id_cols
        self._opener = InputOpener(base_dir)

    def __call__(self, batch: "pyarrow.Table") -> Iterator["pyarrow.Table"]:
        import pyarrow as pa

        schema = row_schema(self.extra_columns)
        rows: List[Dict[str, Any]] = []
        for text in batch.column("unit").to_pylist():
            unit = json.loads(text)
            skip = frozenset(unit["skip"])
            groups = tuple(unit["row_groups"]) if unit["row_groups"] else None
            entries = itertools.chain.from_iterable(
                input_entries(unit["kind"], path, image_col=self.image_col, id_cols=self.id_cols, skip=skip,
                              opener=self._opener, row_groups=groups) for path in unit["paths"])
            for result in score_entries(self.scorer, entries, workers=self.workers):
                rows.append(parquet_values(result, self.extra_columns, keep_empty=True))
                if len(rows) == ROWS_PER_OUTPUT:
                    yield pa.Table.from_pylist(rows, schema=schema)
                    rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=schema)
