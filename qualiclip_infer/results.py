"""The result of scoring one input: what the engine yields and every front end writes.

Kept free of torch, so that a front end that only passes results along (the Ray driver, which receives rows from its
actors) need not import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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
