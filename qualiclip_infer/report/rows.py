"""The rows a report shows, read from any output file of ``qualiclip-score`` (csv, jsonl, json, Parquet) or taken
from results as they are scored. No torch: ``qualiclip-report`` builds a page without the model."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from .._errors import first_line
from ..output import SUFFIX_FORMATS

_ENCODING, _ERRORS = "utf-8", "surrogateescape"  # as qualiclip_infer.output writes files


class ReportInputError(ValueError):
    """A scores file that cannot be read for a report; the message is one line naming the file and the cause."""


@dataclass
class ReportRow:
    """One image in a report.

    Attributes:
        path: The image's path, as the scores file lists it.
        score: Its score, ``None`` if it was not scored.
        width: Upright width, if known.
        height: Upright height, if known.
        error: Why it was not scored.
        mos: With a calibration, the predicted MOS.
        percentile: With a calibration, its percentile in the calibration's dataset.
        human: In an evaluation report, the dataset's own opinion score of the image.
    """

    path: str
    score: Optional[float]
    width: Optional[int] = None
    height: Optional[int] = None
    error: str = ""
    mos: Optional[float] = None
    percentile: Optional[float] = None
    human: Optional[float] = None


def rows_from_results(results: Iterable[Any]) -> List[ReportRow]:
    """Report rows from :class:`~qualiclip_infer.results.ScoreResult`-like objects (``name``, ``score``, ...)."""
    return [ReportRow(result.name, result.score, result.width, result.height, result.error or "",
                      getattr(result, "mos", None), getattr(result, "percentile", None)) for result in results]


class RowCollector:
    """Passes scoring results on unchanged while keeping each as a :class:`ReportRow`, for a report built after
    the run without reading its output file back.

    Args:
        results: The results, consumed lazily as the caller iterates.
    """

    def __init__(self, results: Iterable[Any]):
        self._results = results
        self.rows: List[ReportRow] = []

    def __iter__(self) -> Iterator[Any]:
        for result in self._results:
            self.rows.extend(rows_from_results([result]))
            yield result


def file_format(path: str) -> str:
    """``csv``, ``jsonl``, ``json`` or ``parquet``, from the suffix (a folder: Parquet part files); csv otherwise."""
    if os.path.isdir(path):
        return "parquet"
    return SUFFIX_FORMATS.get(os.path.splitext(path)[1].lower(), "csv")


def read_rows(path: str) -> List[ReportRow]:
    """Reads the rows of a ``qualiclip-score`` output: csv, jsonl, json, a Parquet file or a folder of part files.

    The columns used are ``path`` and ``score`` (required), ``width``, ``height``, ``error``, ``mos`` and
    ``percentile``; others are ignored. A later row for the same path replaces an earlier one.

    Raises:
        ReportInputError: The file cannot be read or lacks the columns.
    """
    fmt = file_format(path)
    try:
        if fmt == "parquet":
            records = _parquet_records(path)
        else:
            with open(path, encoding=_ENCODING + ("-sig" if fmt == "csv" else ""), errors=_ERRORS, newline="") as f:
                text = f.read()
            records = _csv_records(path, text) if fmt == "csv" else _json_records(path, text, fmt)
    except OSError as error:
        raise ReportInputError(f"{path}: {error.strerror or type(error).__name__}") from None
    rows: Dict[str, ReportRow] = {}
    for number, record in records:
        row = _row(path, number, record)
        rows.pop(row.path, None)
        rows[row.path] = row
    return list(rows.values())


def _csv_records(path: str, text: str) -> List[Tuple[int, Mapping[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    _require_columns(path, reader.fieldnames or [])
    try:
        return [(reader.line_num, record) for record in reader]
    except csv.Error as error:
        raise ReportInputError(f"{path}, line {reader.line_num}: {error}") from None


def _json_records(path: str, text: str, fmt: str) -> List[Tuple[int, Mapping[str, Any]]]:
    try:
        if fmt == "json":
            values = json.loads(text)
            records = list(enumerate(values if isinstance(values, list) else [values], 1))
        else:
            records = [(number, json.loads(line)) for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    except ValueError as error:
        raise ReportInputError(f"{path}: not {fmt} ({error})") from None
    for number, record in records:
        if not isinstance(record, dict):
            raise ReportInputError(f"{path}, record {number}: a json {type(record).__name__}, not an object")
        _require_columns(path, record.keys(), f", record {number}")
    return records


def _parquet_records(path: str) -> List[Tuple[int, Mapping[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ReportInputError(f"{path}: reading Parquet needs pyarrow ({error}): pip install "
                               f"\"qualiclip-infer[ray]\"") from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises its own types for files that are not Parquet
        raise ReportInputError(f"{path}: not a Parquet table ({first_line(error)})") from None
    _require_columns(path, table.column_names)
    return list(enumerate(table.to_pylist(), 1))


def _require_columns(path: str, columns: Iterable[str], where: str = "") -> None:
    missing = [column for column in ("path", "score") if column not in set(columns)]
    if missing:
        raise ReportInputError(f"{path}{where}: not a qualiclip-score output: no column "
                               f"{', '.join(map(repr, missing))}")


def _row(path: str, number: int, record: Mapping[str, Any]) -> ReportRow:
    name = record.get("path")
    if not isinstance(name, str) or not name:
        raise ReportInputError(f"{path}, record {number}: no path")
    score = _number(path, number, record, "score")
    error = record.get("error") or ""
    if score is None and not error:
        error = "no score"
    return ReportRow(name, score, _whole(path, number, record, "width"), _whole(path, number, record, "height"),
                     str(error), _number(path, number, record, "mos"), _number(path, number, record, "percentile"))


def _number(path: str, number: int, record: Mapping[str, Any], column: str) -> Optional[float]:
    value = record.get(column)
    if value is None or value == "":
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ReportInputError(f"{path}, record {number}: {column} {value!r} is not a number") from None
    return value if math.isfinite(value) else None


def _whole(path: str, number: int, record: Mapping[str, Any], column: str) -> Optional[int]:
    value = _number(path, number, record, column)
    return None if value is None else int(value)
