"""The settings of a fine-tuning run, their defaults and their choices, in one torch-free module.

``qualiclip-train`` reads its defaults and choices from here before it parses its arguments, so that ``--help`` and
bad arguments never wait for torch. Everything that needs torch (the degradations, the network, the loop) imports
from here, never the reverse; the one exception is checking custom prompts, whose check lives with the prompt
encoder and is imported when a config with prompts is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from ..constants import MIN_IMAGE_SIDE
from ..hub import WeightsSpec
from .schedule import LR_SCHEDULES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODE_CHECKS = ("auto", "upfront", "lazy")
# ``auto`` decodes up front when that is estimated to take at most this long (our choice): a small folder gets its
# truncated files named before training; 100,000 photos of 12 Mpx would take hours, so they are checked lazily.
UP_FRONT_DECODE_BUDGET_S = 60.0

NUM_LEVELS: int = 5
"""Severity levels of every degradation type, 1 (mildest) to 5."""

DISTORTION_GROUPS: Dict[str, Tuple[str, ...]] = {
    "blur": ("gaussian_blur", "lens_blur", "motion_blur"),
    "color": ("color_diffusion", "color_shift", "color_saturation_hsv", "color_saturation_lab"),
    "compression": ("jpeg2000", "jpeg"),
    "noise": ("white_noise", "white_noise_ycbcr", "impulse_noise", "multiplicative_noise"),
    "brightness": ("brighten", "darken", "mean_shift"),
    "spatial": ("jitter", "non_eccentricity_patch", "pixelate", "quantization", "color_block"),
    "sharpness_contrast": ("sharpen", "contrast_change", "nonlinear_contrast"),
}
"""Group name -> its degradation types (ARNIQA's catalogue; :mod:`.degradations` implements each)."""

DISTORTIONS: Tuple[str, ...] = tuple(name for names in DISTORTION_GROUPS.values() for name in names)
"""The 24 degradation types, in catalogue order."""


def spread_levels(count: int) -> Tuple[int, ...]:
    """``count`` increasing levels spread evenly over 1..NUM_LEVELS, always including both ends.

    Raises:
        ValueError: ``count`` is not in 2..NUM_LEVELS.
    """
    if not 2 <= count <= NUM_LEVELS:
        raise ValueError(f"the number of levels must be from 2 to {NUM_LEVELS}, got {count}")
    # No level falls half-way between two integers for these counts, so rounding has no tie to break.
    return tuple(round(1 + (NUM_LEVELS - 1) * index / (count - 1)) for index in range(count))


def state_path(out: Union[str, os.PathLike]) -> Path:
    """Where the resumable state of a run writing ``out`` goes: ``model.pth`` -> ``model.state.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.state.pt")


@dataclass(frozen=True)
class LossConfig:
    """Margins (on cosine similarity) and weights of the three losses (our defaults; not published).

    :mod:`.ranking` explains the default margins.

    Attributes:
        margin_pos: Least drop in similarity to the positive prompt from one level to any stronger one.
        margin_neg: Least rise in similarity to the negative prompt from one level to any stronger one.
        margin_cons: Largest difference between the two crops' similarities at one level that costs nothing.
        weight_pos: Weight of ``L_pos`` in the total.
        weight_neg: Weight of ``L_neg`` in the total.
        weight_cons: Weight of ``L_cons`` in the total.
    """

    margin_pos: float = 0.01
    margin_neg: float = 0.01
    margin_cons: float = 0.005
    weight_pos: float = 1.0
    weight_neg: float = 1.0
    weight_cons: float = 1.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"{name} must be a non-negative number, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a fine-tuning run. Values not given in the paper are our defaults (marked *ours*).

    Attributes:
        images: Folder of pristine images, searched recursively by the rules of ``qualiclip-score``.
        out: Where the fine-tuned checkpoint (official format) is written.
        init: Initial weights, as for ``QualityScorer``: ``None`` for the published QualiCLIP checkpoint.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``auto`` (bf16 autocast on CUDA where supported, else fp16; fp32 elsewhere), ``fp32``, ``bf16``
            or ``fp16``; mixed precision on CUDA only.
        epochs: Passes over the training images (*ours*: 5); ignored when ``steps`` is given.
        steps: Optimiser steps to train for, overriding ``epochs``.
        batch_size: Images (each giving 2 crops x L levels) per micro-batch (*ours*: 16).
        accumulate: Micro-batches per optimiser step.
        lr: AdamW peak learning rate (*ours*: 1e-5, a fine-tuning rate; the pre-trained features move little).
        lr_schedule: ``cosine`` (*ours*) or ``constant``, after the warm-up.
        warmup_steps: Steps of linear warm-up; ``None``: 5% of the run (*ours*).
        weight_decay: AdamW weight decay (*ours*: 1e-4; small, to stay near the pre-trained weights).
        seed: Seed of the split, crops, distortion choices and degradations.
        crop_size: Side of the square crops (*ours*: 224, CLIP's training size); smaller images are left out.
        levels: Degradation levels per crop, spread over 1..5 (*ours*: 5).
        distortions: Distortion types drawn from, one per sample, uniformly (default: all 24).
        loss: Margins and weights of the three losses (*ours*).
        train_bn: Update BatchNorm running statistics; by default they stay frozen (layers in eval mode) while their
            affine parameters train, since the degraded batches are far from the statistics CLIP was trained on.
        checkpoint_every: Write the resumable state before the first step, every N optimiser steps and at the end
            (0: never).
        resume: A state file to continue from (written by ``checkpoint_every``).
        val_fraction: Share of the images held out for validation (*ours*: 0.05).
        val_crops: Held-out crops, each degraded at every level, for the level SRCC (*ours*: 240).
        val_every_steps: Validate every N optimiser steps (0: never in between). ``None``: as often as keeps
            validation within 10% of the training time (see :mod:`.schedule`), unless ``val_every`` is given.
        val_every: Validate every N epochs instead (0: only before and after training); ``None``: not by epochs.
        val_csv: A file of human scores to report SRCC and PLCC against, in any layout ``qualiclip-eval`` reads
            (:func:`qualiclip_infer.mos.read_mos`: a ``path,mos`` CSV or TSV, or a dataset's published file).
        workers: DataLoader processes decoding and cropping images, at most one per CPU (0: in the main process).
        hidden: Also train on files and folders whose names start with '.' (skipped by default, e.g. ``._a.jpg``).
        decode_check: ``auto``: decode every image before training when estimated to be cheap, else only read the
            headers and skip undecodable images when met; ``upfront``: always decode first; ``lazy``: never.
        prompts: Custom ``(positive, negative)`` prompt pairs to train against; ``None`` uses the pairs whose
            features are stored in the initial checkpoint (the official seven).
        progress: Show a progress bar on stderr; ``None`` shows it when stderr is a terminal.
    """

    images: Path
    out: Path
    init: WeightsSpec = None
    device: str = "auto"
    precision: str = "auto"
    epochs: int = 5
    steps: Optional[int] = None
    batch_size: int = 16
    accumulate: int = 1
    lr: float = 1e-5
    lr_schedule: str = "cosine"
    warmup_steps: Optional[int] = None
    weight_decay: float = 1e-4
    seed: int = 0
    crop_size: int = 224
    levels: int = 5
    distortions: Tuple[str, ...] = DISTORTIONS
    loss: LossConfig = field(default_factory=LossConfig)
    train_bn: bool = False
    checkpoint_every: int = 1000
    resume: Optional[Path] = None
    val_fraction: float = 0.05
    val_crops: int = 240
    val_every_steps: Optional[int] = None
    val_every: Optional[int] = None
    val_csv: Optional[Path] = None
    workers: int = 4
    hidden: bool = False
    decode_check: str = "auto"
    prompts: Optional[Tuple[Tuple[str, str], ...]] = None
    progress: Optional[bool] = None

    def __post_init__(self) -> None:
        self._check_counts()
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        for name, value, choices in (("lr_schedule", self.lr_schedule, LR_SCHEDULES),
                                     ("precision", self.precision, PRECISIONS),
                                     ("decode_check", self.decode_check, DECODE_CHECKS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if self.crop_size < MIN_IMAGE_SIDE:
            raise ValueError(f"crop_size must be at least {MIN_IMAGE_SIDE}, got {self.crop_size}")
        unknown = [name for name in self.distortions if name not in DISTORTIONS]
        if unknown or not self.distortions or len(set(self.distortions)) != len(self.distortions):
            raise ValueError(f"distortions must be distinct names from: {', '.join(DISTORTIONS)}; "
                             f"got {', '.join(self.distortions) or 'none'}")
        spread_levels(self.levels)
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.prompts is not None:
            from ..prompts import as_prompt_pairs  # the prompt check lives with the encoder (and needs torch)

            as_prompt_pairs(self.prompts)

    def _check_counts(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accumulate": self.accumulate,
                    "steps": self.steps}
        non_negative = {"seed": self.seed, "checkpoint_every": self.checkpoint_every, "val_crops": self.val_crops,
                        "val_every_steps": self.val_every_steps, "val_every": self.val_every,
                        "warmup_steps": self.warmup_steps, "workers": self.workers}
        optional = ("steps", "val_every_steps", "val_every", "warmup_steps")
        for name, value in {**positive, **non_negative}.items():
            if value is None and name in optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name in positive else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name in positive else 0}, got {value!r}")
