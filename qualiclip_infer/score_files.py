"""Reading back the rows of any ``qualiclip-score`` output: csv, jsonl, json, a Parquet file or a folder of part
files. The one reader of score files: the report, the evaluator's ``--scores`` and the dataset filter use it.

torch-free; Parquet needs pyarrow (the ``ray`` extra).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .extras import require
from .messages import first_line
from .output import SUFFIX_FORMATS, TEXT_ENCODING, TEXT_ERRORS
from .results import ScoreResult



class ScoresFileError(ValueError):
    """A scores file that cannot be read; the message is one line naming the file and the cause."""


def file_format(path: str) -> str:
    """``csv``, ``jsonl``, ``json`` or ``parquet``, from the suffix (a folder: Parquet part files); csv otherwise."""
    if os.path.isdir(path):
        return "parquet"
    return SUFFIX_FORMATS.get(os.path.splitext(path)[1].lower(), "csv")


def read_score_rows(path: str, *, strict: bool = True) -> List[ScoreResult]:
    """Reads the rows of a ``qualiclip-score`` output: csv, jsonl, json, a Parquet file or a folder of part files.

    The columns used are ``path`` and ``score`` (required), ``width``, ``height``, ``error``, ``mos`` and
    ``percentile``; others are ignored. A later row for the same path replaces an earlier one (a resumed run's), in
    the place of the first.

    Args:
        path: The file (by its suffix: ``.csv``, ``.jsonl``/``.ndjson``, ``.json``, ``.parquet`` or a folder; csv
            otherwise).
        strict: Refuse the whole file for a row without a path or with a value that is not a number. Without it,
            such a row is skipped (no path) or kept as an unscored row whose error names the value, so that the
            other rows can be used.

    Returns:
        One :class:`~qualiclip_infer.results.ScoreResult` per path, ``index`` its position in the result.

    Raises:
        ScoresFileError: The file cannot be read, lacks the columns, or holds a value that is not a number.
        MissingExtraError: A Parquet file, and pyarrow is not installed.
    """
    fmt = file_format(path)
    try:
        if fmt == "parquet":
            records = _parquet_records(path)
        else:
            with open(path, encoding=TEXT_ENCODING + ("-sig" if fmt == "csv" else ""), errors=TEXT_ERRORS, newline="") as f:
                text = f.read()
            records = _csv_records(path, text) if fmt == "csv" else _json_records(path, text, fmt)
    except OSError as error:
        raise ScoresFileError(f"{path}: {error.strerror or type(error).__name__}") from None
    rows: Dict[str, ScoreResult] = {}
    for number, record in records:
        try:
            row = _row(number, record)
        except _BadRecord as problem:
            if strict:
                raise ScoresFileError(f"{path}, record {number}: {problem}") from None
            if not problem.name:
                continue
            row = ScoreResult(number, problem.name, error=str(problem))
        rows[row.name] = row
    for index, row in enumerate(rows.values()):
        row.index = index
    return list(rows.values())


def _csv_records(path: str, text: str) -> List[Tuple[int, Mapping[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    _require_columns(path, reader.fieldnames or [])
    try:
        return [(reader.line_num, record) for record in reader]
    except csv.Error as error:
        raise ScoresFileError(f"{path}, line {reader.line_num}: {error}") from None


def _json_records(path: str, text: str, fmt: str) -> List[Tuple[int, Mapping[str, Any]]]:
    try:
        if fmt == "json":
            values = json.loads(text)
            records = list(enumerate(values if isinstance(values, list) else [values], 1))
        else:
            records = [(number, json.loads(line)) for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    except ValueError as error:
        raise ScoresFileError(f"{path}: not {fmt} ({error})") from None
    for number, record in records:
        if not isinstance(record, dict):
            raise ScoresFileError(f"{path}, record {number}: a json {type(record).__name__}, not an object")
        _require_columns(path, record.keys(), f", record {number}")
    return records


def _parquet_records(path: str) -> List[Tuple[int, Mapping[str, Any]]]:
    pq = require("pyarrow.parquet", "ray", f"Reading {path}")
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises its own types for files that are not Parquet
        raise ScoresFileError(f"{path}: not a Parquet table ({first_line(error)})") from None
    _require_columns(path, table.column_names)
    return list(enumerate(table.to_pylist(), 1))


def _require_columns(path: str, columns: Iterable[str], where: str = "") -> None:
    missing = [column for column in ("path", "score") if column not in set(columns)]
    if missing:
        raise ScoresFileError(f"{path}{where}: not a qualiclip-score output: no column "
                               f"{', '.join(map(repr, missing))}")


class _BadRecord(ValueError):
    """Why a record is not a row (the message), and its path if it has one."""

    def __init__(self, message: str, name: str = ""):
        super().__init__(message)
        self.name = name


def _row(number: int, record: Mapping[str, Any]) -> ScoreResult:
    name = record.get("path")
    if not isinstance(name, str) or not name:
        raise _BadRecord("no path")
    score = _number(name, record, "score")
    error = record.get("error") or ""
    if score is None and not error:
        error = "no score"
    return ScoreResult(number, name, score, _whole(name, record, "width"), _whole(name, record, "height"),
                       str(error), _number(name, record, "mos"), _number(name, record, "percentile"))


def _number(name: str, record: Mapping[str, Any], column: str) -> Optional[float]:
    value = record.get(column)
    if value is None or value == "":
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise _BadRecord(f"{column} {value!r} is not a number", name) from None
    return value if math.isfinite(value) else None


def _whole(name: str, record: Mapping[str, Any], column: str) -> Optional[int]:
    value = _number(name, record, column)
    return None if value is None else int(value)
