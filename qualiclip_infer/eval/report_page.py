"""The evaluation flavour of a report (``qualiclip-eval --report``): per model, the scatter of score against MOS with
the fitted curves, the metrics table with its intervals, and the images where model and MOS disagree most, both
ways; the gallery then shows the first model's scores with each image's MOS."""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .. import metrics
from ..report.page import ReportResult, build_report, shown
from ..report.rows import ReportRow
from .report import metric_cell

if TYPE_CHECKING:
    from .evaluate import Evaluation

DISAGREEMENTS = 8  # images shown in each direction
MAX_POINTS = 20_000  # a scatter over more images shows an even sample of them
_POINT, _CURVES = "#0072B2", ("#D55E00", "#009E73")  # Okabe-Ito blue; vermillion and bluish green
_DASHES = ("", "6 4")  # the second curve is dashed too, so colour is never the only cue


def build_evaluation_report(evaluation: Evaluation, page: str, *, workers: Optional[int] = None) -> ReportResult:
    """Writes the report of an evaluation: the evaluation section, then the gallery of the first model's scores.

    Raises:
        OSError: The page or its pictures' folder cannot be written.
    """
    models = evaluation.report["models"]
    first = evaluation.scores[models[0]["label"]]
    rows = [ReportRow(image, float(score), human=float(mos))
            for image, score, mos in zip(evaluation.images, first, evaluation.mos)]
    index = {row.path: position for position, row in enumerate(sorted(rows, key=lambda row: row.path))}
    sections = [_model_section(evaluation, model, index) for model in models]
    report = evaluation.report
    note = (f"{report['n']} images of {report['mos_file']} ({report['dataset']}, MOS {report['mos_direction']}); "
            f"gallery: scores of {models[0]['label']}")
    body = (f'<section id="evaluation" aria-labelledby="evaluation-title"><h2 id="evaluation-title">Agreement with '
            f'the MOS</h2>{metrics_table(report)}{"".join(sections)}{_excluded(report)}</section>')
    dataset = report["dataset"] if report["dataset"] != "csv" else os.path.basename(report["mos_file"])
    return build_report(sorted(rows, key=lambda row: row.path), page, title=f"Evaluation: {dataset}",
                        workers=workers, note=note, evaluation_html=body)


def metrics_table(report: Mapping[str, Any]) -> str:
    """The metrics of every model as an HTML table, each value with its confidence interval."""
    names = metrics.metric_names(report["settings"]["fits"])
    header = "".join(f"<th>{html.escape(_title(name))}</th>" for name in names)
    lines = []
    for model in report["models"]:
        cells = "".join(f"<td>{metric_cell(model['metrics'].get(name))}</td>" for name in names)
        label = html.escape(shown(model["label"]))
        lines.append(f'<tr><td class="path">{label}</td><td>{report["n"]}</td>{cells}</tr>')
    confidence = report["settings"].get("confidence", 0.95)
    return (f'<div class="table-wrap"><table id="metrics-table"><thead><tr><th>model</th><th>n</th>{header}</tr>'
            f'</thead><tbody>{"".join(lines)}</tbody></table></div><p class="note">Values with their '
            f'{confidence:.0%} bootstrap intervals in brackets.</p>')


def scatter_svg(scores: np.ndarray, mos: np.ndarray, fits: Mapping[str, metrics.LogisticFit], *,
                lower_better: bool = False) -> str:
    """Score against MOS as an inline SVG, with the fitted curves."""
    width, height, left, right, top, bottom = 560, 360, 48, 12, 10, 36
    x_low, x_high = _span(scores)
    y_low, y_high = _span(mos)

    def at(x: np.ndarray, y: np.ndarray):
        return (left + (x - x_low) / (x_high - x_low) * (width - left - right),
                top + (y_high - y) / (y_high - y_low) * (height - top - bottom))

    step = max(1, -(-len(scores) // MAX_POINTS))
    px, py = at(scores[::step], mos[::step])
    parts = [f'<svg class="scatter" viewBox="0 0 {width} {height}" role="img" aria-label="scatter of '
             f'{len(scores)} scores against the MOS, with the fitted curves">',
             f'<g fill="{_POINT}" fill-opacity="0.55">',
             *(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.4"/>' for x, y in zip(px, py)), '</g>']
    grid = np.linspace(x_low, x_high, 128)
    for (form, fit), colour, dash in zip(fits.items(), _CURVES, _DASHES):
        if all(np.isfinite(fit.params)):
            cx, cy = at(grid, np.clip(fit.predict(grid), y_low, y_high))
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(cx, cy))
            parts.append(f'<polyline class="curve" data-form="{form}" points="{points}" fill="none" '
                         f'stroke="{colour}" stroke-width="2.5" stroke-dasharray="{dash}"><title>{form}</title>'
                         f'</polyline>')
    for value in np.linspace(x_low, x_high, 5):
        x, _ = at(np.array(value), np.array(y_low))
        parts.append(f'<text x="{x:.1f}" y="{height - 20}" text-anchor="middle">{value:.2f}</text>')
    for value in np.linspace(y_low, y_high, 5):
        _, y = at(np.array(x_low), np.array(value))
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    label = "DMOS (lower is better)" if lower_better else "MOS"
    parts.append(f'<text x="{(width + left) / 2}" y="{height - 4}" text-anchor="middle">score</text>'
                 f'<text x="12" y="{top + (height - top - bottom) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + (height - top - bottom) / 2})">{label}</text>'
                 f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
                 f'fill="none" class="axis" stroke="#666"/></svg>')
    return "".join(parts)


def disagreements(scores: np.ndarray, mos: np.ndarray, fit: metrics.LogisticFit, *, lower_better: bool = False,
                  count: int = DISAGREEMENTS) -> Dict[str, List[int]]:
    """The images the model rates most above and most below what people said, by the fitted curve.

    The gap is the predicted minus the actual MOS, turned so that positive means the model rates the image better
    than people (for DMOS, a lower prediction than the actual value).

    Returns:
        ``{"model_higher": [indices], "model_lower": [indices]}``, largest gap first.
    """
    gap = (fit.predict(scores) - mos) * (-1 if lower_better else 1)
    order = np.argsort(gap, kind="stable")
    count = min(count, len(gap) // 2)
    return {"model_higher": [int(i) for i in order[::-1][:count]], "model_lower": [int(i) for i in order[:count]]}


def _model_section(evaluation: Evaluation, model: Mapping[str, Any], index: Mapping[str, int]) -> str:
    label = model["label"]
    scores, mos = evaluation.scores[label], evaluation.mos
    fits = evaluation.fits[label]
    parts = [f'<h3>{html.escape(shown(label))}</h3><figure class="chart">'
             f'{scatter_svg(scores, mos, fits, lower_better=evaluation.lower_better)}<figcaption>Each point an image; '
             f'solid: the 4-parameter logistic fitted from score to MOS'
             f'{"; dashed: the 5-parameter VQEG logistic" if len(fits) > 1 else ""}.</figcaption></figure>']
    fit = fits.get("logistic4")
    if fit is not None and all(np.isfinite(fit.params)):
        found = disagreements(scores, mos, fit, lower_better=evaluation.lower_better)
        predicted = fit.predict(scores)
        for key, title in (("model_higher", "Model rates higher than people"),
                           ("model_lower", "Model rates lower than people")):
            tiles = "".join(_tile(evaluation.images[i], scores[i], mos[i], predicted[i], index) for i in found[key])
            parts.append(f'<h4>{title}</h4><div class="disagreements" data-kind="{key}">{tiles}</div>')
    return "".join(parts)


def _tile(image: str, score: float, mos: float, predicted: float, index: Mapping[str, int]) -> str:
    """A tile whose picture the page's script fills in from its gallery row (``data-index``)."""
    name = html.escape(shown(os.path.basename(image)))
    return (f'<figure class="tile" tabindex="0" data-index="{index[image]}" data-path="{html.escape(shown(image))}">'
            f'<div class="thumb"><span class="none">{name}</span></div><figcaption><span class="score">'
            f'{score:.4f}</span> MOS {mos:.3g}, fitted {predicted:.3g}<span class="name">{name}</span></figcaption>'
            f'</figure>')


def _excluded(report: Mapping[str, Any]) -> str:
    lines = []
    for name, value in report.get("excluded", {}).items():
        first = value.get("first") or []
        if not value.get("count"):
            continue
        examples = f" ({html.escape(shown(', '.join(first)))}{', ...' if value['count'] > len(first) else ''})"
        lines.append(f"<li>{html.escape(name.replace('_', ' '))}: {value['count']}{examples if first else ''}</li>")
    return f'<h3>Left out</h3><ul class="note">{"".join(lines)}</ul>' if lines else ""


def _span(values: np.ndarray) -> Sequence[float]:
    low, high = float(np.min(values)), float(np.max(values))
    pad = (high - low) * 0.04 or 0.5
    return low - pad, high + pad


def _title(name: str) -> str:
    kind, _, form = name.partition("_")
    return kind.upper() + (f" ({form})" if form else "")

