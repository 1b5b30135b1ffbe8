"""Writing rows with extra columns (``key``, ``--id-col`` values) and reading such files back for ``--resume``.

The columns are ``path, score, width, height, error`` as ``qualiclip-score`` writes them for image files, then the
extra columns; csv, jsonl, json and table output keep the base columns' formatting
(:func:`~..results.json_record`).
A resumed file must have exactly the same columns; its incomplete last record (a killed run) is cut off.
"""

from __future__ import annotations

import csv
import json
import os
from typing import IO, Any, Iterable, List, Optional, Sequence, Set, TextIO, Tuple

from ..output import Finished, OutputFileError
from ..output import _csv_line  # the quoting rules every csv row of the project follows
from ..results import COLUMNS, SCORE_DECIMALS, json_record
from .entries import SourceResult

_ENCODING, _ERRORS = "utf-8", "surrogateescape"


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


class SourceRowWriter:
    """Writes :class:`~.entries.SourceResult` rows with their extra columns, flushing after each call.

    Args:
        stream: Text stream (see :func:`~..output.open_output`).
        fmt: ``csv``, ``jsonl``, ``json`` or ``table``.
        extra_columns: The columns after the base ones, in order.
        header: Write the csv/table header (not when appending to an earlier run's file).
    """

    def __init__(self, stream: TextIO, fmt: str, extra_columns: Sequence[str], *, header: bool = True):
        self._stream, self._fmt, self._extra = stream, fmt, list(extra_columns)
        self._count = 0
        if fmt == "json":
            stream.write("[")
        elif header and fmt in ("csv", "table"):
            stream.write(self._line([*COLUMNS, *self._extra]))
        stream.flush()

    def write(self, rows: Iterable[SourceResult]) -> None:
        """Writes and flushes rows."""
        for row in rows:
            self._stream.write(self._format(row))
            self._count += 1
        self._stream.flush()

    def close(self) -> None:
        """Ends the output (closes the json array) and flushes; the stream stays open."""
        if self._fmt == "json":
            self._stream.write("\n]\n" if self._count else "]\n")
        self._stream.flush()

    def _format(self, row: SourceResult) -> str:
        extras = {column: row.extra.get(column) for column in self._extra}
        if self._fmt in ("jsonl", "json"):
            text = json.dumps({**json_record(row), **extras}, ensure_ascii=False, default=str)
            return text + "\n" if self._fmt == "jsonl" else ("," if self._count else "") + "\n" + text
        score = "" if row.score is None else f"{row.score:.{SCORE_DECIMALS if self._fmt == 'csv' else 4}f}"
        return self._line([row.name, score, _cell(row.width), _cell(row.height), row.error,
                           *map(_cell, extras.values())])

    def _line(self, cells: Sequence[str]) -> str:
        return _csv_line(cells) if self._fmt == "csv" else "  ".join(cells).rstrip() + "\n"


class SourceParquetWriter:
    """Writes rows with extra columns (as strings) to one Parquet file, in row groups as they arrive."""

    _ROWS_PER_GROUP = 10_000

    def __init__(self, path: str, extra_columns: Sequence[str]):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..parquet_rows import row_schema

        self._extra = list(extra_columns)
        base = row_schema()
        self._schema = pa.schema([*base, *(pa.field(column, pa.string()) for column in self._extra)])
        self._writer = pq.ParquetWriter(path, self._schema)
        self._buffer: List[dict] = []

    def write(self, rows: Iterable[SourceResult]) -> None:
        """Buffers rows, writing a row group each time enough have come."""
        self._buffer.extend({"path": row.name, "score": row.score, "width": row.width, "height": row.height,
                             "error": row.error, **{c: _cell(row.extra.get(c)) or None for c in self._extra}}
                            for row in rows)
        if len(self._buffer) >= self._ROWS_PER_GROUP:
            self._flush()

    def close(self) -> None:
        """Writes the remaining rows and completes the file."""
        self._flush()
        self._writer.close()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self._schema))
            self._buffer = []


def prepare_source_resume(path: str, fmt: str, extra_columns: Sequence[str]) -> Finished:
    """The paths an earlier run's csv or jsonl file holds, after cutting off a last record left incomplete.

    Raises:
        OutputFileError: The file cannot be read, or its columns are not these (then it is left unchanged).
    """
    columns = [*COLUMNS, *extra_columns]
    try:
        with open(path, "rb") as f:
            names, keep, add_newline = (_scan_csv if fmt == "csv" else _scan_jsonl)(path, f, columns)
            size = f.seek(0, os.SEEK_END)
    except FileNotFoundError:
        return Finished(set(), False)
    except OSError as error:
        raise OutputFileError(f"--resume {path}: {error.strerror or type(error).__name__}") from error
    try:
        if add_newline:
            with open(path, "ab") as f:
                f.write(b"\n")
        elif keep < size:
            os.truncate(path, keep)
    except OSError as error:
        raise OutputFileError(f"--resume {path}: cannot cut its incomplete last row: {error.strerror}") from error
    return Finished(names, keep > 0)


def _refuse(path: str, line: int, reason: str) -> OutputFileError:
    return OutputFileError(f"--resume {path}: line {line}: {reason}; the file is left unchanged")


def _scan_csv(path: str, f: IO[bytes], columns: List[str]) -> Tuple[Set[str], int, bool]:
    names: Set[str] = set()
    keep, record_bytes, number = 0, b"", 0
    for line in iter(f.readline, b""):
        number += 1
        if not line.endswith(b"\n"):
            break  # the killed run's last, incomplete record
        record_bytes += line
        if record_bytes.count(b'"') % 2:
            continue  # a quoted field goes on over the newline
        cells = next(csv.reader([record_bytes.decode(_ENCODING, _ERRORS)]))
        if keep == 0 and cells != columns:
            raise _refuse(path, number, f"columns {','.join(cells)!r} instead of {','.join(columns)!r}")
        if keep and len(cells) != len(columns):
            raise _refuse(path, number, f"{len(cells)} columns instead of {len(columns)}")
        if keep:
            names.add(cells[0])
        keep += len(record_bytes)
        record_bytes = b""
    return names, keep, False


def _scan_jsonl(path: str, f: IO[bytes], columns: List[str]) -> Tuple[Set[str], int, bool]:
    names: Set[str] = set()
    keep, number = 0, 0
    for line in iter(f.readline, b""):
        number += 1
        value = _json_object(line)
        if not line.endswith(b"\n"):
            if value is not None and list(value) == columns:
                names.add(value["path"])
                return names, keep + len(line), True
            break
        if value is None or list(value) != columns or not isinstance(value["path"], str):
            raise _refuse(path, number, f"not a row with keys {', '.join(columns)}")
        names.add(value["path"])
        keep += len(line)
    return names, keep, False


def _json_object(line: bytes) -> Optional[dict]:
    try:
        value = json.loads(line.decode(_ENCODING, _ERRORS))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
