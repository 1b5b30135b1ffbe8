"""``qualiclip-score``'s rows on their way out: progress and per-file messages, ``--min/--max-score``, ``--sort``,
``--maps`` drawn beside each scored image, and the ``--summary``.

Command code (it prints to standard error); torch is imported only by the maps, when one is drawn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ._cli import say
from .output import RowWriter

if TYPE_CHECKING:
    from .parquet_rows import ParquetRowWriter
    from .results import ScoreResult
    from .scorer import QualityScorer

PROG = "qualiclip-score"


class _Progress:
    """A tqdm bar on standard error when it is a terminal, and the per-file error messages."""

    def __init__(self, total: Optional[int], quiet: bool, bar: bool = True):
        self._quiet = quiet
        self._bar = None
        if bar and not quiet and sys.stderr is not None and sys.stderr.isatty():
            try:
                from tqdm import tqdm  # installed with huggingface_hub, but not a promise of ours
            except ImportError:
                say(PROG, "no progress bar: the 'tqdm' package is not installed")
                return
            self._bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)

    def advance(self, row: ScoreResult) -> None:
        if row.error and not self._quiet:
            self._message(f"{row.name}: {row.error}")
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(f"{PROG}: {text}", file=sys.stderr)
        else:
            say(PROG, text)


def summary(scores: Sequence[float], failures: int) -> str:
    """The ``--summary`` text: image count, failures and score statistics of one run."""
    lines = [f"images   {len(scores) + failures}", f"scored   {len(scores)}", f"failed   {failures}"]
    if scores:
        lines += [f"{name:<8} {value:.4f}" for name, value in (
            ("mean", statistics.fmean(scores)), ("median", statistics.median(scores)),
            ("min", min(scores)), ("max", max(scores)))]
    return "\n".join(lines)


def _sorted_rows(rows: List[ScoreResult], key: str, reverse: bool) -> List[ScoreResult]:
    """Rows sorted by path, or by score with unscored rows last."""
    if key == "path":
        return sorted(rows, key=lambda row: row.name, reverse=reverse)
    scored = sorted((row for row in rows if row.score is not None), key=lambda row: (row.score, row.name),
                    reverse=reverse)
    return scored + [row for row in rows if row.score is None]


def score_and_write(rows: Iterable[ScoreResult], total: Optional[int], args: argparse.Namespace,
                    writer: Union[RowWriter, ParquetRowWriter], maps: Optional[MapWriter] = None
                    ) -> Tuple[List[float], int]:
    """Reports and writes the rows as they are scored, drawing their maps; closes the writer.

    Args:
        rows: The scored rows, as they come.
        total: How many rows will come, for the progress bar (``None``: not known).
        args: The parsed options (``quiet``, ``ray``, ``min_score``, ``max_score``, ``sort``, ``reverse``).
        writer: Where the rows go.
        maps: Draws each scored image's ``--maps`` file.

    Returns:
        The scores, and the number of rows that failed.
    """
    scores: List[float] = []
    failures = 0
    held: List[ScoreResult] = []
    progress = _Progress(total, args.quiet, bar=args.ray is None)  # with --ray, Ray Data draws its own
    try:
        for row in rows:
            if maps is not None:
                maps.write(row)
            progress.advance(row)
            if row.ok:
                scores.append(row.score)
            else:
                failures += 1
            if not _in_range(row, args.min_score, args.max_score):
                continue
            if args.sort:
                held.append(row)
            else:
                writer.write([row])
        if args.sort:
            writer.write(_sorted_rows(held, args.sort, args.reverse))
    finally:
        progress.close()
        writer.close()
    return scores, failures


class MapWriter:
    """Draws the quality map of each scored image into its ``--maps`` file; a failure is reported and counted.

    Args:
        scorer: The scorer that drew the scores.
        files: The ``--maps`` file of each path.
        method: The ``--map-method``.
    """

    def __init__(self, scorer: QualityScorer, files: Dict[str, str], method: str):
        self._scorer = scorer
        self._files = files
        self._method = method
        self.failures = 0

    def write(self, row: ScoreResult) -> None:
        """Draws the map of ``row`` when it was scored."""
        from .images import failure_cause, to_tensor
        from .render import save_map

        if not row.ok:
            return
        target = self._files[row.name]
        try:
            image = to_tensor(row.name, row.name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            save_map(image, self._scorer.quality_map(image, method=self._method), target)
        except Exception as error:  # a map is extra: the row is scored and written all the same
            self.failures += 1
            say(PROG, f"{row.name}: quality map not written to {target}: {failure_cause(error, row.name)}")


def _in_range(row: ScoreResult, low: Optional[float], high: Optional[float]) -> bool:
    """Failed rows are always listed; scored rows when within ``[low, high]``."""
    if row.score is None:
        return True
    return (low is None or row.score >= low) and (high is None or row.score <= high)
