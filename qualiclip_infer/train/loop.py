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

import torch
from torch.utils.data import DataLoader

from ..images import to_tensor
from ..model import MIN_IMAGE_SIDE, QualiCLIP
from ..prompts import as_prompt_pairs, prompt_features
from ..scorer import AUTOCAST_DTYPES, resolve_device
from ..weights import WeightsSpec, load_checkpoint, resolve_weights, save_checkpoint
from .data import (CROPS_PER_SAMPLE, TRAIN_DEGRADATIONS, TRAIN_SAMPLES, VALIDATION_DEGRADATIONS, VALIDATION_SAMPLES,
                   CropStream, degrade_levels, derive_seed, list_images, read_mos_csv, split_images, spread_levels)
from .degradations import DISTORTIONS
from .losses import LossConfig, LossTerms, prompt_similarities, qualiclip_loss

STATE_FORMAT = "qualiclip-train-state/1"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------- rank statistics

def rankdata(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties sharing their average rank (as ``scipy.stats.rankdata``), in float64."""
    _, group, counts = torch.unique(values.flatten(), return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).double()
    return (last_rank - (counts.double() - 1) / 2)[group]


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson's linear correlation of two 1-D tensors (PLCC, without a fitted mapping); NaN if one is constant."""
    x, y = x.flatten().double(), y.flatten().double()
    if x.numel() != y.numel() or x.numel() < 2:
        raise ValueError(f"need two equally long series of at least 2 values, got {x.numel()} and {y.numel()}")
    x, y = x - x.mean(), y - y.mean()
    denominator = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / denominator) if denominator > 0 else math.nan


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation (SRCC) of two 1-D tensors, ties ranked by their average."""
    return pearson(rankdata(x), rankdata(y))


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
    minus_levels = -torch.tensor(levels, dtype=torch.float64)
    per_crop = [spearman(row, minus_levels) for row in scores]
    return {
        "level_srcc": sum(0.0 if math.isnan(value) else value for value in per_crop) / len(per_crop),
        "level_srcc_pooled": spearman(scores.flatten(), minus_levels.repeat(scores.shape[0])),
    }


# ------------------------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class TrainConfig:
    """Settings of a fine-tuning run. Values not given in the paper are our defaults (marked *ours*).

    Attributes:
        images: Folder of pristine images, searched recursively.
        out: Where the fine-tuned checkpoint (official format) is written.
        init: Initial weights, as for ``QualityScorer``: ``None`` for the published QualiCLIP checkpoint.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``auto`` (bf16 autocast on CUDA where supported, else fp16; fp32 elsewhere), ``fp32``, ``bf16``
            or ``fp16``; mixed precision on CUDA only.
        epochs: Passes over the training images (*ours*: 5); ignored when ``steps`` is given.
        steps: Optimiser steps to train for, overriding ``epochs``.
        batch_size: Images (each giving 2 crops x L levels) per micro-batch (*ours*: 16).
        accumulate: Micro-batches per optimiser step.
        lr: AdamW learning rate (*ours*: 1e-5, a fine-tuning rate; the pre-trained features move little).
        weight_decay: AdamW weight decay (*ours*: 1e-4; small, to stay near the pre-trained weights).
        seed: Seed of the split, crops, distortion choices and degradations.
        crop_size: Side of the square crops (*ours*: 224, CLIP's training size); smaller images are upscaled.
        levels: Degradation levels per crop, spread over 1..5 (*ours*: 5).
        distortions: Distortion types drawn from, one per sample, uniformly (default: all 24).
        loss: Margins and weights of the three losses (*ours*).
        train_bn: Update BatchNorm running statistics; by default they stay frozen (layers in eval mode) while their
            affine parameters train, since the degraded batches are far from the statistics CLIP was trained on.
        checkpoint_every: Write the resumable state every N optimiser steps and at the end (0: never).
        resume: A state file to continue from (written by ``checkpoint_every``).
        val_fraction: Share of the images held out for validation (*ours*: 0.05).
        val_crops: Held-out crops, each degraded at every level, for the level SRCC (*ours*: 240).
        val_every: Validate every N epochs (0: only before and after training).
        val_csv: A ``path,mos`` CSV of human scores to report SRCC and PLCC against.
        workers: DataLoader processes decoding and cropping images (0: in the main process).
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
    val_every: int = 1
    val_csv: Optional[Path] = None
    workers: int = 4
    prompts: Optional[Tuple[Tuple[str, str], ...]] = None
    progress: Optional[bool] = None

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accumulate": self.accumulate}
        if self.steps is not None:
            positive["steps"] = self.steps
        non_negative = {"seed": self.seed, "checkpoint_every": self.checkpoint_every, "val_crops": self.val_crops,
                        "val_every": self.val_every, "workers": self.workers}
        for name, value in {**positive, **non_negative}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name in positive else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name in positive else 0}, got {value!r}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if self.crop_size < MIN_IMAGE_SIDE:
            raise ValueError(f"crop_size must be at least {MIN_IMAGE_SIDE}, got {self.crop_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
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


# ------------------------------------------------------------------------------------------- the trainer

class Trainer:
    """Fine-tunes QualiCLIP's image tower on synthetically degraded crops of pristine images.

    Building a trainer does all the checks and loading (images, weights, device, resume state), so that a bad
    setting fails before any training. :meth:`run` then trains, validates, and exports.

    Args:
        config: The run's settings.
        log: Receives one line per validation and on export; ``None`` is silent.

    Raises:
        ValueError: A setting that cannot work (no images, unknown device, mismatched resume state, ...).
        FileNotFoundError: The image folder, MOS CSV, resume state or weights do not exist.
        CheckpointError: The initial weights are not a QualiCLIP checkpoint.
    """

    def __init__(self, config: TrainConfig, log: Optional[Log] = None):
        self.config = config
        self.log = log or (lambda line: None)
        self.device = resolve_device(config.device)
        self.autocast_dtype = resolve_precision(config.precision, self.device)
        self.levels = spread_levels(config.levels)

        images = list_images(config.images)
        if not images:
            raise ValueError(f"{config.images}: no image files found")
        self.train_images, self.val_images = split_images(images, config.val_fraction, config.seed)
        self.train_stream = CropStream(self.train_images, config.crop_size, CROPS_PER_SAMPLE,
                                       len(config.distortions), config.seed, TRAIN_SAMPLES)
        self.val_stream = (CropStream(self.val_images, config.crop_size, 1, len(config.distortions), config.seed,
                                      VALIDATION_SAMPLES) if self.val_images and config.val_crops else None)
        self.mos_rows = read_mos_csv(config.val_csv) if config.val_csv is not None else []
        self.batches_per_epoch = math.ceil(len(self.train_images) / config.batch_size)
        self.total_steps = config.steps or math.ceil(config.epochs * self.batches_per_epoch / config.accumulate)

        resume = self._read_state(config.resume) if config.resume is not None else None
        init = config.init if config.init is not None or resume is None else resume["init"]
        self.init_path = resolve_weights(init)
        self.model = self._build_model()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                           lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.step = 0
        self.micro_batch = 0
        self.history: List[Dict[str, float]] = []
        if resume is not None:
            self._restore(resume)

    def _build_model(self) -> QualiCLIP:
        checkpoint = load_checkpoint(self.init_path)
        tower = checkpoint.architecture.build_image_tower()
        tower.load_state_dict(checkpoint.image_tower_state(), strict=True)
        # Kept only so that checkpoints keep their keys: the position-free pool never reads it.
        tower.attnpool.positional_embedding.requires_grad_(False)
        features = prompt_features(checkpoint, self.config.prompts)
        return QualiCLIP(tower, features).to(self.device)

    # ----------------------------------------------------------------------------------- training

    def run(self) -> List[Dict[str, float]]:
        """Trains to the configured number of steps, validating before, per ``val_every`` epochs and at the end.

        Returns:
            The validation history: one dict per validation with ``step``, ``epoch`` (fractional), the mean
            training ``loss`` since the previous validation (absent for the first), and the metrics of
            :meth:`evaluate`.
        """
        from tqdm.auto import tqdm

        config = self.config
        progress = sys.stderr.isatty() if config.progress is None else config.progress
        if not self.history:
            self._validate(losses=[])
        losses: List[float] = []
        pending: List[LossTerms] = []  # the micro-batches of the step being accumulated
        with tqdm(total=self.total_steps, initial=self.step, disable=not progress, file=sys.stderr,
                  unit="step", dynamic_ncols=True) as bar:
            while self.step < self.total_steps:
                epoch, first_batch = divmod(self.micro_batch, self.batches_per_epoch)
                for batch in self._train_loader(epoch, first_batch):
                    pending.append(self._forward_backward(batch))
                    self.micro_batch += 1
                    if self.micro_batch % config.accumulate:
                        continue
                    self._optimizer_step()
                    terms = LossTerms(*(torch.stack(values).mean() for values in zip(*pending)))
                    pending = []
                    losses.append(float(terms.total))
                    bar.update()
                    bar.set_postfix(loss=f"{terms.total:.4f}", pos=f"{terms.pos:.4f}", neg=f"{terms.neg:.4f}",
                                    cons=f"{terms.cons:.4f}", refresh=False)
                    if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                        self.save_state(state_path(config.out))
                    if self.step >= self.total_steps:
                        break
                else:
                    if config.val_every and (epoch + 1) % config.val_every == 0:
                        self._validate(losses)
                        losses = []
        if self.history[-1]["step"] != self.step:
            self._validate(losses)
        self.export(config.out)
        if config.checkpoint_every:  # again, so that the state holds the final validation too
            self.save_state(state_path(config.out))
        return self.history

    def _train_loader(self, epoch: int, first_batch: int) -> DataLoader:
        """The rest of epoch ``epoch`` from micro-batch ``first_batch`` on."""
        size = len(self.train_images)
        samples = range(epoch * size + first_batch * self.config.batch_size, (epoch + 1) * size)
        return self._loader(self.train_stream, samples)

    def _loader(self, stream: CropStream, samples: range) -> DataLoader:
        return DataLoader(stream, batch_size=self.config.batch_size, sampler=samples,
                          num_workers=self.config.workers, pin_memory=self.device.type == "cuda")

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

    def _degraded(self, batch: Tuple[torch.Tensor, torch.Tensor], seed: int) -> torch.Tensor:
        """Moves a batch of uint8 crops to the device and degrades it: ``B x C x L x 3 x H x W`` in [0, 1]."""
        crops, distortions = batch
        crops = crops.to(self.device, non_blocking=True).float().div_(255)
        with torch.no_grad():
            return degrade_levels(crops, distortions, self.config.distortions, self.levels, seed)

    def _forward_backward(self, batch: Tuple[torch.Tensor, torch.Tensor]) -> LossTerms:
        """Loss of one micro-batch, its gradient accumulated; returns the (detached) terms."""
        self._train_mode()
        degraded = self._degraded(batch, derive_seed(self.config.seed, TRAIN_DEGRADATIONS, self.micro_batch))
        with self._autocast():
            features = self.model.encode_image(self.model.normalize(degraded.flatten(0, 2)))
        s_pos, s_neg = prompt_similarities(features.view(*degraded.shape[:3], -1), self.model.prompt_features)
        terms = qualiclip_loss(s_pos, s_neg, self.config.loss)
        if not torch.isfinite(terms.total):
            raise FloatingPointError(f"the loss is {float(terms.total)} at step {self.step + 1}; "
                                     f"try a lower learning rate")
        self.scaler.scale(terms.total / self.config.accumulate).backward()
        return LossTerms(*(term.detach() for term in terms))

    def _optimizer_step(self) -> None:
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
            if self.mos_rows:
                scores = torch.tensor([self._score(to_tensor(path)) for path, _ in self.mos_rows])
                mos = torch.tensor([mos for _, mos in self.mos_rows])
                metrics["mos_srcc"], metrics["mos_plcc"] = spearman(scores, mos), pearson(scores, mos)
        return metrics

    def _level_scores(self) -> torch.Tensor:
        """Scores of the held-out crops: ``crops x L``, levels mildest first."""
        scores = []
        loader = self._loader(self.val_stream, range(self.config.val_crops))
        for index, batch in enumerate(loader):
            degraded = self._degraded(batch, derive_seed(self.config.seed, VALIDATION_DEGRADATIONS, index))
            with self._autocast():
                scores.append(self.model(self.model.normalize(degraded.flatten(0, 2))).float().cpu())
        return torch.cat(scores).view(-1, len(self.levels))

    def _score(self, image: torch.Tensor) -> float:
        with self._autocast():
            return float(self.model(self.model.normalize(image[None].to(self.device))))

    def _validate(self, losses: Sequence[float]) -> None:
        entry: Dict[str, float] = {"step": self.step, "epoch": self.micro_batch / self.batches_per_epoch}
        if losses:
            entry["loss"] = sum(losses) / len(losses)
        entry.update(self.evaluate())
        self.history.append(entry)
        self.log("  ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                           for key, value in entry.items()))

    # ----------------------------------------------------------------------------------- state and export

    def export(self, path: Union[str, os.PathLike]) -> Path:
        """Writes the current weights as a QualiCLIP checkpoint in the official format.

        The ``visual.*`` tensors are the trained tower's; every other CLIP tensor and the stored prompt features
        are copied unchanged from the initial checkpoint (re-read now, so its text tower was never in memory).
        """
        initial = load_checkpoint(self.init_path)
        clip_state = dict(initial.clip_state)
        clip_state.update({f"visual.{key}": value for key, value in self.model.visual.state_dict().items()})
        # A plain CLIP file (OpenAI's RN50, as the paper starts from) stores no prompt features: keep the trained ones.
        stored = initial.prompt_features if initial.prompt_features is not None else self.model.prompt_features
        path = save_checkpoint(path, clip_state, stored)
        self.log(f"wrote {path}")
        return path

    def _data_signature(self) -> Dict[str, object]:
        """The settings that decide which samples step N sees; a resumed run must share them."""
        config = self.config
        names = "\n".join(os.path.relpath(path, config.images) for path in self.train_images)
        return {"seed": config.seed, "batch_size": config.batch_size, "accumulate": config.accumulate,
                "crop_size": config.crop_size, "levels": list(self.levels), "distortions": list(config.distortions),
                "train_images": hashlib.sha256(names.encode()).hexdigest()}

    def save_state(self, path: Union[str, os.PathLike]) -> Path:
        """Writes everything needed to resume at the current step (tensors and plain containers only).

        No random-number state is needed: every draw is keyed by the seed and the sample or micro-batch number.
        """
        path = Path(path)
        state = {
            "format": STATE_FORMAT,
            "step": self.step,
            "micro_batch": self.micro_batch,
            "visual": self.model.visual.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data": self._data_signature(),
            "init": str(self.init_path),
            "history": self.history,
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
            raise ValueError(f"{path}: not a qualiclip-train state file ({str(error).splitlines()[0]})") from error
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: not a qualiclip-train state file (expected format {STATE_FORMAT})")
        return state

    def _restore(self, state: dict) -> None:
        ours = self._data_signature()
        changed = [f"{key} {state['data'].get(key)!r} -> {value!r}" for key, value in ours.items()
                   if state["data"].get(key) != value]
        if changed:
            raise ValueError(f"{self.config.resume}: cannot resume with different data settings: {'; '.join(changed)}")
        self.model.visual.load_state_dict(state["visual"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        # The moments carry over; the learning rate and weight decay are this run's.
        for group in self.optimizer.param_groups:
            group.update(lr=self.config.lr, weight_decay=self.config.weight_decay)
        if state["scaler"] and self.scaler.is_enabled():  # only fp16 runs scale their loss
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.micro_batch, self.history = state["step"], state["micro_batch"], list(state["history"])


def fit(config: TrainConfig, log: Optional[Log] = None) -> List[Dict[str, float]]:
    """Fine-tunes QualiCLIP as configured and writes ``config.out``; returns the validation history.

    See :class:`Trainer` for the errors raised before training starts.
    """
    return Trainer(config, log).run()
