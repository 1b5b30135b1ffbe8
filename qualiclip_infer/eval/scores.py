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

from ..messages import first_line
from ..output import COLUMNS as SCORE_COLUMNS
from ..output import OutputFileError, RowWriter, open_output, prepare_resume

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

    The file is checked and readied like a ``qualiclip-score --resume`` output: a last row left incomplete by an
    interrupted evaluation is cut off (that image is scored again), and a file that is not such an output is refused
    and left untouched.

    Args:
        path: The file; it need not exist.
        fresh: Ignore (and overwrite) what the file holds.

    Raises:
        ScoresFileError: The file exists but is not such a file, or cannot be read.
    """

    def __init__(self, path: Union[str, os.PathLike], *, fresh: bool = False):
        self.path = os.fspath(path)
        self.saved: Dict[str, SavedScore] = {}
        self._fresh = fresh
        self._has_content = False
        if not fresh:
            self._load()

    def _load(self) -> None:
        try:
            self._has_content = prepare_resume(self.path, "csv").has_content
        except OutputFileError as error:
            raise ScoresFileError(f"saved scores: {first_line(error)}; move it away or pass --rescore to overwrite "
                                  f"it") from None
        if self._has_content:
            self.saved = _parse(self.path, _read(self.path), SCORE_COLUMNS)[0]

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
            stream = open_output(self.path, append=not self._fresh)
        except (OSError, OutputFileError) as error:
            raise ScoresFileError(f"{self.path}: {getattr(error, 'strerror', None) or first_line(error)}") from None
        with stream:
            writer = RowWriter(stream, "csv", header=self._fresh or not self._has_content)
            for result in results:
                writer.write([result])
            writer.close()
        self._fresh = False
        self._load()
