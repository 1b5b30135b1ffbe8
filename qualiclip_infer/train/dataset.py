"""The images of one run: which are usable, the training/validation split, the crop streams over them, and the
images that failed on the way (each named once in a warning)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .config import TrainConfig
from .data import CROPS_PER_SAMPLE, TRAIN_SAMPLES, VALIDATION_SAMPLES, CropStream, split_images
from .inputs import check_images, rejection_warning

Log = Callable[[str], None]


class RunImages:
    """Checks the images found for a run and splits them, as a resumed run did when it first started.

    Args:
        config: The run's settings.
        found: The image files found (see :func:`.inputs.list_images`).
        workers: Processes to check the images with.
        log: Receives the warnings.
        resume: The state of the run being resumed (``excluded`` and ``skipped`` are read), or ``None``.

    Raises:
        ValueError: Too few usable images.
    """

    def __init__(self, config: TrainConfig, found: Sequence[Path], workers: int, log: Log,
                 resume: Optional[dict] = None):
        self.root = config.images
        self.found = list(found)
        self.log = log
        usable, self.rejected, self.decoded = check_images(self.found, config.crop_size, workers, config.decode_check)
        if self.rejected:
            log(rejection_warning(self.rejected, len(self.found), config.crop_size))
        # Images that failed during an earlier part of a resumed run, by path relative to the folder, and why.
        self.skipped: Dict[str, str] = dict(resume["skipped"]) if resume is not None else {}
        # The split is over the images usable when the run first started, so that resuming after an image broke
        # gives the same split; images broken since then are skipped like any image that fails on the way.
        excluded = ({self.root / name for name in resume["excluded"]} if resume is not None
                    else {entry.path for entry in self.rejected})
        needed = 2 if config.val_fraction > 0 else 1
        if len(usable) < needed:
            raise ValueError(f"{self.root}: {len(usable)} usable image(s) of {len(self.found)} found; need at "
                             f"least {needed}" + (" (one to hold out for validation)" if needed == 2 else ""))
        self.train_images, self.val_images = split_images([p for p in self.found if p not in excluded],
                                                          config.val_fraction, config.seed)
        unusable = {entry.path for entry in self.rejected} | {self.root / name for name in self.skipped}
        if not set(self.train_images) - unusable:
            raise ValueError(f"{self.root}: no usable training image left")
        self.train_stream = CropStream(self.train_images, config.crop_size, CROPS_PER_SAMPLE,
                                       len(config.distortions), config.seed, TRAIN_SAMPLES, unusable)
        usable_val = [p for p in self.val_images if p not in unusable]
        self.val_stream = (CropStream(self.val_images, config.crop_size, 1, len(config.distortions), config.seed,
                                      VALIDATION_SAMPLES, unusable) if usable_val and config.val_crops else None)

    @property
    def usable_train_images(self) -> int:
        """Training images not known to be unusable."""
        return len(set(self.train_images) - self.train_stream.unusable)

    @property
    def usable_val_images(self) -> int:
        """Held-out images not known to be unusable (0 without validation crops)."""
        return len(set(self.val_images) - self.val_stream.unusable) if self.val_stream is not None else 0

    def relative(self, paths: Sequence[Path]) -> List[str]:
        """Paths relative to the image folder, as the state file records them."""
        return [os.path.relpath(path, self.root) for path in paths]

    def excluded(self) -> List[str]:
        """The images found but in neither split (unusable when the run first started), relative and sorted."""
        return sorted(set(self.relative(self.found)) - set(self.relative([*self.train_images, *self.val_images])))

    def note_skipped(self, failures: Sequence[str]) -> None:
        """Warns once about each image that failed to load during the run (each line starts with its path)."""
        for line in failures:
            path = next((p for p in self.train_images + self.val_images if line.startswith(f"{os.fspath(p)}: ")),
                        None)
            name = os.path.relpath(path, self.root) if path is not None else line
            if name not in self.skipped:
                self.skipped[name] = line
                self.log(f"warning: skipped {line}; the run goes on without it")
