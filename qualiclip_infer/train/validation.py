"""Validation of a run: held-out crops ranked by degradation level, and whole images against human scores (MOS).

The held-out crops are cut once and scored again at every validation, with the same types and draws; images that
fail to load are skipped with a warning naming them (also when every held-out image fails, as it can where images
are decoded only when met), so validation never stops a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..devices import autocast
from ..images import ImageError, image_size, to_tensor
from ..messages import first_line
from ..metrics import plcc, srcc
from ..model import QualiCLIP
from ..mos import read_mos
from .config import TrainConfig
from .data import CROPS_PER_SAMPLE, VALIDATION_DEGRADATIONS, Batch, StreamSampler, collate_samples, derive_seed
from .dataset import RunImages
from .inputs import decode_check
from .network import degraded_on, network_input
from .schedule import default_validation_interval

Log = Callable[[str], None]


def level_correlations(scores: torch.Tensor, levels: Sequence[int]) -> Dict[str, float]:
    """How well scores rank degraded versions of crops by level: higher is better, 1 is a perfect ranking.

    Args:
        scores: ``crops x L`` scores, one row per crop, each column one level of ``levels``.
        levels: The degradation levels of the columns.

    Returns:
        ``level_srcc``: the mean over crops of the SRCC between a crop's scores and minus its levels, i.e. the
        ranking the losses teach (a crop whose scores are all equal counts as 0). ``level_srcc_pooled``: the SRCC
        over all crops at once, which also asks that a level mean the same quality across pictures and types.
    """
    scores = scores.double().cpu().numpy()
    minus_levels = np.broadcast_to(-np.asarray(levels, dtype=np.float64), scores.shape)
    per_crop = srcc(scores, minus_levels)
    return {
        "level_srcc": float(np.nan_to_num(per_crop, nan=0.0).mean()),
        "level_srcc_pooled": srcc(scores.ravel(), minus_levels.ravel()),
    }


def read_validation_mos(path: os.PathLike, log: Log) -> List[Tuple[Path, float]]:
    """The ``(image, MOS)`` rows of a MOS file, read as ``qualiclip-eval`` reads it; rows it leaves out are logged.

    Raises:
        MosFileError: The file cannot be read (the message is ``qualiclip-eval``'s).
        ValueError: Fewer than 2 usable rows.
    """
    table = read_mos(path)
    for line in table.problems():
        log(f"warning: {line}")
    if len(table.images) < 2:
        raise ValueError(f"{table.source}: {len(table.images)} usable row(s); correlations need at least 2")
    return [(Path(image), mos) for image, mos in zip(table.images, table.mos)]


def _pixels(path: Path) -> int:
    """Pixel count from an image's header; 0 for one that cannot be read (validation skips it with a warning)."""
    try:
        width, height = image_size(path)
    except ImageError:
        return 0
    return width * height


class Validator:
    """Scores a network on a run's held-out crops and MOS images.

    Args:
        config: The run's settings.
        images: The run's images (its validation stream, and where failures are noted).
        levels: The degradation levels of the run.
        device: Where the network runs.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast).
        workers: Loader processes cutting the held-out crops.
        log: Receives the warnings.
    """

    def __init__(self, config: TrainConfig, images: RunImages, levels: Sequence[int], device: torch.device,
                 precision: str, workers: int, log: Log):
        self.config, self.images, self.levels = config, images, tuple(levels)
        self.device, self.precision, self.workers = device, precision, workers
        self.mos_rows = read_validation_mos(config.val_csv, log) if config.val_csv is not None else []
        self._batches: Optional[List[Batch]] = None

    def default_interval(self) -> int:
        """Optimiser steps between validations that keep validation within its share of the training time."""
        config = self.config
        mos_crops = sum(_pixels(path) for path, _ in self.mos_rows) / config.crop_size ** 2
        val_crop_levels = ((config.val_crops * len(self.levels) if self.images.val_stream is not None else 0)
                           + mos_crops)
        step_crop_levels = config.batch_size * config.accumulate * CROPS_PER_SAMPLE * len(self.levels)
        return default_validation_interval(val_crop_levels, step_crop_levels)

    def evaluate(self, model: QualiCLIP) -> Dict[str, float]:
        """Validation metrics of ``model`` (higher is better for all); see :meth:`.loop.Trainer.evaluate`."""
        model.eval()
        metrics = {}
        with torch.no_grad():
            if self.images.val_stream is not None and self.batches():
                metrics.update(level_correlations(self.level_scores(model), self.levels))
            scored = [(score, mos) for score, mos in ((self.score_file(model, path), mos)
                                                      for path, mos in self.mos_rows) if score is not None]
            if len(scored) >= 2:
                scores, mos = np.asarray(scored, dtype=np.float64).T
                metrics["mos_srcc"], metrics["mos_plcc"] = srcc(scores, mos), plcc(scores, mos)
        return metrics

    def batches(self) -> List[Batch]:
        """The held-out crops (uint8, on the CPU), cut once: every validation scores the same ones."""
        if self._batches is None:
            loader = DataLoader(self.images.val_stream, batch_size=self.config.batch_size,
                                sampler=StreamSampler(0, self.config.val_crops), num_workers=self.workers,
                                collate_fn=collate_samples)
            batches = []
            try:
                for batch in loader:
                    self.images.note_skipped(batch.skipped)
                    batches.append(batch)
            except ImageError:  # no held-out image loads: name each, and validate without crops
                batches = []
                self.images.note_skipped(self._decode_failures(self.images.val_images))
            self._batches = batches
        return self._batches

    @staticmethod
    def _decode_failures(paths: Sequence[Path]) -> List[str]:
        failures = []
        for path in paths:
            try:
                decode_check(path)
            except ImageError as error:
                failures.append(first_line(error))
        return failures

    def level_scores(self, model: QualiCLIP) -> torch.Tensor:
        """Scores of the held-out crops: ``crops x L``, levels mildest first."""
        scores = []
        for index, batch in enumerate(self.batches()):
            degraded = degraded_on(self.device, batch.crops, batch.distortions, self.config.distortions, self.levels,
                                   derive_seed(self.config.seed, VALIDATION_DEGRADATIONS, index))
            with autocast(self.precision, self.device):
                scores.append(model(network_input(model, degraded)).float().cpu())
        return torch.cat(scores).view(-1, len(self.levels))

    def score_file(self, model: QualiCLIP, path: Path) -> Optional[float]:
        """Score of a whole image; ``None`` (with a warning, once) when it cannot be read."""
        try:
            image = to_tensor(path, os.fspath(path))
        except ImageError as error:
            self.images.note_skipped([first_line(error)])
            return None
        with autocast(self.precision, self.device):
            return float(model(model.normalize(image[None].to(self.device))))
