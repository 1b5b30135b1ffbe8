"""The result of scoring one input, and the row every output format writes for it: the one row schema.

Kept free of torch, so that a front end that only passes results along (the Ray driver, which receives rows from its
actors) need not import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Sequence

# The columns of every output (csv, jsonl, json, table, Parquet, Ray Datasets), in this order. The first holds the
# result's ``name``: a path for files.
COLUMNS = ("path", "score", "width", "height", "error")
# Added after COLUMNS when scores are calibrated (qualiclip-score --calibration).
CALIBRATED_COLUMNS = ("mos", "percentile")
# float32 scores carry about 7 significant digits; text formats write 8 decimals.
SCORE_DECIMALS = 8
# A percentile is a point on a 0-100 scale interpolated between 101 quantiles: hundredths of a point are plenty.
PERCENTILE_DECIMALS = 2


@dataclass
class ScoreResult:
    """The outcome for one input.

    Attributes:
        index: Position of the input in the sequence given.
        name: The path (``os.fspath``) for a path, else the name given for it, else ``input[<index>]``.
        score: Quality in [0, 1], higher is better; ``None`` when the input could not be scored.
        width: Upright width in pixels; ``None`` when not even the header could be read.
        height: Upright height in pixels; ``None`` when not even the header could be read.
        error: Why the input was not scored, on one line and without the name; empty when scored.
        mos: With a calibration: the score as the predicted MOS of the calibration's dataset; else ``None``.
        percentile: With a calibration: where the score falls among that dataset's images (0-100); else ``None``.
    """

    index: int
    name: str
    score: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    error: str = ""
    mos: Optional[float] = None
    percentile: Optional[float] = None

    @property
    def ok(self) -> bool:
        """Whether the input was scored."""
        return self.score is not None


@dataclass
class SourceResult(ScoreResult):
    """A :class:`ScoreResult` with extra columns: the WebDataset ``key`` of a tar member, the ``--id-col`` values
    of a Parquet row.

    Attributes:
        extra: The extra columns' values, by column name.
    """

    extra: Dict[str, Any] = field(default_factory=dict)


class ScoredRow(Protocol):
    """What the writers read from a row (a :class:`ScoreResult` has these attributes)."""

    name: str
    score: Optional[float]
    width: Optional[int]
    height: Optional[int]
    error: str
    mos: Optional[float]  # read only for calibrated rows
    percentile: Optional[float]


# Decimals that text formats write for the columns holding a float; other columns are written as they are.
_JSON_DECIMALS = {"score": SCORE_DECIMALS, "mos": SCORE_DECIMALS, "percentile": PERCENTILE_DECIMALS}


def row_value(row: ScoredRow, column: str) -> Any:
    """A row's full-precision value for ``column``: ``path`` is its ``name``, the other :data:`COLUMNS` and
    :data:`CALIBRATED_COLUMNS` are its attributes, and any other column (``key``, ``--id-col`` values) comes from the
    row's ``extra`` mapping (``None`` when the row has none for it)."""
    if column == "path":
        return row.name
    if column in COLUMNS or column in CALIBRATED_COLUMNS:
        return getattr(row, column)
    return getattr(row, "extra", {}).get(column)


def row_values(row: ScoredRow, extra_columns: Sequence[str] = ()) -> Dict[str, Any]:
    """A row as a dict of :data:`COLUMNS` and then ``extra_columns`` (e.g. :data:`CALIBRATED_COLUMNS`) with
    full-precision values, for Parquet and Ray rows; no error is ``""``."""
    return {column: row_value(row, column) for column in (*COLUMNS, *extra_columns)}


def json_record(row: ScoredRow, extra_columns: Sequence[str] = ()) -> Dict[str, Any]:
    """A row as a json object of :data:`COLUMNS` and then ``extra_columns``: floats rounded as text formats write
    them, missing values ``null``."""
    values = row_values(row, extra_columns)
    for column, decimals in _JSON_DECIMALS.items():
        if column in values:
            values[column] = _rounded(values[column], decimals)
    values["error"] = values["error"] or None
    return values


def _rounded(value: Optional[float], decimals: int) -> Optional[float]:
    return None if value is None else round(value, decimals)


def from_values(values: Mapping[str, Any], index: int,
                extra_columns: Optional[Mapping[str, Callable[[Any], Any]]] = None) -> ScoreResult:
    """The :class:`ScoreResult` of a row dict as :func:`row_values` or :func:`json_record` give it.

    Args:
        values: The row's values by column.
        index: The result's index.
        extra_columns: Columns beyond :data:`COLUMNS`, each with what turns its value back into the value the row
            was written from (Parquet and Ray rows hold them as text); with any, the result is a
            :class:`SourceResult`.
    """
    base = (index, values["path"], values["score"], values["width"], values["height"], values["error"] or "")
    if not extra_columns:
        return ScoreResult(*base)
    return SourceResult(*base, extra={column: None if values.get(column) is None else restore(values[column])
                                      for column, restore in extra_columns.items()})
