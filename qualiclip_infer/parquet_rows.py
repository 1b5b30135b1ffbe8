"""Writing score rows as Parquet: one file, or a folder of part files (what Ray, Spark and pyarrow read as one table).

Needs pyarrow (in the ``ray`` extra). Rows are written in row groups as they arrive, and the file is completed when
the writer is closed, also after an interrupted run; scores keep their full float precision.
"""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Sequence

from .extras import require
from .results import CALIBRATED_COLUMNS, COLUMNS, ScoredRow, row_values

if TYPE_CHECKING:
    import pyarrow

_ROWS_PER_GROUP = 10_000
_ROWS_PER_PART = 1_000_000


def require_pyarrow() -> None:
    """Raises a one-line :class:`~qualiclip_infer.extras.MissingExtraError` when pyarrow is missing."""
    require("pyarrow.parquet", "ray", "Parquet output")


def row_schema(extra_columns: Sequence[str] = ()) -> "pyarrow.Schema":
    """The Arrow schema of score rows: path, score (float64), width, height (int64), error (str), then
    ``extra_columns``: mos and percentile (float64), any other (``key``, ``--id-col`` values) as strings."""
    import pyarrow as pa

    types = {"path": pa.string(), "score": pa.float64(), "width": pa.int64(), "height": pa.int64(),
             "error": pa.string(), "mos": pa.float64(), "percentile": pa.float64()}
    return pa.schema([(column, types.get(column, pa.string())) for column in (*COLUMNS, *extra_columns)])


def parquet_values(row: ScoredRow, extra_columns: Sequence[str] = (), *, keep_empty: bool = False) -> Dict[str, Any]:
    """A row's values for :func:`row_schema`: full precision, the string columns beyond it as text (``None`` when
    empty; with ``keep_empty``, only when missing, so that ``""`` stays ``""`` as a local run's json rows hold it)."""
    values = row_values(row, extra_columns)
    for column in extra_columns:
        if column not in CALIBRATED_COLUMNS:
            value = values[column]
            values[column] = None if value is None or (value == "" and not keep_empty) else str(value)
    return values


def is_folder_target(path: str) -> bool:
    """Whether ``-o path`` names a folder of part files (an existing folder, or a path ending in a separator)."""
    return os.path.isdir(path) or path.endswith(("/", os.sep))


class ParquetRowWriter:
    """Writes :class:`~qualiclip_infer.results.ScoreResult` rows to ``path``: a ``.parquet`` file, or a folder.

    A folder gets ``part-00000.parquet``, ``part-00001.parquet``... of at most a million rows each; earlier
    ``part-*.parquet`` files in it are removed first, as writing a file replaces it. The ``extra_columns`` (the
    rows' ``mos`` and ``percentile``, or their ``key`` and ``--id-col`` values) follow the base columns.

    Raises:
        ImportError: pyarrow is not installed (the message names the extra).
        OSError: The file or folder cannot be created.
    """

    def __init__(self, path: str, extra_columns: Sequence[str] = ()):
        require_pyarrow()
        self._extra = tuple(extra_columns)
        self._schema = row_schema(self._extra)
        self._folder = path if is_folder_target(path) else None
        if self._folder is not None:
            os.makedirs(self._folder, exist_ok=True)
            for old in glob.glob(os.path.join(glob.escape(self._folder), "part-*.parquet")):
                os.remove(old)
        self._path = path
        self._parts = 0
        self._in_part = 0
        self._buffer: List[dict] = []
        self._writer: Any = None
        if self._folder is None:
            self._open(path)  # fail now, not after the scoring, if the file cannot be created

    def write(self, rows: Iterable[Any]) -> None:
        """Buffers rows, writing a row group each time enough have come."""
        self._buffer.extend(parquet_values(row, self._extra) for row in rows)
        while len(self._buffer) >= _ROWS_PER_GROUP:
            self._flush(_ROWS_PER_GROUP)

    def close(self) -> None:
        """Writes the remaining rows and completes the file (or part file); always leaves a readable output."""
        if self._buffer or (self._writer is None and self._parts == 0):
            self._flush(len(self._buffer))
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _flush(self, count: int) -> None:
        import pyarrow as pa

        if self._folder is not None and (self._writer is None or self._in_part >= _ROWS_PER_PART):
            if self._writer is not None:
                self._writer.close()
            self._open(os.path.join(self._folder, f"part-{self._parts:05d}.parquet"))
            self._parts += 1
            self._in_part = 0
        rows, self._buffer = self._buffer[:count], self._buffer[count:]
        self._writer.write_table(pa.Table.from_pylist(rows, schema=self._schema))
        self._in_part += len(rows)

    def _open(self, path: str) -> None:
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(path, self._schema)
