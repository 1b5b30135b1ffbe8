"""Score files: reading a CSV that ``qualiclip-score`` wrote, and the evaluator's saved scores per model.

Saved scores are CSV files in ``qualiclip-score``'s format (``path,score,width,height,error``), one per model and
scoring settings, with absolute image paths; rows are appended and flushed as images are scored, so an interrupted
evaluation keeps what it scored.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple, Union

from ..cli import COLUMNS as SCORE_COLUMNS
from ..cli import RowWriter

if TYPE_CHECKING:
    from ..engine import ScoreResult


class ScoresFileError(ValueError):
    """A score file that cannot be used; the message names the file and the cause on one line."""


@dataclass(frozen=True)
class SavedScore:
    """One image's score from a file: ``score`` is ``None`` when it was not scored, with the reason in ``error``."""

    score: Optional[float]
    error: str = ""


def image_key(path: Union[str, os.PathLike]) -> str:
    """How images are matched between a MOS file and score files: the absolute, normalised path."""
    return os.path.abspath(os.fspath(path))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
            return file.read()
    except OSError as error:
        raise ScoresFileError(f"{path}: {error.strerror or error}") from None


def _parse(path: str, text: str, columns: Tuple[str, ...]) -> Tuple[Dict[str, SavedScore], int]:
    """Rows of a score CSV with at least the ``columns``; returns them by image key and the number of rows.

    Relative image paths are taken relative to the current folder, where ``qualiclip-score`` was run from.
    """
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [column for column in columns if column not in header]
    if missing:
        raise ScoresFileError(f"{path}: not a score file: no column {', '.join(map(repr, missing))} "
                              f"(header {','.join(header) or 'empty'!r}); expected {','.join(SCORE_COLUMNS)}")
    saved: Dict[str, SavedScore] = {}
    rows = 0
    try:
        for row in reader:
            if not row.get("path"):
                continue
            rows += 1
            saved[image_key(row["path"])] = _saved(row)
    except csv.Error as error:
        raise ScoresFileError(f"{path}, line {reader.line_num}: {error}") from None
    return saved, rows


def _saved(row: Dict[str, Optional[str]]) -> SavedScore:
    text = (row.get("score") or "").strip()
    error = (row.get("error") or "").strip()
    if not text:
        return SavedScore(None, error or "no score")
    try:
        value = float(text)
    except ValueError:
        return SavedScore(None, f"score {text!r} is not a number")
    return SavedScore(value, "") if math.isfinite(value) else SavedScore(None, error or f"score {text!r}")


def read_scores(path: Union[str, os.PathLike]) -> Dict[str, SavedScore]:
    """Reads a CSV of scores: any file ``qualiclip-score`` wrote, or any CSV with ``path`` and ``score`` columns.

    Args:
        path: The file. Relative image paths in it are relative to the current folder (as ``qualiclip-score`` wrote
            them); a later row for the same image replaces an earlier one.

    Returns:
        ``{image key: SavedScore}``, keyed by :func:`image_key`.

    Raises:
        ScoresFileError: The file cannot be read or lacks the columns.
    """
    path = os.fspath(path)
    return _parse(path, _read(path), ("path", "score"))[0]


class ScoreCache:
    """The saved scores of one model and its settings, in a ``qualiclip-score`` CSV.

    Args:
        path: The file; it need not exist.
        fresh: Ignore (and overwrite) what the file holds.

    Raises:
        ScoresFileError: The file exists but is not such a file.
    """

    def __init__(self, path: Union[str, os.PathLike], *, fresh: bool = False):
        self.path = os.fspath(path)
        self.saved: Dict[str, SavedScore] = {}
        # Bytes of complete rows: a run killed while writing leaves a last row without its newline, which is
        # ignored here and cut off before appending (that image is scored again).
        self._complete_bytes = 0
        self._fresh = fresh or not os.path.exists(self.path)
        if not self._fresh:
            self._load()

    def _load(self) -> None:
        text = _read(self.path)
        complete = text[:text.rfind("\n") + 1]
        if complete:
            header = next(csv.reader([complete.split("\n", 1)[0]]))
            if tuple(header) != SCORE_COLUMNS:
                raise ScoresFileError(f"{self.path}: not a saved-scores file (header {','.join(header)!r}); move it "
                                      f"away or pass --rescore to overwrite it")
            self.saved = _parse(self.path, complete, SCORE_COLUMNS)[0]
        self._complete_bytes = len(complete.encode("utf-8", "surrogateescape"))

    def lookup(self, images: Iterable[str]) -> Tuple[Dict[str, SavedScore], List[str]]:
        """Splits images into those with a saved result (by image key) and those still to score."""
        found, todo = {}, []
        for image in images:
            key = image_key(image)
            if key in self.saved:
                found[key] = self.saved[key]
            else:
                todo.append(image)
        return found, todo

    def append(self, results: Iterable[ScoreResult]) -> None:
        """Saves results (named by :func:`image_key`) as they come, each flushed, then reloads what was saved, so
        the scores used are exactly those a later evaluation will read back.

        Raises:
            ScoresFileError: The file cannot be written.
        """
        try:
            folder = os.path.dirname(self.path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            file = open(self.path, "w" if self._fresh else "r+", encoding="utf-8", errors="surrogateescape",
                        newline="")
        except OSError as error:
            raise ScoresFileError(f"{self.path}: {error.strerror or error}") from None
        with file:
            file.seek(self._complete_bytes)
            file.truncate()
            writer = RowWriter(file, "csv", header=self._complete_bytes == 0)
            for result in results:
                writer.write([result])
            writer.close()
        self._fresh = False
        self._load()
