"""The summary of a report: counts, score statistics and the histogram of the scores, as HTML."""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..colors import colorize
from .rows import ReportRow

BINS = 20
PERCENTILES = (5, 25, 75, 95)


@dataclass(frozen=True)
class Summary:
    """Counts and score statistics of a report's rows (the statistics are ``None`` when nothing was scored)."""

    images: int
    scored: int
    failed: int
    mean: Optional[float]
    median: Optional[float]
    minimum: Optional[float]
    maximum: Optional[float]
    percentiles: Tuple[Tuple[int, float], ...]
    mean_mos: Optional[float]


def summarise(rows: Sequence[ReportRow]) -> Summary:
    """The :class:`Summary` of rows; percentiles interpolate linearly between order statistics (numpy's default)."""
    scores = [row.score for row in rows if row.score is not None]
    mos = [row.mos for row in rows if row.mos is not None]
    if not scores:
        return Summary(len(rows), 0, len(rows), None, None, None, None, (), None)
    values = np.quantile(np.array(scores), [p / 100 for p in PERCENTILES])
    return Summary(len(rows), len(scores), len(rows) - len(scores), statistics.fmean(scores),
                   statistics.median(scores), min(scores), max(scores),
                   tuple((p, float(v)) for p, v in zip(PERCENTILES, values)), statistics.fmean(mos) if mos else None)


def histogram(scores: Sequence[float], bins: int = BINS) -> List[int]:
    """Counts of scores in ``bins`` equal bins over [0, 1], each ``[k / bins, (k + 1) / bins)``, the last closed."""
    counts = [0] * bins
    for score in scores:
        counts[min(max(int(score * bins), 0), bins - 1)] += 1
    return counts


def summary_html(summary: Summary) -> str:
    """The summary as a definition list."""
    items = [("images", str(summary.images)), ("scored", str(summary.scored)), ("failed", str(summary.failed))]
    if summary.mean is not None:
        items += [("mean", _f(summary.mean)), ("median", _f(summary.median)), ("min", _f(summary.minimum)),
                  ("max", _f(summary.maximum))]
        items += [(f"p{p}", _f(value)) for p, value in summary.percentiles]
    if summary.mean_mos is not None:
        items.append(("mean MOS", f"{summary.mean_mos:.3f}"))
    return "".join(f'<div class="stat" data-stat="{html.escape(name)}"><dt>{html.escape(name)}</dt>'
                   f'<dd>{value}</dd></div>' for name, value in items)


def histogram_svg(scores: Sequence[float], bins: int = BINS) -> str:
    """The histogram as an inline SVG: one ``rect.bar`` per bin with its ``data-count`` and range, coloured by the
    bin's centre as the quality maps colour scores; clicking a bar filters the gallery to it."""
    counts = histogram(scores, bins)
    width, height, left, bottom, top = 600, 200, 36, 24, 8
    tallest = max(counts) or 1
    step = (width - left - 8) / bins
    colours = colorize(np.array([(k + 0.5) / bins for k in range(bins)]))
    parts = [f'<svg id="histogram" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="histogram of {len(scores)} scores in {bins} bins from 0 to 1">']
    plot = height - bottom - top
    for k, count in enumerate(counts):
        bar = plot * count / tallest
        low, high = k / bins, (k + 1) / bins
        colour = "#%02x%02x%02x" % tuple(colours[k])
        parts.append(f'<rect class="bar" data-count="{count}" data-low="{low:g}" data-high="{high:g}" '
                     f'x="{left + k * step + 1:.1f}" y="{top + plot - bar:.1f}" width="{step - 2:.1f}" '
                     f'height="{bar:.1f}" fill="{colour}"><title>{low:.2f}-{high:.2f}: {count}</title></rect>')
    for tick in range(0, 11, 2):
        x = left + tick / 10 * (width - left - 8)
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">{tick / 10:.1f}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{tallest}</text>'
                 f'<text x="{left - 4}" y="{top + plot}" text-anchor="end">0</text>'
                 f'<line x1="{left}" y1="{top + plot}" x2="{width - 8}" y2="{top + plot}" class="axis"/></svg>')
    return "".join(parts)


def _f(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"
