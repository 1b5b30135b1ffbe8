"""Score files: reading a file that ``qualiclip-score`` wrote (through :mod:`qualiclip_infer.score_files`), and the
evaluator's saved scores per model.

Saved scores are CSV files in ``qualiclip-score``'s format (``path,score,width,height,error``), one per model and
scoring settings, with absolute image paths; rows are appended and flushed as images are scored, so an interrupted
evaluation keeps what it scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple, Union

from ..messages import first_line
from ..output import COLUMNS as SCORE_COLUMNS
from ..output import OutputFileError, RowWriter, open_output, prepare_resume
from ..score_files import ScoresFileError, read_score_rows

if TYPE_CHECKING:
    from ..results import ScoreResult

__all__ = ["SCORE_COLUMNS", "SavedScore", "ScoreCache", "ScoresFileError", "image_key", "read_scores"]


@dataclass(frozen=True)
class SavedScore:
    """One image's score from a file: ``score`` is ``None`` when it was not scored, with the reason in ``error``."""

    score: Optional[float]
    error: str = ""


def image_key(path: Union[str, os.PathLike]) -> str:
    """How images are matched between a MOS file and score files: the absolute, normalised path."""
    return os.path.abspath(os.fspath(path))


def _saved(rows: Iterable[ScoreResult]) -> Dict[str, SavedScore]:
    """Rows by image key; relative image paths are taken relative to the current folder, where ``qualiclip-score``
    was run from."""
    return {image_key(row.name): SavedScore(row.score, "" if row.ok else row.error) for row in rows}


def read_scores(path: Union[str, os.PathLike]) -> Dict[str, SavedScore]:
    """Reads a file of scores: any file ``qualiclip-score`` wrote (csv, jsonl, json, Parquet), or any CSV with
    ``path`` and ``score`` columns.

    A row whose score is not a number is kept as unscored (its error names the value); a row without a path is
    skipped.

    Args:
        path: The file. Relative image paths in it are relative to the current folder (as ``qualiclip-score`` wrote
            them); a later row for the same image replaces an earlier one.

    Returns:
        ``{image key: SavedScore}``, keyed by :func:`image_key`.

    Raises:
        ScoresFileError: The file cannot be read or lacks the columns.
    """
    return _saved(read_score_rows(os.fspath(path), strict=False))


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
            self.saved = _saved(read_score_rows(self.path))

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
