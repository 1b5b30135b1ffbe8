"""When things happen in a run: the learning-rate schedule, and how often validation runs by default.

Both are pure functions of the step number and the settings, so a resumed run follows the same schedule as an
uninterrupted one.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("cosine", "constant")
# Share of the steps spent warming the learning rate up linearly, when --warmup-steps is not given (ours).
WARMUP_SHARE = 0.05

# Default validation interval. Validation pushes ``val_crops x L`` crop-levels through the network (forward only);
# an optimiser step pushes ``batch x accumulate x 2 x L`` (forward and backward); both also degrade every crop-level.
# Measured CPU time per crop-level, single-threaded at 224 px on the 10-photo run's own crops (`python
# benchmarks/bench_train.py --costs`, figures in benchmarks/RESULTS.md): a training step costs 2.43x a validation for
# a tiny CLIP and 2.50x for RN50 (2.73x and 2.62x on random-noise crops). We take 2.5, so that periodic validation
# stays within about VALIDATION_SHARE of the training time (10.3% at worst for the tiny CLIP) whatever the model, and
# whatever the dataset size (neither side depends on it). Not measured on a GPU, where a larger share of the time
# may go to the degradations that both sides pay alike (which would bring the ratio closer to 1).
TRAIN_TO_VALIDATION_COST = 2.5
VALIDATION_SHARE = 0.1


def default_warmup_steps(total_steps: int) -> int:
    """Warm-up length used when none is given: ``WARMUP_SHARE`` of the run (our default)."""
    return round(WARMUP_SHARE * total_steps)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """Multiplier of the base learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    The first ``warmup_steps`` steps rise linearly to 1 (step ``i`` gets ``(i + 1) / (warmup_steps + 1)``); then
    ``constant`` stays at 1 and ``cosine`` falls along half a cosine towards 0, reached one step after the last.

    Raises:
        ValueError: An unknown schedule.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"learning-rate schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def default_validation_interval(val_crop_levels: float, step_crop_levels: int) -> int:
    """Optimiser steps between validations such that validating costs at most ``VALIDATION_SHARE`` of training.

    Args:
        val_crop_levels: Crop-levels one validation scores (``val_crops x L``, plus any whole images of a MOS CSV
            counted in crop areas).
        step_crop_levels: Crop-levels one optimiser step trains on (``batch x accumulate x 2 x L``).
    """
    if val_crop_levels <= 0:
        return 0
    return max(1, math.ceil(val_crop_levels / (VALIDATION_SHARE * TRAIN_TO_VALIDATION_COST * step_crop_levels)))
