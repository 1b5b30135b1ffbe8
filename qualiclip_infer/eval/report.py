"""The report of an evaluation: the JSON-ready record of what was measured on which images, and its markdown table.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from .. import metrics
from .agreement import ModelAgreement
from .common import CommonImages
from .mos import Excluded, MosTable
from .scoring import ModelScores

_METRIC_TITLES = {"srcc": "SRCC", "krcc": "KRCC", "plcc": "PLCC", "rmse": "RMSE"}
CONVENTIONS = {
    "srcc": "Spearman's rank correlation; tied values get their average rank",
    "krcc": "Kendall's tau-b",
    "plcc": "Pearson's correlation of the raw scores with the MOS, no fitted mapping (as pyiqa reports it)",
    "rmse": "raw score against the MOS, no mapping: meaningful only for a MOS on the 0-1 scale, higher better",
    "fitted": "plcc_<form> and rmse_<form>: after least-squares fitting <form> from score to MOS (as given); "
              "RMSE in the MOS file's units",
    "sign": "SRCC, KRCC and PLCC are positive when the model agrees with people: with a lower-is-better (DMOS) "
            "file they are computed against the negated values",
    "ci": "percentile bootstrap over images (resampled with replacement), the fits refitted on every resample; "
          "every model on the same resamples, so differences are paired",
}


def build_report(table: MosTable, sources: Sequence[ModelScores], common: CommonImages,
                 measured: Sequence[ModelAgreement], settings: Mapping[str, Any]) -> Dict[str, Any]:
    """Everything measured, JSON-serialisable (NaN and infinities as ``None``).

    Args:
        table: The MOS file's usable rows and what was left out of it.
        sources: Every model and where its scores came from.
        common: The images used, and those the models left out.
        measured: Per model, its metrics.
        settings: The ``settings`` entry: fits, bootstrap, scorer options.
    """
    report = {
        "mos_file": table.source,
        "dataset": table.dataset,
        "image_dir": table.image_dir,
        "mos_direction": "lower is better" if table.lower_better else "higher is better",
        "rows": table.rows,
        "n": len(common.images),
        "excluded": {"unreadable_rows": table.unreadable.as_dict(), "missing_images": table.missing.as_dict(),
                     "repeated_images": table.duplicates.as_dict(), "not_scored": common.not_scored.as_dict()},
        "settings": dict(settings),
        "conventions": CONVENTIONS,
        "models": [_model_entry(source, excluded, agreement)
                   for source, excluded, agreement in zip(sources, common.per_model, measured)],
    }
    return json_safe(report)


def _model_entry(source: ModelScores, excluded: Excluded, agreement: ModelAgreement) -> Dict[str, Any]:
    entry: Dict[str, Any] = {
        "label": source.label,
        "model": source.spec.model if source.spec else None,
        "weights": source.spec.weights if source.spec else None,
        "scores_file": source.scores_file,
        "scores_reused": source.reused,
        "scores_computed": source.scored,
        "not_scored": excluded.as_dict(),
        "metrics": {name: {"value": value,
                           "ci": list(agreement.intervals[name]) if agreement.intervals is not None else None}
                    for name, value in agreement.values.items()},
        "fits": {form: {"formula": fit.formula, "params": list(fit.params), "converged": fit.converged}
                 for form, fit in agreement.fits.items()},
    }
    if agreement.srcc_vs_first is not None:
        entry["srcc_vs_first"] = agreement.srcc_vs_first
    return entry


def json_safe(value: Any) -> Any:
    """NaN and infinities become ``None`` (JSON has no NaN); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value


def metric_cell(metric: Optional[dict]) -> str:
    """A metric as the table shows it: ``value [low, high]`` to 4 decimals, ``n/a`` where undefined."""
    if not metric or metric.get("value") is None:
        return "n/a"
    text = f"{metric['value']:.4f}"
    ci = metric.get("ci")
    if ci and ci[0] is not None:
        text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    return text


def markdown_table(report: Mapping[str, Any]) -> str:
    """The report's metrics as a markdown table: one row per model, values with their intervals in brackets."""
    fits = report["settings"]["fits"]
    names = metrics.metric_names(fits)
    titles = [_METRIC_TITLES.get(name) or f"{_METRIC_TITLES[name.split('_')[0]]} ({name.split('_', 1)[1]})"
              for name in names]
    several = len(report["models"]) > 1
    header = ["model", "n", *titles] + (["ΔSRCC vs first (p)"] if several else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for model in report["models"]:
        cells = [model["label"].replace("|", "\\|"), str(report["n"]),
                 *(metric_cell(model["metrics"][name]) for name in names)]
        if several:
            versus = model.get("srcc_vs_first")
            if versus is None:
                cells.append("")
            else:
                cell = metric_cell({"value": versus["difference"], "ci": versus["ci"]})
                cells.append(cell + ("" if versus["p_value"] is None else f" (p={versus['p_value']:.3f})"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
