"""The network being trained: loaded through :mod:`qualiclip_infer.loading`, on the device, in the layout and
precision training uses, and what one crop batch goes through before it (degradation, normalisation)."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import torch

from ..checkpoint import load_checkpoint
from ..devices import check_precision
from ..loading import load_network
from ..model import QualiCLIP
from ..presets import OFFICIAL_PROMPT_PAIRS
from .data import degrade_levels

# Devices where the network trains in channels-last layout: on the CPU about 3x faster for a tiny CLIP at 224 px
# (measured), and what CUDA's convolution kernels prefer under mixed precision.
CHANNELS_LAST_DEVICES = ("cpu", "cuda")


def training_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``) means for training on ``device``: a precision name of
    :mod:`qualiclip_infer.devices` (``auto``: bf16 on CUDA where supported, else fp16; fp32 off CUDA).

    Raises:
        ValueError: Mixed precision asked for off CUDA, or bf16 on a GPU without it.
    """
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision!r}: mixed-precision training runs on CUDA only, not {device.type}")
    check_precision(precision, device)
    return precision


def training_network(init: Union[str, os.PathLike], prompts: Optional[Sequence[Tuple[str, str]]],
                     device: torch.device) -> QualiCLIP:
    """The network to fine-tune, from a local weights file: image tower trainable, on ``device``.

    A plain CLIP file (OpenAI's RN50, where the paper starts from) stores no prompt features: unless other pairs are
    given, the run trains against the official seven, encoded by its text tower.
    """
    if prompts is None and load_checkpoint(init).prompt_features is None:
        prompts = OFFICIAL_PROMPT_PAIRS
    model = load_network(init, prompts=prompts).model.requires_grad_(True)
    # Kept only so that checkpoints keep their keys: the position-free pool never reads it.
    model.visual.attnpool.positional_embedding.requires_grad_(False)
    model = model.to(device)
    if device.type in CHANNELS_LAST_DEVICES:
        model = model.to(memory_format=torch.channels_last)
    return model


def train_mode(model: QualiCLIP, train_bn: bool) -> None:
    """Training mode, with BatchNorm running statistics frozen (layers in eval mode) unless ``train_bn``."""
    model.train()
    if not train_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()


def degraded_on(device: torch.device, crops: torch.Tensor, distortions: torch.Tensor, names: Sequence[str],
                levels: Sequence[int], seed: int) -> torch.Tensor:
    """Moves uint8 crops to ``device`` and degrades them: ``B x C x L x 3 x H x W`` in [0, 1]."""
    crops = crops.to(device, non_blocking=True).float().div_(255)
    with torch.no_grad():
        return degrade_levels(crops, distortions, names, levels, seed)


def network_input(model: QualiCLIP, degraded: torch.Tensor) -> torch.Tensor:
    """Degraded crops ``B x C x L x 3 x H x W`` as one normalised batch, in the layout the network trains in."""
    images = model.normalize(degraded.flatten(0, 2))
    if images.device.type in CHANNELS_LAST_DEVICES:
        images = images.contiguous(memory_format=torch.channels_last)
    return images
