"""Fine-tuning QualiCLIP's image tower: the training loop, composing the run's images (:mod:`.dataset`), the network
(:mod:`.network`), validation (:mod:`.validation`) and its files (:mod:`.state`).

The text tower is never built: the prompt features are constants read from the initial checkpoint (or encoded once
for custom prompts), and the exported checkpoint copies the text tower's tensors from that file.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch
from torch.utils.data import DataLoader

from ..constants import available_cpus
from ..devices import autocast, resolve_device
from ..hub import resolve_weights
from ..images import ImageError
from ..messages import first_line
from .config import PRECISIONS, TrainConfig, spread_levels, state_path  # noqa: F401 (PRECISIONS, state_path: API)
from .data import TRAIN_DEGRADATIONS, Batch, StreamSampler, collate_samples, derive_seed
from .dataset import RunImages
from .inputs import NAMED_IN_WARNING, list_images
from .network import degraded_on, network_input, train_mode, training_network, training_precision
from .ranking import LossTerms, prompt_similarities, qualiclip_loss
from .schedule import default_warmup_steps, lr_factor
from .state import check_resumable, data_signature, export_checkpoint, read_state, write_state
from .validation import Validator, level_correlations  # noqa: F401 (level_correlations: imported from here)

Log = Callable[[str], None]


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


class Trainer:
    """Fine-tunes QualiCLIP's image tower on synthetically degraded crops of pristine images.

    Building a trainer does all the checks and loading (images, weights, device, resume state), and writes the
    resumable state once (when ``checkpoint_every`` is set), so that a bad setting or an output that cannot be
    saved fails before any training. :meth:`run` then trains, validates, and exports.

    Images that cannot be used are left out with one warning (see :mod:`.inputs`); building fails only when too few
    usable ones remain. One that fails later (e.g. deleted or truncated during the run) is skipped with a warning
    naming it, and the run goes on.

    Args:
        config: The run's settings.
        log: Receives one line per validation, per warning and on export; ``None`` is silent.
        on_step: Called with the trainer after every optimiser step (after any validation and state save).

    Raises:
        ValueError: A setting that cannot work (too few usable images, unknown device, mismatched resume state, ...).
        FileNotFoundError: The image folder, MOS file, resume state or weights do not exist.
        CheckpointError: The initial weights are not a QualiCLIP checkpoint.
        OSError: The resumable state cannot be written next to ``config.out``.
    """

    def __init__(self, config: TrainConfig, log: Optional[Log] = None,
                 on_step: Optional[Callable[["Trainer"], None]] = None):
        self.config = config
        self.log = log or (lambda line: None)
        self.on_step = on_step
        self.device = resolve_device(config.device)
        self.precision = training_precision(config.precision, self.device)
        self.levels = spread_levels(config.levels)
        self.workers = min(config.workers, available_cpus())
        resume = read_state(config.resume) if config.resume is not None else None
        found = list_images(config.images, hidden=config.hidden)
        if not found:
            raise ValueError(f"{config.images}: no image files found")
        # Before the images are checked (up to a minute), but after the cheap folder listing: a download may be slow.
        self.init_path = resolve_weights(config.init if config.init is not None or resume is None else resume["init"])
        self.data = RunImages(config, found, self.workers, self.log, resume)
        self.validator = Validator(config, self.data, self.levels, self.device, self.precision, self.workers,
                                   self.log)
        self.total_steps = config.steps or math.ceil(
            config.epochs * len(self.train_images) / (config.batch_size * config.accumulate))
        self.warmup_steps = (config.warmup_steps if config.warmup_steps is not None
                             else default_warmup_steps(self.total_steps))
        self.val_every_steps = self._validation_interval()

        self.model = training_network(self.init_path, config.prompts, self.device)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                           lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.micro_batch = 0
        self.history: List[Dict[str, float]] = []
        self.losses: List[float] = []  # total loss of each step since the last validation
        if resume is not None:
            self._restore(resume)
        if config.checkpoint_every:  # before any step: a run that could not save its state never starts
            self.save_state(state_path(config.out))

    # ----------------------------------------------------------------------------------- the run's images

    @property
    def train_images(self) -> List[Path]:
        """The training split."""
        return self.data.train_images

    @property
    def val_images(self) -> List[Path]:
        """The held-out split."""
        return self.data.val_images

    @property
    def skipped(self) -> Dict[str, str]:
        """Images that failed during the run (by path relative to the folder) and why."""
        return self.data.skipped

    @property
    def usable_train_images(self) -> int:
        """Training images not known to be unusable."""
        return self.data.usable_train_images

    @property
    def usable_val_images(self) -> int:
        """Held-out images not known to be unusable (0 without validation crops)."""
        return self.data.usable_val_images

    @property
    def mos_rows(self) -> List[tuple]:
        """The ``(image, MOS)`` rows of ``config.val_csv``."""
        return self.validator.mos_rows

    def _validation_interval(self) -> int:
        config = self.config
        if config.val_every_steps is not None:
            return config.val_every_steps
        if config.val_every is not None:  # validation by epochs was asked for instead
            return 0
        return self.validator.default_interval()

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
                terms = self._train_step(batches)
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

    def _train_step(self, batches) -> LossTerms:
        """One optimiser step over ``accumulate`` micro-batches; returns their mean loss terms."""
        pending = []
        for _ in range(self.config.accumulate):
            pending.append(self._forward_backward(self._next_batch(batches)))
            self.micro_batch += 1
        self._optimizer_step()
        terms = LossTerms(*(torch.stack(values).mean() for values in zip(*pending)))
        self.losses.append(float(terms.total))
        return terms

    def _train_loader(self) -> DataLoader:
        """One loader for the rest of the run: every micro-batch from the current one to the last, across epochs."""
        batch = self.config.batch_size
        sampler = StreamSampler(self.micro_batch * batch, self.total_steps * self.config.accumulate * batch)
        return DataLoader(self.data.train_stream, batch_size=batch, sampler=sampler, num_workers=self.workers,
                          persistent_workers=self.workers > 0, collate_fn=collate_samples,
                          pin_memory=self.device.type == "cuda")

    def _next_batch(self, batches) -> Batch:
        try:
            batch = next(batches)
        except ImageError as error:  # every training image has failed: nothing left to train on
            raise ImageError(worker_message(error)) from error
        self.data.note_skipped(batch.skipped)
        return batch

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

    def _forward_backward(self, batch: Batch) -> LossTerms:
        """Loss of one micro-batch, its gradient accumulated; returns the (detached) terms."""
        config = self.config
        train_mode(self.model, config.train_bn)
        degraded = degraded_on(self.device, batch.crops, batch.distortions, config.distortions, self.levels,
                               derive_seed(config.seed, TRAIN_DEGRADATIONS, self.micro_batch))
        with autocast(self.precision, self.device):
            features = self.model.encode_image(network_input(self.model, degraded))
        s_pos, s_neg = prompt_similarities(features.view(*degraded.shape[:3], -1), self.model.prompt_features)
        terms = qualiclip_loss(s_pos, s_neg, config.loss)
        if not torch.isfinite(terms.total):
            raise FloatingPointError(f"the loss is {float(terms.total)} at step {self.step + 1}; "
                                     f"try a lower learning rate")
        self.scaler.scale(terms.total / config.accumulate).backward()
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
            ``level_srcc`` and ``level_srcc_pooled`` (see :func:`.validation.level_correlations`) over the held-out
            crops, each degraded with one type at every level (the same crops, types and draws every time); with a
            MOS file also ``mos_srcc`` and ``mos_plcc`` of the scores of the whole images against the MOS.
        """
        return self.validator.evaluate(self.model)

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
        """Writes the current weights as a QualiCLIP checkpoint in the official format (see
        :func:`.state.export_checkpoint`)."""
        path = export_checkpoint(path, self.init_path, self.model)
        self.log(f"wrote {path}")
        return path

    def _schedule(self) -> Dict[str, object]:
        return {"lr_schedule": self.config.lr_schedule, "lr": self.config.lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}

    def save_state(self, path: Union[str, os.PathLike]) -> Path:
        """Writes everything needed to resume at the current step (see :mod:`.state`)."""
        return write_state(path, {
            "step": self.step,
            "micro_batch": self.micro_batch,
            "sampler_position": self.micro_batch * self.config.batch_size,
            "schedule": self._schedule(),
            "visual": self.model.visual.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data": data_signature(self.config, self.data, self.levels),
            "excluded": self.data.excluded(),
            "skipped": sorted(self.skipped.items()),
            "init": str(self.init_path),
            "history": self.history,
            "losses": self.losses,
        })

    def _restore(self, state: dict) -> None:
        check_resumable(state, data_signature(self.config, self.data, self.levels), self.config)
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
