"""How well each model's scores agree with the MOS: every metric with its bootstrap interval, and each model's SRCC
against the first model's on the same resamples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import metrics


@dataclass
class ModelAgreement:
    """One model's metrics.

    Attributes:
        values: Metric name -> value on all the images (NaN where undefined).
        fits: Form name -> the mapping fitted from score to MOS.
        intervals: Metric name -> ``(low, high)``; ``None`` without bootstrap.
        srcc_vs_first: ``difference`` in SRCC from the first model, its ``ci`` and two-sided ``p_value`` (``None``
            without bootstrap); ``None`` for the first model itself.
    """

    values: Dict[str, float]
    fits: Dict[str, metrics.LogisticFit]
    intervals: Optional[Dict[str, Tuple[float, float]]]
    srcc_vs_first: Optional[Dict[str, Any]]


def measure_agreement(score_sets: Sequence[np.ndarray], mos: np.ndarray, *, fits: Sequence[str],
                      lower_better: bool, resamples: int, seed: int, confidence: float) -> List[ModelAgreement]:
    """Every metric of every model, with intervals from one paired bootstrap (every model on the same resamples).

    Args:
        score_sets: Per model, the scores of the images, aligned with ``mos``.
        mos: The opinion scores, as in the file.
        fits: Logistic forms fitted before PLCC/RMSE.
        lower_better: The MOS is DMOS-style.
        resamples: Bootstrap resamples; 0: no intervals.
        seed: Seed of the bootstrap.
        confidence: Coverage of the intervals.
    """
    observed = [metrics.agreement(x, mos, fits, lower_better=lower_better) for x in score_sets]
    samples = (metrics.bootstrap(score_sets, mos, fits=fits, lower_better=lower_better, resamples=resamples,
                                 seed=seed) if resamples else None)
    first_srcc = observed[0][0]["srcc"]
    measured = []
    for position, (values, fitted) in enumerate(observed):
        intervals = ({name: metrics.percentile_interval(samples[position][name], confidence) for name in values}
                     if samples else None)
        versus = None
        if position and samples:
            versus = metrics.paired_difference(samples[0]["srcc"], samples[position]["srcc"],
                                               values["srcc"] - first_srcc, confidence)
        elif position:
            versus = {"difference": values["srcc"] - first_srcc, "ci": None, "p_value": None}
        measured.append(ModelAgreement(values, fitted, intervals, versus))
    return measured
