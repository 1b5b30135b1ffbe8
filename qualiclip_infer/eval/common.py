"""Choosing the images of an evaluation: those with a MOS and a score from every model, so that all models are
compared on the same images, and what each model left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from .mos import Excluded, MosTable
from .scores import image_key
from .scoring import Log, ModelScores


@dataclass
class CommonImages:
    """The images every model scored, and those left out.

    Attributes:
        images: The images used, in MOS-file order.
        mos: Their opinion scores, as in the file.
        scores: Per model (in the order of the sources), the scores of those images.
        not_scored: Images left out because at least one model has no score for them.
        per_model: Per model, the images it has no score for, with the reason.
    """

    images: List[str]
    mos: np.ndarray
    scores: List[np.ndarray]
    not_scored: Excluded
    per_model: List[Excluded]


def common_images(table: MosTable, sources: Sequence[ModelScores], log: Log) -> CommonImages:
    """The images of ``table`` that every source has a score for; each source's missing ones are logged.

    Args:
        table: The MOS file's usable rows.
        sources: Every model, with its scores filled in.
        log: Receives one line per model that left images out.
    """
    keys = [image_key(image) for image in table.images]
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
    not_scored = Excluded()
    used = []
    for index, key in enumerate(keys):
        if all(key in source.saved and source.saved[key].score is not None for source in sources):
            used.append(index)
        else:
            not_scored.add(table.images[index])
    return CommonImages(
        images=[table.images[index] for index in used],
        mos=np.array([table.mos[index] for index in used], dtype=np.float64),
        scores=[np.array([source.saved[keys[index]].score for index in used], dtype=np.float64)
                for source in sources],
        not_scored=not_scored, per_model=per_model)
