"""Evaluating scores against human opinion: score the images of a MOS file (or read saved scores), then compute
the agreement metrics with bootstrap confidence intervals, for one model or several on the same images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from .. import metrics
from .mos import Excluded, MosTable, read_mos
from .scores import SavedScore, ScoreCache, image_key, read_scores

if TYPE_CHECKING:
    from ..engine import ScoreResult
    from ..scorer import QualityScorer

# Scorer settings that change how fast images are scored, not their scores: left out of the saved scores' key.
_SPEED_ONLY = frozenset({"device", "batch_size", "max_batch_pixels", "local_files_only", "cache_dir", "workers",
                         "threads"})
_PROGRESS_SECONDS = 30.0  # how often a long scoring run says how far it got
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


class EvaluationError(ValueError):
    """An evaluation that cannot be run as asked (too few images, a model listed twice, an unknown fit)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate.

    Attributes:
        model: A preset name for ``QualityScorer(model=...)``; ``None`` for the scorer's default.
        weights: A checkpoint path or ``hf-hub:`` spec; ``None`` for the preset's published weights.
    """

    model: Optional[str] = None
    weights: Optional[str] = None

    @property
    def label(self) -> str:
        """The name in tables and plots: the preset, the weights file, or both."""
        if self.weights is None:
            return self.model or "qualiclip"
        return self.weights if self.model is None else f"{self.model} ({self.weights})"

    def scorer_arguments(self) -> Dict[str, str]:
        """``model`` and ``weights`` for :class:`QualityScorer`, only those that are set."""
        return {name: value for name, value in (("model", self.model), ("weights", self.weights))
                if value is not None}


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


@dataclass
class _Source:
    """Where one model's scores come from."""

    label: str
    spec: Optional[ModelSpec] = None
    scores_file: Optional[str] = None
    saved: Dict[str, SavedScore] = field(default_factory=dict)
    reused: int = 0
    scored: int = 0


def scores_file_name(spec: ModelSpec, settings: Mapping[str, Any]) -> str:
    """The file name of a model's saved scores: its label, and a digest of everything that changes its scores.

    Args:
        spec: The model.
        settings: The scorer's other arguments; those that only change speed (device, batch size, ...) are ignored.
    """
    weights = spec.weights
    if weights is not None and not weights.startswith("hf-hub:"):
        weights = os.path.abspath(weights)
    key = {"model": spec.model, "weights": weights,
           **{name: value for name, value in settings.items()
              if name not in _SPEED_ONLY and name not in ("model", "weights") and value is not None}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9+.-]+", "_", os.path.basename(spec.label)).strip("._") or "model"
    return f"{slug[:60]}.{digest}.scores.csv"


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
    if not specs and not scores:
        specs = [ModelSpec()]
    sources = [_Source(spec.label, spec=spec) for spec in specs]
    sources += [_Source(os.fspath(path), scores_file=os.fspath(path)) for path in scores]
    labels = [source.label for source in sources]
    if len(set(labels)) < len(labels):
        raise EvaluationError(f"the same model is listed twice: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))}")
    for line in table.problems():
        log(line)

    options = dict(scorer_options or {})
    for source in sources:
        if source.scores_file is not None:
            source.saved = read_scores(source.scores_file)
        else:
            _score_with_model(source, table.images, options, load_scorer, cache_dir, rescore, workers, log)

    # Only images every model scored, so all models are compared on the same images.
    keys = [image_key(image) for image in table.images]
    not_scored = Excluded()
    per_model: List[Excluded] = []
    for source in sources:
        excluded = Excluded()
        for image, key in zip(table.images, keys):
            saved = source.saved.get(key)
            if saved is None or saved.score is None:
                excluded.add(f"{image}: {saved.error if saved else 'not in ' + source.label}")
        per_model.append(excluded)
        if excluded.count:
            log(f"{source.label}: {excluded.count} images not scored, left out: {excluded.describe()}")
    used = []
    for index, key in enumerate(keys):
        if all(key in source.saved and source.saved[key].score is not None for source in sources):
            used.append(index)
        else:
            not_scored.add(table.images[index])
    if len(used) < 3:
        raise EvaluationError(f"{table.source}: {len(used)} images with a MOS and a score from every model; correlations "
                         f"need at least 3")
    images = [table.images[index] for index in used]
    y = np.array([table.mos[index] for index in used], dtype=np.float64)
    xs = [np.array([source.saved[keys[index]].score for index in used], dtype=np.float64) for source in sources]

    log(f"computing metrics on {len(images)} images" + (f", {resamples} bootstrap resamples" if resamples else ""))
    observed = [metrics.agreement(x, y, fits, lower_better=table.lower_better) for x in xs]
    samples = (metrics.bootstrap(xs, y, fits=fits, lower_better=table.lower_better, resamples=resamples, seed=seed)
               if resamples else None)

    model_reports = []
    for position, (source, excluded, (values, fitted)) in enumerate(zip(sources, per_model, observed)):
        entry: Dict[str, Any] = {
            "label": source.label,
            "model": source.spec.model if source.spec else None,
            "weights": source.spec.weights if source.spec else None,
            "scores_file": source.scores_file,
            "scores_reused": source.reused,
            "scores_computed": source.scored,
            "not_scored": excluded.as_dict(),
            "metrics": {name: {"value": value,
                               "ci": list(metrics.percentile_interval(samples[position][name], confidence))
                               if samples else None}
                        for name, value in values.items()},
            "fits": {form: {"formula": fit.formula, "params": list(fit.params), "converged": fit.converged}
                     for form, fit in fitted.items()},
        }
        if position and samples:
            entry["srcc_vs_first"] = metrics.paired_difference(
                samples[0]["srcc"], samples[position]["srcc"], values["srcc"] - observed[0][0]["srcc"], confidence)
        elif position:
            entry["srcc_vs_first"] = {"difference": values["srcc"] - observed[0][0]["srcc"], "ci": None,
                                      "p_value": None}
        model_reports.append(entry)

    report = {
        "mos_file": table.source,
        "dataset": table.dataset,
        "image_dir": table.image_dir,
        "mos_direction": "lower is better" if table.lower_better else "higher is better",
        "rows": table.rows,
        "n": len(images),
        "excluded": {"unreadable_rows": table.unreadable.as_dict(), "missing_images": table.missing.as_dict(),
                     "repeated_images": table.duplicates.as_dict(), "not_scored": not_scored.as_dict()},
        "settings": {"fits": list(fits), "bootstrap_resamples": resamples, "seed": seed, "confidence": confidence,
                     "scorer": {name: value for name, value in options.items()}},
        "conventions": CONVENTIONS,
        "models": model_reports,
    }
    return Evaluation(_json_safe(report), images, y, dict(zip(labels, xs)),
                      {source.label: fitted for source, (_, fitted) in zip(sources, observed)}, table.lower_better)


def _score_with_model(source: _Source, images: Sequence[str], options: Dict[str, Any],
                      load_scorer: Optional[Callable[[ModelSpec], QualityScorer]],
                      cache_dir: Union[str, os.PathLike, None], rescore: bool, workers: Optional[int],
                      log: Callable[[str], None]) -> None:
    """Fills ``source.saved`` for every image: from its saved scores where possible, else by scoring (and saving)."""
    spec = source.spec
    assert spec is not None
    cache = None
    if cache_dir is not None:
        source.scores_file = os.path.join(os.fspath(cache_dir), scores_file_name(spec, options))
        cache = ScoreCache(source.scores_file, fresh=rescore)
        found, todo = cache.lookup(images)
        source.saved.update(found)
        source.reused = len(found)
        if found:
            log(f"{source.label}: reusing {len(found)} saved scores from {source.scores_file}")
    else:
        todo = list(images)
    if not todo:
        return
    log(f"{source.label}: scoring {len(todo)} images")
    scorer = load_scorer(spec) if load_scorer is not None else _default_scorer(spec, options)
    # Results are named by image key, the form saved scores are matched by.
    results = _with_progress(scorer.iter_scores(todo, names=[image_key(image) for image in todo], workers=workers),
                             source.label, len(todo), log)
    if cache is None:
        for result in results:
            source.saved[result.name] = SavedScore(result.score, result.error)
            source.scored += 1
        return
    cache.append(results)
    found, _ = cache.lookup(todo)
    source.saved.update(found)
    source.scored = len(found)


def _with_progress(results: Iterable[ScoreResult], label: str, total: int,
                   log: Callable[[str], None]) -> Iterator[ScoreResult]:
    """Passes results on, saying every so often how far scoring got."""
    last = time.monotonic()
    for result in results:
        if time.monotonic() - last > _PROGRESS_SECONDS:
            last = time.monotonic()
            log(f"{label}: scored {result.index + 1} of {total} images")
        yield result


def _default_scorer(spec: ModelSpec, options: Mapping[str, Any]) -> QualityScorer:
    from ..scorer import QualityScorer

    return QualityScorer(**{**options, **spec.scorer_arguments()})


def _json_safe(value: Any) -> Any:
    """NaN and infinities become ``None`` (JSON has no NaN); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


def _cell(metric: Optional[dict]) -> str:
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
    for position, model in enumerate(report["models"]):
        cells = [model["label"].replace("|", "\\|"), str(report["n"]), *(_cell(model["metrics"][n]) for n in names)]
        if several:
            versus = model.get("srcc_vs_first")
            if versus is None:
                cells.append("")
            else:
                cell = _cell({"value": versus["difference"], "ci": versus["ci"]})
                cells.append(cell + ("" if versus["p_value"] is None else f" (p={versus['p_value']:.3f})"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
