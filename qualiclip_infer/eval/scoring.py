"""Each model's scores for the images of an evaluation: read from a score file, reused from the scores an earlier
evaluation saved, or computed by running the model (and saved for the next evaluation).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from .scores import SavedScore, ScoreCache, image_key, read_scores

if TYPE_CHECKING:
    from ..results import ScoreResult
    from ..scorer import QualityScorer

# Scorer settings that change how fast images are scored, not their scores: left out of the saved scores' key.
_SPEED_ONLY = frozenset({"device", "batch_size", "max_batch_pixels", "local_files_only", "cache_dir", "workers",
                         "threads"})
_PROGRESS_SECONDS = 30.0  # how often a long scoring run says how far it got

Log = Callable[[str], None]


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
class ModelScores:
    """Where one model's scores come from, and the scores.

    Attributes:
        label: The model's name in the report.
        spec: The model to run; ``None`` for a score file.
        scores_file: The score file read, or the file the model's scores are saved in (``None``: not saved).
        saved: The scores by :func:`~qualiclip_infer.eval.scores.image_key`.
        reused: How many scores came from an earlier evaluation's saved scores.
        scored: How many images the model scored in this evaluation.
    """

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


def model_sources(specs: Sequence[ModelSpec], score_files: Sequence[Union[str, os.PathLike]]) -> List[ModelScores]:
    """One entry per model to run, then one per score file, in that order; no scores yet."""
    sources = [ModelScores(spec.label, spec=spec) for spec in specs]
    return sources + [ModelScores(os.fspath(path), scores_file=os.fspath(path)) for path in score_files]


def collect_scores(sources: Sequence[ModelScores], images: Sequence[str], *, options: Mapping[str, Any],
                   load_scorer: Optional[Callable[[ModelSpec], QualityScorer]],
                   cache_dir: Union[str, os.PathLike, None], rescore: bool, workers: Optional[int], log: Log) -> None:
    """Fills each source's scores: a score file is read; a model reuses its saved scores and scores the rest.

    Args:
        sources: From :func:`model_sources`.
        images: The images of the MOS file.
        options: The other :class:`QualityScorer` arguments, for every model (and its saved scores' name).
        load_scorer: Builds a model's scorer (default: ``QualityScorer(**options, model=..., weights=...)``).
        cache_dir: Folder of the saved scores; ``None``: nothing is saved.
        rescore: Ignore (and replace) saved scores.
        workers: Image decoding threads.
        log: Receives progress messages.

    Raises:
        ScoresFileError: A score file (read or saved) cannot be used.
    """
    for source in sources:
        if source.spec is None:
            assert source.scores_file is not None
            source.saved = read_scores(source.scores_file)
        else:
            _score_with_model(source, images, options, load_scorer, cache_dir, rescore, workers, log)


def _score_with_model(source: ModelScores, images: Sequence[str], options: Mapping[str, Any],
                      load_scorer: Optional[Callable[[ModelSpec], QualityScorer]],
                      cache_dir: Union[str, os.PathLike, None], rescore: bool, workers: Optional[int],
                      log: Log) -> None:
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


def _with_progress(results: Iterable[ScoreResult], label: str, total: int, log: Log) -> Iterator[ScoreResult]:
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
