"""Evaluating scores against human opinion: score the images of a MOS file (or read saved scores), then compute
the agreement metrics with bootstrap confidence intervals, for one model or several on the same images.

The steps live in their own modules: :mod:`.scoring` (each model's scores), :mod:`.common` (the images every model
scored), :mod:`.agreement` (metrics and intervals) and :mod:`.report` (the JSON report and its table).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .. import metrics
from .agreement import measure_agreement
from .common import common_images
from .mos import MosTable, read_mos
from .report import CONVENTIONS, build_report, markdown_table
from .scoring import ModelSpec, collect_scores, model_sources, scores_file_name

if TYPE_CHECKING:
    from ..scorer import QualityScorer

__all__ = ["CONVENTIONS", "Evaluation", "EvaluationError", "ModelSpec", "evaluate", "markdown_table",
           "scores_file_name"]


class EvaluationError(ValueError):
    """An evaluation that cannot be run as asked (too few images, a model listed twice, an unknown fit)."""


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate`.

    Attributes:
        report: Everything measured, JSON-serialisable (NaN written as ``None``); its fields: docs/evaluation.md,
            "Report".
        images: The images used, in MOS-file order.
        mos: Their opinion scores, as in the file.
        scores: Per model label, the scores of those images.
        fits: Per model label, the fitted mappings.
        lower_better: Whether the MOS is DMOS-style.
    """

    report: Dict[str, Any]
    images: List[str]
    mos: np.ndarray
    scores: Dict[str, np.ndarray]
    fits: Dict[str, Dict[str, metrics.LogisticFit]]
    lower_better: bool = False

    def table(self) -> str:
        """The metrics as a markdown table, one row per model, with 95% intervals in brackets."""
        return markdown_table(self.report)

    def plot(self, path: Union[str, os.PathLike]) -> None:
        """Writes a scatter plot (score against MOS, fitted curves, metrics in the legend) as PNG; needs matplotlib."""
        from .plot import ScatterPanel, scatter_plot

        panels = [ScatterPanel(model["label"], self.scores[model["label"]],
                               {name: metric["value"] for name, metric in model["metrics"].items()},
                               self.fits[model["label"]]) for model in self.report["models"]]
        scatter_plot(path, self.mos, panels, lower_better=self.lower_better)

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        """Writes :attr:`report` as JSON."""
        with open(path, "w", encoding="utf-8") as file:
            json.dump(self.report, file, indent=2, ensure_ascii=False, allow_nan=False)
            file.write("\n")


def evaluate(
    mos: Union[MosTable, str, os.PathLike],
    *,
    models: Sequence[Union[ModelSpec, str]] = (),
    scores: Sequence[Union[str, os.PathLike]] = (),
    scorer_options: Optional[Mapping[str, Any]] = None,
    load_scorer: Optional[Callable[[ModelSpec], QualityScorer]] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    rescore: bool = False,
    fits: Sequence[str] = ("logistic4",),
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    workers: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Evaluation:
    """Scores the images of a MOS file with one or more models and measures agreement with the MOS.

    Example::

        result = evaluate("koniq10k_scores_and_distributions.csv", cache_dir="eval/")
        result.report["models"][0]["metrics"]["srcc"]   # {"value": ..., "ci": [low, high]}

    Args:
        mos: A table from :func:`~qualiclip_infer.eval.read_mos`, or a MOS file read with its defaults.
        models: Models to score the images with (a preset name stands for ``ModelSpec(model=name)``). Default: the
            official QualiCLIP, unless ``scores`` are given.
        scores: Score CSVs (e.g. from ``qualiclip-score``), each evaluated as one more model, after ``models``.
        scorer_options: Other :class:`QualityScorer` arguments (device, precision, prompts, ...), for every model.
        load_scorer: Builds the scorer of a model (default: ``QualityScorer(**scorer_options, model=..., weights=...)``).
        cache_dir: Folder where each model's scores are saved, and reused by later evaluations of the same images
            with the same model and settings (without loading the model); ``None``: nothing is saved.
        rescore: Score again even where saved scores exist (they are replaced).
        fits: Logistic mappings fitted before PLCC/RMSE: ``logistic4`` and/or ``vqeg5``.
        resamples: Bootstrap resamples for the confidence intervals (0: no intervals).
        seed: Seed of the bootstrap.
        confidence: Coverage of the intervals.
        workers: Image decoding threads (default: the engine's).
        log: Receives one-line progress and exclusion messages.

    Returns:
        The :class:`Evaluation`.

    Raises:
        EvaluationError: Fewer than 3 images remain, an unknown fit, or a model listed twice.
        MosFileError, ScoresFileError: A file cannot be used.
    """
    log = log or (lambda message: None)
    table = mos if isinstance(mos, MosTable) else read_mos(mos)
    for form in fits:
        if form not in metrics.FORMS:
            raise EvaluationError(f"unknown fit {form!r}; expected one of {', '.join(metrics.FORMS)}")
    specs = [ModelSpec(model=item) if isinstance(item, str) else item for item in models]
    sources = model_sources(specs or ([] if scores else [ModelSpec()]), scores)
    labels = [source.label for source in sources]
    if len(set(labels)) < len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise EvaluationError(f"the same model is listed twice: {', '.join(twice)}")
    for line in table.problems():
        log(line)

    options = dict(scorer_options or {})
    collect_scores(sources, table.images, options=options, load_scorer=load_scorer, cache_dir=cache_dir,
                   rescore=rescore, workers=workers, log=log)
    common = common_images(table, sources, log)
    if len(common.images) < 3:
        raise EvaluationError(f"{table.source}: {len(common.images)} images with a MOS and a score from every "
                              f"model; correlations need at least 3")

    log(f"computing metrics on {len(common.images)} images"
        + (f", {resamples} bootstrap resamples" if resamples else ""))
    measured = measure_agreement(common.scores, common.mos, fits=fits, lower_better=table.lower_better,
                                 resamples=resamples, seed=seed, confidence=confidence)
    settings = {"fits": list(fits), "bootstrap_resamples": resamples, "seed": seed, "confidence": confidence,
                "scorer": options}
    return Evaluation(build_report(table, sources, common, measured, settings), common.images, common.mos,
                      dict(zip(labels, common.scores)),
                      {label: agreement.fits for label, agreement in zip(labels, measured)}, table.lower_better)
