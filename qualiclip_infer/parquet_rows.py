"""Writing score rows as Parquet: one file, or a folder of part files (what Ray, Spark and pyarrow read as one table).

Needs pyarrow (in the ``ray`` extra). Rows are written in row groups as they arrive, and the file is completed when
the writer is closed, also after an interrupted run; scores keep their full float precision.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Iterable, List

from .distributed import RAY_EXTRA_HINT

_ROWS_PER_GROUP = 10_000
_ROWS_PER_PART = 1_000_000


def require_pyarrow() -> None:
    """Raises a one-line :class:`ImportError` naming the extra to install when pyarrow is missing."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as error:
        raise ImportError(f"Parquet output needs pyarrow ({error}): {RAY_EXTRA_HINT}") from None


def is_folder_target(path: str) -> bool:
    """Whether ``-o path`` names a folder of part files (an existing folder, or a path ending in a separator)."""
    return os.path.isdir(path) or path.endswith(("/", os.sep))


class ParquetRowWriter:
    """Writes :class:`~qualiclip_infer.engine.ScoreResult` rows to ``path``: a ``.parquet`` file, or a folder.

    A folder gets ``part-00000.parquet``, ``part-00001.parquet``... of at most a million rows each; earlier
    ``part-*.parquet`` files in it are removed first, as writing a file replaces it.

    With ``calibrated``, the rows' ``mos`` and ``percentile`` are written too (float64 columns after ``error``).

    Raises:
        ImportError: pyarrow is not installed (the message names the extra).
        OSError: The file or folder cannot be created.
    """

    def __init__(self, path: str, calibrated: bool = False):
        require_pyarrow()
        import pyarrow as pa

        from .distributed import row_schema

        self._schema = row_schema()
        self._calibrated = calibrated
        if calibrated:
            self._schema = pa.schema([*self._schema, ("mos", pa.float64()), ("percentile", pa.float64())])
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
        self._buffer.extend(dict(path=row.name, score=row.score, width=row.width, height=row.height, error=row.error,
                                 **({"mos": row.mos, "percentile": row.percentile} if self._calibrated else {}))
                            for row in rows)
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
