"""The batch core: a loaded network on its device and precision, with the batch caps and the per-image pixel limit.

The streaming engine and quality maps score through a :class:`BatchRunner`; :class:`~qualiclip_infer.scorer.
QualityScorer` is one (it adds loading and the input handling of :meth:`~qualiclip_infer.scorer.QualityScorer.score`).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch

from .constants import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_PIXELS, DEFAULT_MAX_BATCH_PIXELS_CPU, DEFAULT_MAX_IMAGE_PIXELS
from .devices import autocast, check_precision
from .model import QualiCLIP


def network_memory_format(device: torch.device) -> torch.memory_format:
    """The memory format the network runs in on ``device``.

    oneDNN and cuDNN convolutions run faster on NHWC tensors (about 1.3x for RN50 on a CPU), with the same results.
    """
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def check_batch_options(batch_size: int, max_batch_pixels: Optional[int], max_image_pixels: Optional[int]) -> None:
    """Raises a one-line :class:`ValueError` for a batch size or pixel cap that is not a positive number."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    for option, value in (("max_batch_pixels", max_batch_pixels), ("max_image_pixels", max_image_pixels)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 1):
            raise ValueError(f"{option} must be positive or None, got {value!r}")


class BatchRunner:
    """Runs batches of equally sized images through a network.

    Args:
        model: The network (moved to ``device`` in ``memory_format``; its BatchNorms may already be folded).
        device: Where the network runs.
        precision: ``fp32``, or ``fp16``/``bf16`` autocast where the device supports it.
        batch_size: Most images per forward pass.
        max_batch_pixels: Cap on pixels in one batch beyond its first image; ``None``: 0.5 Mpx on the CPU, 16 Mpx
            elsewhere.
        max_image_pixels: Images with more pixels are refused; ``None`` disables the limit.

    Attributes:
        model, device, precision, batch_size, max_batch_pixels, max_image_pixels: As given (caps resolved).
    """

    def __init__(self, model: QualiCLIP, device: torch.device, *, precision: str = "fp32",
                 batch_size: int = DEFAULT_BATCH_SIZE, max_batch_pixels: Optional[int] = None,
                 max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS):
        check_precision(precision, device)
        check_batch_options(batch_size, max_batch_pixels, max_image_pixels)
        self.device = device
        self.precision = precision
        self.batch_size = int(batch_size)
        if max_batch_pixels is None:
            max_batch_pixels = DEFAULT_MAX_BATCH_PIXELS_CPU if device.type == "cpu" else DEFAULT_MAX_BATCH_PIXELS
        self.max_batch_pixels = int(max_batch_pixels)
        self.max_image_pixels = None if max_image_pixels is None else int(max_image_pixels)
        self._memory_format = network_memory_format(device)
        self.model = model.to(device, memory_format=self._memory_format)

    def score_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Scores one batch of equally sized images, with no checks (for your own data pipelines).

        Args:
            images: Float tensor ``N x 3 x H x W`` with values in [0, 1], on any device (H, W >= 32).

        Returns:
            ``(N,)`` float32 scores on the CPU.
        """
        with torch.inference_mode(), autocast(self.precision, self.device):
            return self.model(self._network_input(images)).float().cpu()

    def scores_and_token_scores_tensor(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Scores one batch of equally sized images and gives their tokens quality maps, from one forward pass.

        Args:
            images: Float tensor ``N x 3 x H x W`` with values in [0, 1], on any device (H, W >= 32).

        Returns:
            ``(N,)`` float32 scores and ``N x h x w`` float32 :meth:`QualiCLIP.token_scores`, on the CPU.
        """
        with torch.inference_mode(), autocast(self.precision, self.device):
            scores, tokens = self.model.scores_and_token_scores(self._network_input(images))
            return scores.float().cpu(), tokens.float().cpu()

    def _network_input(self, images: torch.Tensor) -> torch.Tensor:
        batch = self.model.normalize(images.to(self.device, torch.float32, non_blocking=True))
        return batch.contiguous(memory_format=self._memory_format)
