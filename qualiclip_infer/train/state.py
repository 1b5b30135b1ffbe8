"""A run's files: the resumable state (read, checked against the run resuming it, written atomically) and the
exported checkpoint.

No random-number state is saved: every draw is keyed by the seed and the sample or micro-batch number, so the
loader's position is the number of samples consumed, and the learning rate a function of the step.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Sequence, Union

import torch

from ..atomic import atomic_write
from ..checkpoint import load_checkpoint, save_checkpoint
from ..messages import first_line
from ..model import QualiCLIP
from .config import TrainConfig
from .dataset import RunImages

STATE_FORMAT = "qualiclip-train-state/2"


def read_state(path: Union[str, os.PathLike]) -> dict:
    """Reads a state file written by :func:`write_state` (tensors and plain containers only, no code).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a qualiclip-train state file.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"resume state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # Any unreadable file is reported the same way, on one line.
        raise ValueError(f"{path}: not a qualiclip-train state file ({first_line(error)})") from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a qualiclip-train state file (expected format {STATE_FORMAT})")
    return state


def write_state(path: Union[str, os.PathLike], state: dict) -> Path:
    """Writes a state dict atomically (a reader, or a resume after a crash, never sees half a file).

    Raises:
        OSError: The folder cannot be created or written, or the disk is full.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        torch.save({"format": STATE_FORMAT, **state}, file)
    return path


def data_signature(config: TrainConfig, images: RunImages, levels: Sequence[int]) -> Dict[str, object]:
    """The settings that decide which samples step N sees and what they are trained against."""
    names = "\n".join(images.relative(images.found))
    return {"seed": config.seed, "batch_size": config.batch_size, "accumulate": config.accumulate,
            "crop_size": config.crop_size, "levels": list(levels), "distortions": list(config.distortions),
            "val_fraction": config.val_fraction, "val_crops": config.val_crops,
            "images": hashlib.sha256(names.encode()).hexdigest(),
            "prompts": [list(pair) for pair in config.prompts] if config.prompts is not None else None}


def check_resumable(state: dict, signature: Dict[str, object], config: TrainConfig) -> None:
    """Raises :class:`ValueError` unless a run with ``signature`` can continue from ``state``."""
    changed = [f"{key} {state['data'].get(key)!r} -> {value!r}" for key, value in signature.items()
               if state["data"].get(key) != value]
    if changed:
        raise ValueError(f"{config.resume}: cannot resume with different data settings: {'; '.join(changed)}")
    if state["sampler_position"] != state["micro_batch"] * config.batch_size:
        raise ValueError(f"{config.resume}: inconsistent state (sampler position {state['sampler_position']}, "
                         f"micro-batch {state['micro_batch']})")


def export_checkpoint(path: Union[str, os.PathLike], init: Union[str, os.PathLike], model: QualiCLIP) -> Path:
    """Writes ``model`` as a QualiCLIP checkpoint in the official format (atomically).

    The ``visual.*`` tensors are the trained tower's, ``prompts_features`` the features of the prompts the run
    trained against; every other CLIP tensor is copied unchanged from the initial checkpoint ``init`` (re-read now,
    so its text tower was never in memory).
    """
    clip_state = dict(load_checkpoint(init).clip_state)
    clip_state.update({f"visual.{key}": value for key, value in model.visual.state_dict().items()})
    return save_checkpoint(path, clip_state, model.prompt_features)
