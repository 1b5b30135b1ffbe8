"""Fine-tuning QualiCLIP's image tower: the training loop, validation, resumable state and export.

The text tower is never built: the prompt features are constants read from the initial checkpoint (or encoded once
for custom prompts), and the exported checkpoint copies the text tower's tensors from that file.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..constants import MIN_IMAGE_SIDE
from ..images import ImageError, image_size, to_tensor
from ..messages import first_line
from ..metrics import plcc, srcc
from ..model import QualiCLIP
from ..presets import OFFICIAL_PROMPT_PAIRS
from ..prompts import as_prompt_pairs, prompt_features
from ..checkpoint import load_checkpoint, save_checkpoint
from ..devices import AUTOCAST_DTYPES, resolve_device
from ..hub import WeightsSpec, resolve_weights
from .data import (CROPS_PER_SAMPLE, TRAIN_DEGRADATIONS, TRAIN_SAMPLES, VALIDATION_DEGRADATIONS, VALIDATION_SAMPLES,
                   Batch, CropStream, StreamSampler, collate_samples, degrade_levels, derive_seed, read_mos_csv,
                   split_images, spread_levels)
from .degradations import DISTORTIONS
from .inputs import DECODE_CHECKS, NAMED_IN_WARNING, check_images, list_images, rejection_warning
from .losses import LossConfig, LossTerms, prompt_similarities, qualiclip_loss
from .schedule import LR_SCHEDULES, default_validation_interval, default_warmup_steps, lr_factor

STATE_FORMAT = "qualiclip-train-state/2"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Devices where the network trains in channels-last layout: on the CPU about 3x faster for a tiny CLIP at 224 px
# (measured), and what CUDA's convolution kernels prefer under mixed precision.
CHANNELS_LAST_DEVICES = ("cpu", "cuda")

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------- rank statistics

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


# ------------------------------------------------------------------------------------------- configuration

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
        checkpoint_every: Write the resumable state every N optimiser steps and at the end (0: never).
        resume: A state file to continue from (written by ``checkpoint_every``).
        val_fraction: Share of the images held out for validation (*ours*: 0.05).
        val_crops: Held-out crops, each degraded at every level, for the level SRCC (*ours*: 240).
        val_every_steps: Validate every N optimiser steps (0: never in between). ``None``: as often as keeps
            validation within 10% of the training time (see :mod:`.schedule`), unless ``val_every`` is given.
        val_every: Validate every N epochs instead (0: only before and after training); ``None``: not by epochs.
        val_csv: A ``path,mos`` CSV of human scores to report SRCC and PLCC against.
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
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.crop_size < MIN_IMAGE_SIDE:
            raise ValueError(f"crop_size must be at least {MIN_IMAGE_SIDE}, got {self.crop_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.decode_check not in DECODE_CHECKS:
            raise ValueError(f"decode_check must be one of {', '.join(DECODE_CHECKS)}, got {self.decode_check!r}")
        unknown = [name for name in self.distortions if name not in DISTORTIONS]
        if unknown or not self.distortions or len(set(self.distortions)) != len(self.distortions):
            raise ValueError(f"distortions must be distinct names from: {', '.join(DISTORTIONS)}; "
                             f"got {', '.join(self.distortions) or 'none'}")
        spread_levels(self.levels)
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.prompts is not None:
            as_prompt_pairs(self.prompts)


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device``, or ``None`` for plain fp32.

    Raises:
        ValueError: Mixed precision asked for off CUDA, or bf16 on a GPU without it.
    """
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp32":
        return None
    if device.type != "cuda":
        raise ValueError(f"precision {precision!r}: mixed-precision training runs on CUDA only, not {device.type}")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bf16': {torch.cuda.get_device_name(device)} does not support bfloat16")
    return AUTOCAST_DTYPES[precision]


def state_path(out: Union[str, os.PathLike]) -> Path:
    """Where the resumable state of a run writing ``out`` goes: ``model.pth`` -> ``model.state.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.state.pt")


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pixels(path: Path) -> int:
    """Pixel count from an image's header; 0 for one that cannot be read (validation skips it with a warning)."""
    try:
        width, height = image_size(path)
    except ImageError:
        return 0
    return width * height


def worker_message(error: BaseException) -> str:
    """The one-line message of an error, also when a DataLoader worker re-raised it.

    A re-raised worker error reads "Caught ImageError in DataLoader worker process 0." and carries the original
    message on the traceback's last line; that line is the one worth showing.
    """
    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        name = type(error).__name__
        return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return first_line(error)


# ------------------------------------------------------------------------------------------- the trainer

class Trainer:
    """Fine-tunes QualiCLIP's image tower on synthetically degraded crops of pristine images.

    Building a trainer does all the checks and loading (images, weights, device, resume state), so that a bad
    setting fails before any training. :meth:`run` then trains, validates, and exports.

    Images that cannot be used are left out with one warning (see :mod:`.inputs`); building fails only when too few
    usable ones remain. One that fails later (e.g. deleted or truncated during the run) is skipped with a warning
    naming it, and the run goes on.

    Args:
        config: The run's settings.
        log: Receives one line per validation, per warning and on export; ``None`` is silent.
        on_step: Called with the trainer after every optimiser step (after any validation and state save).

    Raises:
        ValueError: A setting that cannot work (too few usable images, unknown device, mismatched resume state, ...).
        FileNotFoundError: The image folder, MOS CSV, resume state or weights do not exist.
        CheckpointError: The initial weights are not a QualiCLIP checkpoint.
    """

    def __init__(self, config: TrainConfig, log: Optional[Log] = None,
                 on_step: Optional[Callable[["Trainer"], None]] = None):
        self.config = config
        self.log = log or (lambda line: None)
        self.on_step = on_step
        self.device = resolve_device(config.device)
        self.autocast_dtype = resolve_precision(config.precision, self.device)
        self.levels = spread_levels(config.levels)
        self.workers = min(config.workers, available_cpus())
        resume = self._read_state(config.resume) if config.resume is not None else None
        self.found = list_images(config.images, hidden=config.hidden)
        if not self.found:
            raise ValueError(f"{config.images}: no image files found")
        # Before the images are checked (up to a minute), but after the cheap folder listing: a download may be slow.
        init = config.init if config.init is not None or resume is None else resume["init"]
        self.init_path = resolve_weights(init)
        usable, self.rejected, self.decoded = check_images(self.found, config.crop_size, self.workers,
                                                           config.decode_check)
        if self.rejected:
            self.log(rejection_warning(self.rejected, len(self.found), config.crop_size))
        # Images that failed during an earlier part of a resumed run, by path relative to the folder, and why.
        self.skipped: Dict[str, str] = dict(resume["skipped"]) if resume is not None else {}
        # The split is over the images usable when the run first started, so that resuming after an image broke
        # gives the same split; images broken since then are skipped like any image that fails on the way.
        excluded = ({config.images / name for name in resume["excluded"]} if resume is not None
                    else {entry.path for entry in self.rejected})
        needed = 2 if config.val_fraction > 0 else 1
        if len(usable) < needed:
            raise ValueError(f"{config.images}: {len(usable)} usable image(s) of {len(self.found)} found; need at "
                             f"least {needed}" + (" (one to hold out for validation)" if needed == 2 else ""))
        self.train_images, self.val_images = split_images([p for p in self.found if p not in excluded],
                                                          config.val_fraction, config.seed)
        unusable = {entry.path for entry in self.rejected} | {config.images / name for name in self.skipped}
        if not set(self.train_images) - unusable:
            raise ValueError(f"{config.images}: no usable training image left")
        self.train_stream = CropStream(self.train_images, config.crop_size, CROPS_PER_SAMPLE,
                                       len(config.distortions), config.seed, TRAIN_SAMPLES, unusable)
        usable_val = [p for p in self.val_images if p not in unusable]
        self.val_stream = (CropStream(self.val_images, config.crop_size, 1, len(config.distortions), config.seed,
                                      VALIDATION_SAMPLES, unusable) if usable_val and config.val_crops else None)
        self.mos_rows = read_mos_csv(config.val_csv) if config.val_csv is not None else []
        self.total_steps = config.steps or math.ceil(
            config.epochs * len(self.train_images) / (config.batch_size * config.accumulate))
        self.warmup_steps = (config.warmup_steps if config.warmup_steps is not None
                             else default_warmup_steps(self.total_steps))
        self.val_every_steps = self._validation_interval()

        self.model = self._build_model()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                           lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.step = 0
        self.micro_batch = 0
        self.history: List[Dict[str, float]] = []
        self.losses: List[float] = []  # total loss of each step since the last validation
        self._val_batches: Optional[List[Batch]] = None
        if resume is not None:
            self._restore(resume)

    @property
    def usable_train_images(self) -> int:
        """Training images not known to be unusable."""
        return len(set(self.train_images) - self.train_stream.unusable)

    @property
    def usable_val_images(self) -> int:
        """Held-out images not known to be unusable (0 without validation crops)."""
        return len(set(self.val_images) - self.val_stream.unusable) if self.val_stream is not None else 0

    def _validation_interval(self) -> int:
        config = self.config
        if config.val_every_steps is not None:
            return config.val_every_steps
        if config.val_every is not None:  # validation by epochs was asked for instead
            return 0
        mos_crops = sum(_pixels(path) for path, _ in self.mos_rows) / config.crop_size ** 2
        val_crop_levels = (config.val_crops * len(self.levels) if self.val_stream is not None else 0) + mos_crops
        step_crop_levels = config.batch_size * config.accumulate * CROPS_PER_SAMPLE * len(self.levels)
        return default_validation_interval(val_crop_levels, step_crop_levels)

    def _build_model(self) -> QualiCLIP:
        checkpoint = load_checkpoint(self.init_path)
        tower = checkpoint.architecture.build_image_tower()
        tower.load_state_dict(checkpoint.image_tower_state(), strict=True)
        # Kept only so that checkpoints keep their keys: the position-free pool never reads it.
        tower.attnpool.positional_embedding.requires_grad_(False)
        # A plain CLIP file (OpenAI's RN50, where the paper starts from) stores no prompt features: unless other pairs
        # are given, train against the official seven, encoded by its text tower.
        pairs = self.config.prompts
        if pairs is None and checkpoint.prompt_features is None:
            pairs = OFFICIAL_PROMPT_PAIRS
        features = prompt_features(checkpoint, pairs)
        model = QualiCLIP(tower, features).to(self.device)
        if self.device.type in CHANNELS_LAST_DEVICES:
            model = model.to(memory_format=torch.channels_last)
        return model

    # ----------------------------------------------------------------------------------- training

    def run(self) -> List[Dict[str, float]]:
        """Trains to the configured number of steps, validating before, periodically and at the end.

        Returns:
            The validation history: one dict per validation with ``step``, ``epoch`` (fractional), the mean
            training ``loss`` since the previous validation (absent for the first), and the metrics of
            :meth:`evaluate`.
        """
        from tqdm.auto import tqdm

        config = self.config
        progress = sys.stderr.isatty() if config.progress is None else config.progress
        if not self.history:
            self._validate()
        batches = iter(self._train_loader()) if self.step < self.total_steps else iter(())
        with tqdm(total=self.total_steps, initial=self.step, disable=not progress, file=sys.stderr,
                  unit="step", dynamic_ncols=True) as bar:
            while self.step < self.total_steps:
                pending = []  # the micro-batches of this step
                for _ in range(config.accumulate):
                    batch = self._next_batch(batches)
                    pending.append(self._forward_backward(batch))
                    self.micro_batch += 1
                self._optimizer_step()
                terms = LossTerms(*(torch.stack(values).mean() for values in zip(*pending)))
                self.losses.append(float(terms.total))
                bar.update()
                bar.set_postfix(loss=f"{terms.total:.4f}", pos=f"{terms.pos:.4f}", neg=f"{terms.neg:.4f}",
                                cons=f"{terms.cons:.4f}", refresh=False)
                if self._validation_due():
                    self._validate()
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save_state(state_path(config.out))
                if self.on_step is not None:
                    self.on_step(self)
        if self.history[-1]["step"] != self.step:
            self._validate()
        self.export(config.out)
        if config.checkpoint_every:  # again, so that the state holds the final validation too
            self.save_state(state_path(config.out))
        return self.history

    def _train_loader(self) -> DataLoader:
        """One loader for the rest of the run: every micro-batch from the current one to the last, across epochs."""
        batch = self.config.batch_size
        sampler = StreamSampler(self.micro_batch * batch, self.total_steps * self.config.accumulate * batch)
        return DataLoader(self.train_stream, batch_size=batch, sampler=sampler, num_workers=self.workers,
                          persistent_workers=self.workers > 0, collate_fn=collate_samples,
                          pin_memory=self.device.type == "cuda")

    def _next_batch(self, batches) -> Batch:
        try:
            batch = next(batches)
        except ImageError as error:  # every training image has failed: nothing left to train on
            raise ImageError(worker_message(error)) from error
        self._note_skipped(batch.skipped)
        return batch

    def _note_skipped(self, failures: Sequence[str]) -> None:
        """Warns once about each image that failed to load during the run (each line starts with its path)."""
        for line in failures:
            path = next((p for p in self.train_images + self.val_images if line.startswith(f"{os.fspath(p)}: ")),
                        None)
            name = os.path.relpath(path, self.config.images) if path is not None else line
            if name not in self.skipped:
                self.skipped[name] = line
                self.log(f"warning: skipped {line}; the run goes on without it")

    def _validation_due(self) -> bool:
        if self.step >= self.total_steps:
            return False  # the final validation follows anyway
        if self.val_every_steps and self.step % self.val_every_steps == 0:
            return True
        if self.config.val_every:
            per_step = self.config.batch_size * self.config.accumulate
            epochs_before, epochs_now = ((self.step - 1) * per_step // len(self.train_images),
                                         self.step * per_step // len(self.train_images))
            return epochs_now // self.config.val_every > epochs_before // self.config.val_every
        return False

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _train_mode(self) -> None:
        self.model.train()
        if not self.config.train_bn:
            for module in self.model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.eval()

    def _degraded(self, crops: torch.Tensor, distortions: torch.Tensor, seed: int) -> torch.Tensor:
        """Moves uint8 crops to the device and degrades them: ``B x C x L x 3 x H x W`` in [0, 1]."""
        crops = crops.to(self.device, non_blocking=True).float().div_(255)
        with torch.no_grad():
            return degrade_levels(crops, distortions, self.config.distortions, self.levels, seed)

    def _network_input(self, degraded: torch.Tensor) -> torch.Tensor:
        images = self.model.normalize(degraded.flatten(0, 2))
        if self.device.type in CHANNELS_LAST_DEVICES:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _forward_backward(self, batch: Batch) -> LossTerms:
        """Loss of one micro-batch, its gradient accumulated; returns the (detached) terms."""
        self._train_mode()
        degraded = self._degraded(batch.crops, batch.distortions,
                                  derive_seed(self.config.seed, TRAIN_DEGRADATIONS, self.micro_batch))
        with self._autocast():
            features = self.model.encode_image(self._network_input(degraded))
        s_pos, s_neg = prompt_similarities(features.view(*degraded.shape[:3], -1), self.model.prompt_features)
        terms = qualiclip_loss(s_pos, s_neg, self.config.loss)
        if not torch.isfinite(terms.total):
            raise FloatingPointError(f"the loss is {float(terms.total)} at step {self.step + 1}; "
                                     f"try a lower learning rate")
        self.scaler.scale(terms.total / self.config.accumulate).backward()
        return LossTerms(*(term.detach() for term in terms))

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based)."""
        return self.config.lr * lr_factor(step, self.total_steps, self.warmup_steps, self.config.lr_schedule)

    def _optimizer_step(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    # ----------------------------------------------------------------------------------- validation

    def evaluate(self) -> Dict[str, float]:
        """Validation metrics of the current weights (higher is better for all).

        Returns:
            ``level_srcc`` and ``level_srcc_pooled`` (see :func:`level_correlations`) over the held-out crops, each
            degraded with one type at every level (the same crops, types and draws every time); with a MOS CSV
            also ``mos_srcc`` and ``mos_plcc`` of the scores of the whole images against the MOS.
        """
        self.model.eval()
        metrics = {}
        with torch.no_grad():
            if self.val_stream is not None:
                metrics.update(level_correlations(self._level_scores(), self.levels))
            scored = [(score, mos) for score, mos in ((self._score_file(path), mos) for path, mos in self.mos_rows)
                      if score is not None]
            if len(scored) >= 2:
                scores, mos = np.asarray(scored, dtype=np.float64).T
                metrics["mos_srcc"], metrics["mos_plcc"] = srcc(scores, mos), plcc(scores, mos)
        return metrics

    def validation_batches(self) -> List[Batch]:
        """The held-out crops (uint8, on the CPU), cut once: every validation scores the same ones."""
        if self._val_batches is None:
            loader = DataLoader(self.val_stream, batch_size=self.config.batch_size,
                                sampler=StreamSampler(0, self.config.val_crops), num_workers=self.workers,
                                collate_fn=collate_samples)
            self._val_batches = []
            for batch in loader:
                self._note_skipped(batch.skipped)
                self._val_batches.append(batch)
        return self._val_batches

    def _level_scores(self) -> torch.Tensor:
        """Scores of the held-out crops: ``crops x L``, levels mildest first."""
        scores = []
        for index, batch in enumerate(self.validation_batches()):
            degraded = self._degraded(batch.crops, batch.distortions,
                                      derive_seed(self.config.seed, VALIDATION_DEGRADATIONS, index))
            with self._autocast():
                scores.append(self.model(self._network_input(degraded)).float().cpu())
        return torch.cat(scores).view(-1, len(self.levels))

    def _score_file(self, path: Path) -> Optional[float]:
        """Score of a whole image; ``None`` (with a warning, once) when it cannot be read."""
        try:
            image = to_tensor(path, os.fspath(path))
        except ImageError as error:
            self._note_skipped([first_line(error)])
            return None
        with self._autocast():
            return float(self.model(self.model.normalize(image[None].to(self.device))))

    def _validate(self) -> None:
        samples = self.micro_batch * self.config.batch_size
        entry: Dict[str, float] = {"step": self.step, "epoch": samples / len(self.train_images)}
        if self.losses:
            entry["loss"] = sum(self.losses) / len(self.losses)
        entry.update(self.evaluate())
        self.history.append(entry)
        self.losses = []
        self.log("  ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                           for key, value in entry.items()))

    # ----------------------------------------------------------------------------------- state and export

    def export(self, path: Union[str, os.PathLike]) -> Path:
        """Writes the current weights as a QualiCLIP checkpoint in the official format.

        The ``visual.*`` tensors are the trained tower's, ``prompts_features`` the features of the prompts the run
        trained against; every other CLIP tensor is copied unchanged from the initial checkpoint (re-read now, so
        its text tower was never in memory).
        """
        initial = load_checkpoint(self.init_path)
        clip_state = dict(initial.clip_state)
        clip_state.update({f"visual.{key}": value for key, value in self.model.visual.state_dict().items()})
        path = save_checkpoint(path, clip_state, self.model.prompt_features)
        self.log(f"wrote {path}")
        return path

    def _relative(self, paths: Sequence[Path]) -> List[str]:
        return [os.path.relpath(path, self.config.images) for path in paths]

    def _data_signature(self) -> Dict[str, object]:
        """The settings that decide which samples step N sees and what they are trained against."""
        config = self.config
        names = "\n".join(self._relative(self.found))
        return {"seed": config.seed, "batch_size": config.batch_size, "accumulate": config.accumulate,
                "crop_size": config.crop_size, "levels": list(self.levels), "distortions": list(config.distortions),
                "val_fraction": config.val_fraction, "val_crops": config.val_crops,
                "images": hashlib.sha256(names.encode()).hexdigest(),
                "prompts": [list(pair) for pair in config.prompts] if config.prompts is not None else None}

    def _schedule(self) -> Dict[str, object]:
        return {"lr_schedule": self.config.lr_schedule, "lr": self.config.lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}

    def save_state(self, path: Union[str, os.PathLike]) -> Path:
        """Writes everything needed to resume at the current step (tensors and plain containers only).

        No random-number state is needed: every draw is keyed by the seed and the sample or micro-batch number, so
        the loader's position is the number of samples consumed, and the learning rate a function of the step.
        """
        path = Path(path)
        train_set = set(self.train_images)
        state = {
            "format": STATE_FORMAT,
            "step": self.step,
            "micro_batch": self.micro_batch,
            "sampler_position": self.micro_batch * self.config.batch_size,
            "schedule": self._schedule(),
            "visual": self.model.visual.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data": self._data_signature(),
            "excluded": sorted(set(self._relative(self.found)) - set(self._relative(train_set | set(self.val_images)))),
            "skipped": sorted(self.skipped.items()),
            "init": str(self.init_path),
            "history": self.history,
            "losses": self.losses,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(state, partial)
        os.replace(partial, path)
        return path

    @staticmethod
    def _read_state(path: Path) -> dict:
        if not Path(path).is_file():
            raise FileNotFoundError(f"resume state not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # Any unreadable file is reported the same way, on one line.
            raise ValueError(f"{path}: not a qualiclip-train state file ({first_line(error)})") from error
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: not a qualiclip-train state file (expected format {STATE_FORMAT})")
        return state

    def _restore(self, state: dict) -> None:
        ours = self._data_signature()
        changed = [f"{key} {state['data'].get(key)!r} -> {value!r}" for key, value in ours.items()
                   if state["data"].get(key) != value]
        if changed:
            raise ValueError(f"{self.config.resume}: cannot resume with different data settings: {'; '.join(changed)}")
        if state["sampler_position"] != state["micro_batch"] * self.config.batch_size:
            raise ValueError(f"{self.config.resume}: inconsistent state (sampler position {state['sampler_position']}, "
                             f"micro-batch {state['micro_batch']})")
        self.model.visual.load_state_dict(state["visual"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        # The moments carry over; the learning rate follows this run's schedule, the weight decay is this run's.
        for group in self.optimizer.param_groups:
            group.update(weight_decay=self.config.weight_decay)
        if state["scaler"] and self.scaler.is_enabled():  # only fp16 runs scale their loss
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.micro_batch = state["step"], state["micro_batch"]
        self.history, self.losses = list(state["history"]), list(state["losses"])
        if state["schedule"] != self._schedule():
            before = ", ".join(f"{key} {value}" for key, value in state["schedule"].items())
            now = ", ".join(f"{key} {value}" for key, value in self._schedule().items())
            self.log(f"note: the learning-rate schedule changes at step {self.step}: was {before}; now {now}")
        if self.skipped:
            self.log(f"note: {len(self.skipped)} image(s) skipped earlier in this run stay out: "
                     f"{', '.join(sorted(self.skipped)[:NAMED_IN_WARNING])}")


def fit(config: TrainConfig, log: Optional[Log] = None) -> List[Dict[str, float]]:
    """Fine-tunes QualiCLIP as configured and writes ``config.out``; returns the validation history.

    See :class:`Trainer` for the errors raised before training starts.
    """
    return Trainer(config, log).run()
