"""Output files of ``qualiclip-score``: the formats, the row writer, and reading an earlier run's file to resume it.

Kept free of torch so that the CLI can check the output (and refuse a bad ``--resume`` file) before it loads the
model. Writers accept any row object with ``name``, ``score``, ``width``, ``height`` and ``error`` attributes (the
engine's ``ScoreResult``); files call that first column ``path``. After these columns come the run's extra columns,
if any (``mos, percentile`` of a calibration, the ``key`` or ``--id-col`` values of shard and Parquet inputs), read
with :func:`~qualiclip_infer.results.row_value`.

Every path string must survive a write and a resume unchanged, whatever it contains: commas, quotes, newlines,
``\\r``, U+2028 and other characters that :meth:`str.splitlines` treats as line breaks, spaces at either end, and
non-UTF-8 file names (kept as their raw bytes through ``errors="surrogateescape"``). Files are therefore parsed with
the :mod:`csv` and :mod:`json` modules over lines split at ``\\n`` only, never with ``splitlines``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
import sys
from typing import IO, Any, Iterable, NamedTuple, Optional, Sequence, Set, TextIO, Tuple

from .results import COLUMNS, PERCENTILE_DECIMALS, SCORE_DECIMALS, ScoredRow, json_record, row_value

FORMATS = ("table", "csv", "jsonl", "json", "parquet")
RESUMABLE_FORMATS = ("csv", "jsonl")
SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
_TOOL = "qualiclip-score"
# Output files are UTF-8; file names that are not are written as their raw bytes and read back the same way.
TEXT_ENCODING, TEXT_ERRORS = "utf-8", "surrogateescape"
# How every jsonl record the writer produces begins: a cut-off last line must be a prefix of a record.
_JSONL_START = '{"path": "'
_CSV_SCORE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")  # never nan or inf: this tool writes no such score
_CSV_SIZE = re.compile(r"[0-9]+")


class OutputFileError(ValueError):
    """An output file that cannot be opened, or that ``--resume`` refuses; the message is one line naming it."""


class Finished(NamedTuple):
    """What an earlier run's output file already holds.

    Attributes:
        names: The paths listed in the file.
        has_content: Whether the file has a header or rows, so that appended rows need no csv header.
    """

    names: Set[str]
    has_content: bool


def choose_format(requested: Optional[str], output: Optional[str], terminal: bool) -> str:
    """The output format: ``requested`` if given, else from the ``-o`` suffix (a folder: parquet), else table on a
    terminal, else csv.

    Args:
        requested: The ``--format`` value, or ``None``.
        output: The ``-o`` file, or ``None`` for standard output.
        terminal: Whether standard output is a terminal.
    """
    if requested:
        return requested
    if output:
        from .parquet_rows import is_folder_target  # a folder can only hold Parquet part files

        if is_folder_target(output):
            return "parquet"
        return SUFFIX_FORMATS.get(os.path.splitext(output)[1].lower(), "csv")
    return "table" if terminal else "csv"


def open_output(path: Optional[str], append: bool = False) -> TextIO:
    """The text stream rows go to: ``path`` (UTF-8, raw bytes for non-UTF-8 names), or standard output.

    Raises:
        OutputFileError: The file cannot be opened.
    """
    if path is None:
        if isinstance(sys.stdout, io.TextIOWrapper):
            # A file name that is not UTF-8 would otherwise stop the run with UnicodeEncodeError.
            sys.stdout.reconfigure(errors=TEXT_ERRORS)
        return sys.stdout
    try:
        return open(path, "a" if append else "w", encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="")
    except OSError as error:
        raise OutputFileError(f"-o {path}: {error.strerror or type(error).__name__}") from error


# ---------------------------------------------------------------------------------------------------------------
# Writing


class OutputWriteError(OSError):
    """Writing rows failed (disk full, folder gone, I/O error); ``filename`` is the output, ``strerror`` the cause."""


def write_error(error: OSError, name: str) -> OutputWriteError:
    """``error`` as an :class:`OutputWriteError` naming the output ``name``."""
    if isinstance(error, OutputWriteError):
        return error
    return OutputWriteError(error.errno, f"{error.strerror or type(error).__name__} (while writing rows)", name)


def close_output(stream: TextIO, name: str) -> None:
    """Closes an output file, the buffered rest written.

    Raises:
        OutputWriteError: That last write failed.
    """
    try:
        stream.close()
    except OSError as error:
        raise write_error(error, name) from error


class RowWriter:
    """Writes rows in one format, flushing after each call so that an interrupted run keeps every row written.

    A failed write (disk full, I/O error) raises :class:`OutputWriteError` naming the output; the rows flushed
    before it stay complete records, which ``--resume`` keeps (a row cut in the middle is cut off and scored again).
    After a failure the writer writes nothing more.

    Args:
        stream: Text stream to write to (see :func:`open_output`).
        fmt: One of :data:`FORMATS`.
        header: Write the csv/table header (not when appending to an earlier run's file).
        path_width: Width of the table's path column.
        extra_columns: The columns written after the base ones (e.g.
            :data:`~qualiclip_infer.results.CALIBRATED_COLUMNS`), in order.
        name: How a write error names the output (``-o`` FILE).
    """

    def __init__(self, stream: TextIO, fmt: str, *, header: bool = True, path_width: int = 40,
                 extra_columns: Sequence[str] = (), name: str = "standard output"):
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self._stream = stream
        self._fmt = fmt
        self._path_width = path_width
        self._name = name
        self._count = 0
        self._extra = tuple(extra_columns)
        self._failed = False
        columns = COLUMNS + self._extra
        if fmt == "json":
            self._put("[")
        elif header and fmt == "csv":
            self._put(_csv_line(columns))
        elif header and fmt == "table":
            self._put(self._table_line(columns))
        else:
            self._put("")

    def write(self, rows: Iterable[ScoredRow]) -> None:
        """Writes and flushes rows.

        Raises:
            OutputWriteError: The write failed.
        """
        self._put("".join(self._format(row) for row in rows))

    def close(self) -> None:
        """Ends the output (closes the json array) and flushes; the stream stays open."""
        if self._failed:
            return
        if self._fmt == "json":
            self._put("\n]\n" if self._count else "]\n")
        else:
            self._put("")

    def _put(self, text: str) -> None:
        if self._failed:
            raise OutputWriteError(0, "an earlier write failed", self._name)
        try:
            self._stream.write(text)
            self._stream.flush()
        except OSError as error:
            if isinstance(error, BrokenPipeError):  # the reader left (| head): not a machine failure
                raise
            self._failed = True
            raise write_error(error, self._name) from error

    def _format(self, row: ScoredRow) -> str:
        self._count += 1
        if self._fmt in ("jsonl", "json"):
            # default=str: an --id-col value of a type json lacks (a date, a decimal) is written as its text
            text = json.dumps(json_record(row, self._extra), ensure_ascii=False, default=str)
            return text + "\n" if self._fmt == "jsonl" else ("," if self._count > 1 else "") + "\n" + text
        decimals = SCORE_DECIMALS if self._fmt == "csv" else 4
        cells = [row.name, _decimal(row.score, decimals), _blank(row.width), _blank(row.height), row.error]
        cells += [_cell(row_value(row, column), column, decimals) for column in self._extra]
        return _csv_line(cells) if self._fmt == "csv" else self._table_line(cells)

    def _table_line(self, cells: Sequence[str]) -> str:
        path, score, width, height, error, *extra_cells = cells
        extra = "".join(f"  {cell:>10}" for cell in extra_cells)
        return f"{path:<{self._path_width}}  {score:>6}  {width:>5}  {height:>6}{extra}  {error}".rstrip() + "\n"


def _csv_line(cells: Sequence[str]) -> str:
    buffer = io.StringIO()
    # The writer quotes only the characters of its line terminator, and a bare "\r" would end the record when read
    # back: rows with one are quoted in full.
    quoting = csv.QUOTE_ALL if any("\r" in cell for cell in cells) else csv.QUOTE_MINIMAL
    csv.writer(buffer, lineterminator="\n", quoting=quoting).writerow(cells)
    return buffer.getvalue()


def _decimal(value: Optional[float], decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def _blank(value: Any) -> str:
    return "" if value is None else str(value)


def _cell(value: Any, column: str, decimals: int) -> str:
    """An extra column's text: calibrated values as decimals (percentiles with fewer), anything else as it is."""
    if column == "mos":
        return _decimal(value, decimals)
    if column == "percentile":
        return _decimal(value, PERCENTILE_DECIMALS)
    return _blank(value)


# ---------------------------------------------------------------------------------------------------------------
# Resuming


def prepare_resume(path: str, fmt: str, extra_columns: Sequence[str] = ()) -> Finished:
    """Checks an earlier run's output file and readies it for appending, for ``--resume``.

    The whole file is validated first, without changing it: the csv header, and every complete record (its
    columns and their types). Only a file that passes is changed, and only at its end: a last record that the killed
    run left incomplete (no final newline, or cut inside a quoted csv field) is cut off, so that image is scored
    again. A last jsonl line that is a complete, valid record missing only its newline is kept and the newline added.

    Args:
        path: The ``-o`` file; it need not exist.
        fmt: ``csv`` or ``jsonl``.
        extra_columns: The columns the run writes after the base ones; the file must have exactly these.

    Returns:
        The paths already in the file, and whether it has content (so appended csv rows need no header).

    Raises:
        OutputFileError: The file cannot be read or changed, or is not a ``qualiclip-score`` output in that format
            (then it is left untouched).
    """
    if fmt not in RESUMABLE_FORMATS:
        raise ValueError(f"only {' and '.join(RESUMABLE_FORMATS)} files can be resumed, not {fmt!r}")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return Finished(set(), False)
    except OSError as error:
        raise OutputFileError(f"--resume {path}: {error.strerror or type(error).__name__}") from error
    if stat.S_ISDIR(mode):
        raise OutputFileError(f"--resume {path}: is a folder, not a {fmt} file")
    if not stat.S_ISREG(mode):
        # Reading a FIFO would wait for a writer forever; a device has no earlier rows.
        raise OutputFileError(f"--resume {path}: not a regular file; --resume reads an earlier run's {fmt} file")
    try:
        with open(path, "rb") as f:
            columns = COLUMNS + tuple(extra_columns)
            scan = _scan_csv(path, f, columns) if fmt == "csv" else _scan_jsonl(path, f, columns)
            size = f.seek(0, os.SEEK_END)
    except FileNotFoundError:
        return Finished(set(), False)
    except OSError as error:
        raise OutputFileError(f"--resume {path}: {error.strerror or type(error).__name__}") from error
    names, keep, complete_last = scan
    try:
        if complete_last:
            with open(path, "ab") as f:
                f.write(b"\n")
        elif keep < size:
            os.truncate(path, keep)
    except OSError as error:
        raise OutputFileError(f"--resume {path}: cannot cut its incomplete last row: "
                              f"{error.strerror or type(error).__name__}") from error
    return Finished(names, keep > 0)


class _Scan(NamedTuple):
    names: Set[str]
    keep: int  # bytes of complete records; anything after them is cut off
    complete_last: bool  # the last line is a complete record that only lacks its newline


class _Lines:
    """A binary file's lines split at ``\\n`` only, decoded, counting the bytes handed out."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.offset = 0
        self.number = 0
        self.last = ""  # the last line handed out
        self.ended = True  # whether it ends with a newline
        self.exhausted = False

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        line = self._f.readline()
        if not line:
            self.exhausted = True
            raise StopIteration
        self.offset += len(line)
        self.number += 1
        self.ended = line.endswith(b"\n")
        self.last = line.decode(TEXT_ENCODING, TEXT_ERRORS)
        return self.last


def _refuse(path: str, fmt: str, reason: str) -> OutputFileError:
    return OutputFileError(f"--resume {path}: not a {_TOOL} {fmt} output ({reason}); the file is left unchanged")


def _scan_csv(path: str, f: IO[bytes], columns: Tuple[str, ...]) -> _Scan:
    lines = _Lines(f)
    rows = csv.reader(lines, strict=True)
    names: Set[str] = set()
    start = 0  # where the record being read begins
    header = _csv_line(columns)
    while True:
        first = lines.number + 1
        try:
            row = next(rows)
        except StopIteration:
            return _Scan(names, start, False)
        except csv.Error as error:
            if not lines.exhausted:
                raise _refuse(path, "csv", f"line {lines.number}: {error}") from None
            row, cut = None, True  # the file ends inside a quoted field: a row cut off by the kill
        else:
            cut = not lines.ended  # no newline after the last row: cut off by the kill, maybe mid-number
        if start == 0:
            if cut and lines.number == 1 and header.startswith(lines.last):
                # Killed while writing the header: complete it rather than empty the file.
                return _Scan(names, lines.offset, True) if lines.last == header[:-1] else _Scan(names, 0, False)
            if cut or tuple(row) != columns:
                found = "" if cut else f", found {_clip(','.join(row))}"
                raise _refuse(path, "csv", f"no header {','.join(columns)}{found}")
        elif cut:
            return _Scan(names, start, False)
        else:
            problem = _csv_problem(row, columns)
            if problem:
                raise _refuse(path, "csv", f"line {first}: {problem}")
            names.add(row[0])
        start = lines.offset


def _csv_problem(row: Sequence[str], columns: Tuple[str, ...]) -> str:
    """Why a csv record is not a row this tool writes, or ``""``; extra columns may hold any text."""
    if len(row) != len(columns):
        return f"{len(row)} columns instead of {len(columns)}"
    path, score, width, height, _ = row[:len(COLUMNS)]
    if not path:
        return "empty path"
    if "\0" in path:
        return "a NUL character in the path"
    if score and not _CSV_SCORE.fullmatch(score):
        return f"score {_clip(score)} is not a number"
    for column, value in (("width", width), ("height", height)):
        if value and not _CSV_SIZE.fullmatch(value):
            return f"{column} {_clip(value)} is not a whole number"
    return ""


def _scan_jsonl(path: str, f: IO[bytes], columns: Tuple[str, ...]) -> _Scan:
    lines = _Lines(f)
    names: Set[str] = set()
    start = 0
    for line in lines:
        problem, name = _jsonl_row(line, columns)
        if not lines.ended:  # the last line lacks its newline
            if not problem:  # a whole record (it ends with its closing brace): keep it
                names.add(name)
                return _Scan(names, lines.offset, True)
            if line.startswith(_JSONL_START) or _JSONL_START.startswith(line):
                return _Scan(names, start, False)  # a record cut off by the kill
            raise _refuse(path, "jsonl", f"line {lines.number}: {problem}")
        if problem:
            raise _refuse(path, "jsonl", f"line {lines.number}: {problem}")
        names.add(name)
        start = lines.offset
    return _Scan(names, start, False)


def _jsonl_row(line: str, columns: Tuple[str, ...]) -> Tuple[str, str]:
    """Why a jsonl line is not a row this tool writes (``""`` if it is), and the row's path; extra columns may hold
    any json value."""
    try:
        value: Any = json.loads(line)
    except ValueError:
        return "not json", ""
    if not isinstance(value, dict):
        return f"a json {type(value).__name__}, not an object", ""
    if value.keys() != set(columns):
        return f"keys {_clip(', '.join(map(str, value)))} instead of {', '.join(columns)}", ""
    if not isinstance(value["path"], str) or not value["path"]:
        return "path is not a non-empty string", ""
    if "\0" in value["path"]:
        return "a NUL character in the path", ""
    if value["score"] is not None and (isinstance(value["score"], bool)
                                       or not isinstance(value["score"], (int, float))
                                       or not math.isfinite(value["score"])):
        return "score is not a finite number", ""
    for column in ("width", "height"):
        if value[column] is not None and (isinstance(value[column], bool) or not isinstance(value[column], int)
                                          or value[column] < 0):
            return f"{column} is not a whole number", ""
    if value["error"] is not None and not isinstance(value["error"], str):
        return "error is not a string", ""
    return "", value["path"]


def _clip(text: str, limit: int = 60) -> str:
    """``repr`` of a piece of a foreign file, short enough for a one-line message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
