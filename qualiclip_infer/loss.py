"""QualiCLIP as a differentiable, no-reference training loss: ``1 - score``, lower is better."""

from __future__ import annotations

import os
from typing import Literal, Optional, Sequence, Union

import torch
from torch import nn

from .constants import MIN_IMAGE_SIDE
from .presets import DEFAULT_MODEL
from .hub import WeightsSpec
from .loading import load_model

Reduction = Literal["mean", "sum", "none"]


class QualiCLIPLoss(nn.Module):
    """``1 - QualiCLIP score`` of images, differentiable with respect to the images.

    The network is frozen: its weights never receive gradients and its BatchNorms stay in eval mode (running
    statistics untouched) even when a model holding this loss is put in train mode. Gradients flow from the score
    through the network and the CLIP normalisation back to the pixels. Under autocast the network runs in the reduced
    precision and the score head in float32; move the loss to the images' device with ``.to(device)``.

    Example::

        loss_fn = QualiCLIPLoss().to("cuda")
        loss = loss_fn(restored)                # restored: N x 3 x H x W in [0, 1], H, W >= 32
        (pixel_loss + 0.1 * loss).backward()

    Args:
        weights: ``None`` for the official ``QualiCLIP.pth`` (downloaded once from the Hugging Face Hub), a local
            checkpoint, or ``hf-hub:ORG/REPO/FILE[@REVISION]``; see :class:`~qualiclip_infer.QualityScorer`.
        reduction: ``mean`` (default) or ``sum`` over the batch, or ``none`` for one loss per image.
        model: A preset (``qualiclip``, the official model, by default; see ``qualiclip_infer.presets.PRESETS``).
        prompt_weights: Learned-prompt file of a ``qualiclip+*`` or ``clipiqa+`` model (default: its published one).
        prompts: ``None`` for the model's prompt pairs, or ``(positive, negative)`` strings.
        logit_scale: Scale of the cosine similarities; ``None`` for the model's own (100 for ``qualiclip``).
        revision: Hub branch, tag or commit to pin.
        prompt_revision: The same for ``prompt_weights``.
        cache_dir: Hugging Face cache folder.
        local_files_only: Never touch the network.

    Raises:
        WeightsNotFoundError: The weights are not available.
        CheckpointError: The file is not a QualiCLIP checkpoint in the official format.
        ValueError: An unknown reduction.
    """

    def __init__(
        self,
        weights: WeightsSpec = None,
        *,
        reduction: Reduction = "mean",
        model: str = DEFAULT_MODEL,
        prompt_weights: WeightsSpec = None,
        prompts: Optional[Sequence[Sequence[str]]] = None,
        logit_scale: Optional[float] = None,
        revision: Optional[str] = None,
        prompt_revision: Optional[str] = None,
        cache_dir: Union[str, os.PathLike, None] = None,
        local_files_only: bool = False,
    ):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction
        # BatchNorms are not folded into convolutions here, unlike in QualityScorer: the loss's network stays the
        # checkpoint's, so that double precision (gradcheck) and any device get exactly its math.
        self.model = load_model(weights, model=model, prompt_weights=prompt_weights, prompts=prompts,
                                logit_scale=logit_scale, revision=revision, prompt_revision=prompt_revision,
                                cache_dir=cache_dir, local_files_only=local_files_only)
        self.train(False)

    def train(self, mode: bool = True) -> "QualiCLIPLoss":
        """Sets this module's flag; the network itself always stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The loss of ``N x 3 x H x W`` float images with values in [0, 1] (H, W >= 32).

        Returns:
            A scalar for ``mean``/``sum``, else ``(N,)`` losses in [0, 1].

        Raises:
            ValueError: Not a float ``N x 3 x H x W`` tensor, or a side under 32 pixels.
        """
        if not torch.is_tensor(images) or not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"QualiCLIPLoss expects a float N x 3 x H x W tensor in [0, 1], got {shape}")
        if min(images.shape[-2:]) < MIN_IMAGE_SIDE:
            raise ValueError(f"QualiCLIPLoss needs images of at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, "
                             f"got {images.shape[-1]}x{images.shape[-2]}")
        losses = 1 - self.model(self.model.normalize(images))
        if self.reduction == "mean":
            return losses.mean()
        if self.reduction == "sum":
            return losses.sum()
        return losses
