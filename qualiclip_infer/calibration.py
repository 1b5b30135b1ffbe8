"""Calibration files: scores on a scale people know, a dataset's MOS and a percentile among its images.

A calibration is fitted once on a dataset with human opinion scores (``qualiclip-eval --save-calibration``) and is
valid only for the model and settings that produced those scores: the same preset, weights file, prompt features,
logit scale and precision. It holds

- the 4-parameter logistic fitted from score to MOS (:func:`qualiclip_infer.metrics.fit_logistic`): its formula, its
  parameters, the dataset's MOS range and direction, so ``mos`` is the predicted opinion on that dataset's scale;
- 101 quantiles of the dataset's scores (0th, 1st, ..., 100th percentile), so ``percentile`` tells where a score
  falls among that dataset's images, linear between quantiles and clipped to [0, 100].

numpy and json only: no torch, so any front end can read and apply one. The identity of a scorer
(:func:`scorer_identity`) is read from its attributes, without importing it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, Mapping, Sequence, Tuple, Union

import numpy as np

from . import metrics
from .hub import file_sha256

if TYPE_CHECKING:
    from .results import ScoreResult

FORMAT = "qualiclip-calibration"
VERSION = 1
QUANTILES = 101
FORM = "logistic4"
# What must match between the scorer a calibration was fitted for and the one applying it, in the order a mismatch
# is reported.
IDENTITY_FIELDS = ("model", "weights_sha256", "prompt_features_sha256", "logit_scale", "precision")


class CalibrationError(ValueError):
    """A calibration file that cannot be read or used; the message is one line naming the file and the cause."""


@dataclass(frozen=True)
class Calibration:
    """A fitted mapping from scores to a dataset's MOS and percentiles.

    Attributes:
        dataset: The dataset it was fitted on (a name or the MOS file's name).
        images: How many images it was fitted on.
        mos_range: The lowest and highest MOS in that dataset.
        lower_better: Whether that dataset's MOS is DMOS-style (lower = better).
        params: ``b1 ... b4`` of the logistic ``(b1 - b2) / (1 + exp(-(x - b3) / b4)) + b2``, with ``x`` the score.
        quantiles: The 0th, 1st, ..., 100th percentiles of that dataset's scores.
        identity: The model and settings it was fitted for (see :func:`scorer_identity`).
        source: The file it was read from, for messages (empty for one made in memory).
    """

    dataset: str
    images: int
    mos_range: Tuple[float, float]
    lower_better: bool
    params: Tuple[float, ...]
    quantiles: Tuple[float, ...]
    identity: Mapping[str, Any]
    source: str = ""

    @property
    def formula(self) -> str:
        """The fitted logistic, with ``x`` the score."""
        return metrics.FORMS[FORM].formula

    def mos(self, scores: Union[float, Sequence[float], np.ndarray]) -> np.ndarray:
        """Predicted MOS on the dataset's scale, for scores in [0, 1]."""
        return metrics.logistic4(np.asarray(scores, dtype=np.float64), *self.params)

    def percentile(self, scores: Union[float, Sequence[float], np.ndarray]) -> np.ndarray:
        """Where scores fall among the dataset's images, 0 to 100: interpolated between the stored quantiles."""
        return _percentile(np.asarray(scores, dtype=np.float64), np.asarray(self.quantiles))

    def check(self, identity: Mapping[str, Any]) -> None:
        """Refuses a scorer other than the one this calibration was fitted for.

        Raises:
            CalibrationError: One line naming the first setting that differs, with both values.
        """
        for name in IDENTITY_FIELDS:
            mine, theirs = self.identity.get(name), identity.get(name)
            if mine != theirs:
                raise CalibrationError(
                    f"calibration {self.source or self.dataset}: fitted for {name} {_show(name, mine, self.identity)}"
                    f", but the scorer has {name} {_show(name, theirs, identity)}; fit one for this model with "
                    f"qualiclip-eval --save-calibration")

    def to_dict(self) -> Dict[str, Any]:
        """The file's content (see :func:`save_calibration`)."""
        return {"format": FORMAT, "version": VERSION, "dataset": self.dataset, "images": self.images,
                "mos_range": list(self.mos_range),
                "mos_direction": "lower is better" if self.lower_better else "higher is better",
                "fit": {"form": FORM, "formula": self.formula, "params": list(self.params)},
                "quantiles": list(self.quantiles), "fitted_for": dict(self.identity)}


def _show(name: str, value: Any, identity: Mapping[str, Any]) -> str:
    if name == "weights_sha256" and value:
        return f"{str(value)[:12]}... ({identity.get('weights_file', '?')})"
    if name == "prompt_features_sha256" and value:
        return f"{str(value)[:12]}..."
    return repr(value)


def _percentile(x: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    levels = np.linspace(0.0, 100.0, len(quantiles))
    # Equal quantiles (tied scores) become one point at the middle of their levels: np.interp needs rising values.
    values, group = np.unique(quantiles, return_inverse=True)
    middle = np.bincount(group, levels) / np.bincount(group)
    return np.interp(x, values, middle, left=0.0, right=100.0)


def fit_calibration(scores: Sequence[float], mos: Sequence[float], *, dataset: str, identity: Mapping[str, Any],
                    lower_better: bool = False) -> Calibration:
    """Fits a calibration on one dataset's scores and opinion scores.

    Args:
        scores: The model's scores of the dataset's images.
        mos: Their opinion scores, as in the dataset (higher or lower better).
        dataset: Its name, stored in the file and shown in messages.
        identity: The scorer's :func:`scorer_identity`.
        lower_better: The opinion scores are DMOS-style.

    Raises:
        CalibrationError: Fewer than 5 images, or the logistic cannot be fitted (a constant series).
    """
    x, y = np.asarray(scores, dtype=np.float64), np.asarray(mos, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"scores and mos must be 1-D of one length, got {x.shape} and {y.shape}")
    if len(x) < 5 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise CalibrationError(f"calibration on {dataset}: needs at least 5 images with finite scores and MOS, "
                               f"got {len(x)}")
    fit = metrics.fit_logistic(x, y, FORM)
    if not all(math.isfinite(value) for value in fit.params):
        raise CalibrationError(f"calibration on {dataset}: the logistic cannot be fitted (constant scores or MOS)")
    quantiles = np.quantile(x, np.linspace(0, 1, QUANTILES))
    return Calibration(dataset, len(x), (float(y.min()), float(y.max())), lower_better,
                       tuple(float(v) for v in fit.params), tuple(float(v) for v in quantiles), dict(identity))


def evaluation_calibration(evaluation: Any, label: str, identity: Mapping[str, Any]) -> Calibration:
    """The calibration of one model of an evaluation (:class:`~qualiclip_infer.eval.Evaluation`), named after its
    dataset layout (or its MOS file, for a generic csv).

    Raises:
        CalibrationError: As :func:`fit_calibration`.
    """
    report = evaluation.report
    dataset = report.get("dataset")
    if dataset in (None, "csv"):
        dataset = os.path.basename(report["mos_file"])
    return fit_calibration(evaluation.scores[label], evaluation.mos, dataset=dataset, identity=identity,
                           lower_better=evaluation.lower_better)


def save_calibration(calibration: Calibration, path: Union[str, os.PathLike]) -> None:
    """Writes a calibration as JSON.

    Raises:
        OSError: The file cannot be written.
    """
    with open(path, "w", encoding="utf-8") as file:
        json.dump(calibration.to_dict(), file, indent=2, allow_nan=False)
        file.write("\n")


def load_calibration(path: Union[str, os.PathLike]) -> Calibration:
    """Reads a calibration file written by :func:`save_calibration`.

    Raises:
        CalibrationError: The file cannot be read, is not a calibration, or holds unusable values.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as error:
        raise CalibrationError(f"calibration {path}: {error.strerror or type(error).__name__}") from None
    except ValueError as error:
        raise CalibrationError(f"calibration {path}: not JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationError(f"calibration {path}: not a {FORMAT} file (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise CalibrationError(f"calibration {path}: version {data.get('version')!r}, this release reads {VERSION}")
    try:
        params = tuple(float(v) for v in data["fit"]["params"])
        quantiles = tuple(float(v) for v in data["quantiles"])
        low, high = (float(v) for v in data["mos_range"])
        calibration = Calibration(str(data["dataset"]), int(data["images"]), (low, high),
                                  data["mos_direction"] == "lower is better", params, quantiles,
                                  dict(data["fitted_for"]), path)
    except (KeyError, TypeError, ValueError) as error:
        raise CalibrationError(f"calibration {path}: missing or malformed field ({type(error).__name__}: "
                               f"{error})") from None
    if data["fit"].get("form") != FORM or len(params) != 4 or len(quantiles) != QUANTILES:
        raise CalibrationError(f"calibration {path}: expected a {FORM} fit with 4 parameters and {QUANTILES} "
                               f"quantiles")
    if not all(map(math.isfinite, params + quantiles)) or any(b < a for a, b in zip(quantiles, quantiles[1:])):
        raise CalibrationError(f"calibration {path}: parameters or quantiles are not finite and ascending")
    return calibration


def as_calibration(value: Union[Calibration, str, os.PathLike]) -> Calibration:
    """A calibration, or one read from a file path."""
    return value if isinstance(value, Calibration) else load_calibration(value)


def scorer_identity(scorer: Any) -> Dict[str, Any]:
    """What makes a scorer's scores what they are, to match calibrations against: its preset, the SHA-256 of its
    weights file, a digest of its prompt features (custom prompts and learned prompt files change them), its logit
    scale and precision. Device and batch size do not change scores and are left out.

    Args:
        scorer: A :class:`~qualiclip_infer.scorer.QualityScorer` (read through its attributes only).
    """
    features = scorer.model.prompt_features.detach().float().cpu().contiguous().numpy()
    return {"model": scorer.model_name, "weights_file": os.path.basename(os.fspath(scorer.weights_path)),
            "weights_sha256": file_sha256(scorer.weights_path),
            "prompt_features_sha256": hashlib.sha256(features.astype("<f4").tobytes()).hexdigest(),
            "logit_scale": float(scorer.model.logit_scale), "precision": scorer.precision}


def calibrated_results(calibration: Calibration, results: Iterable[ScoreResult]) -> Iterator[ScoreResult]:
    """Passes results on with their ``mos`` and ``percentile`` set (left ``None`` for inputs not scored)."""
    for result in results:
        if result.score is not None:
            result.mos = float(calibration.mos(result.score))
            result.percentile = float(calibration.percentile(result.score))
        yield result


def checked_calibration(value: Union[Calibration, str, os.PathLike], scorer: Any) -> Calibration:
    """A calibration (or the one in a file) after checking it was fitted for ``scorer``.

    Raises:
        CalibrationError: The file cannot be used, or was fitted for another model or settings.
    """
    calibration = as_calibration(value)
    calibration.check(scorer_identity(scorer))
    return calibration
