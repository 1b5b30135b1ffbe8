"""The rows a report shows, read from any output file of ``qualiclip-score`` (csv, jsonl, json, Parquet) or taken
from results as they are scored. No torch: ``qualiclip-report`` builds a page without the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, Optional

from ..score_files import read_score_rows


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


def read_rows(path: str) -> List[ReportRow]:
    """The rows of a ``qualiclip-score`` output (see :func:`~qualiclip_infer.score_files.read_score_rows`).

    Raises:
        ScoresFileError: The file cannot be read or lacks the columns.
    """
    return rows_from_results(read_score_rows(path))
