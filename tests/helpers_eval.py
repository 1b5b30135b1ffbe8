"""Helpers of the evaluation tests: a scorer loader that counts what it scores, and hand-written score files."""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from qualiclip_infer.eval import ModelSpec
from qualiclip_infer.results import ScoreResult


class CountingLoader:
    """``load_scorer`` for :func:`~qualiclip_infer.eval.evaluate`: records every model it is asked to load and every
    image its scorers score. Scores are a fixed function of the image name, so saved and fresh scores agree."""

    def __init__(self) -> None:
        self.loaded: List[ModelSpec] = []
        self.scored: List[str] = []

    def __call__(self, spec: ModelSpec) -> "CountingLoader":
        self.loaded.append(spec)
        return self

    def iter_scores(self, images: Sequence[str], *, names: Sequence[str],
                    workers: Optional[int] = None) -> Iterator[ScoreResult]:
        for index, (image, name) in enumerate(zip(images, names)):
            self.scored.append(image)
            yield ScoreResult(index, name, zlib.crc32(name.encode()) / 2**32, 64, 64, "")


def write_scores(path: Path, rows: Sequence[Tuple[Path, Optional[float], str]]) -> Path:
    """A score CSV as ``qualiclip-score`` writes it: ``(image, score or None, error)`` per row."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "score", "width", "height", "error"])
        for image, score, error in rows:
            writer.writerow([str(image), "" if score is None else f"{score:.8f}", 64, 64, error])
    return path
