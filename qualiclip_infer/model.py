"""The QualiCLIP network: CLIP's ModifiedResNet trunk, a position-free attention pool and the antonym score head.

The official QualiCLIP model feeds whole images at their native resolution, so its attention pool drops CLIP's
fixed 7x7 positional table. Only the pooled (mean) token is ever read, so the pool here computes attention for
that single query and folds the key and value projections into it: the result equals full multi-head attention
over all tokens (to float rounding) while time and memory grow linearly with the number of pixels.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from open_clip import CLIP
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OFFICIAL_LOGIT_SCALE = 100.0
# CLIP's ResNet reduces each side 32-fold before the pool; smaller images leave no token to pool.
MIN_IMAGE_SIDE = 32
# open_clip (like OpenAI CLIP) sizes attention heads at 64 channels.
_HEAD_WIDTH = 64


@dataclass(frozen=True)
class ClipArchitecture:
    """Sizes of an OpenAI-layout CLIP ResNet model, read off its state dict.

    Attributes:
        embed_dim: Joint image/text embedding size (1024 for RN50).
        vision_layers: Bottleneck blocks in each of the four ResNet stages.
        vision_width: Channels of the first stage (64 for RN50).
        image_size: Training resolution; sizes only the (unused) positional table.
        context_length: Text tokens per prompt.
        vocab_size: Text vocabulary size.
        text_width: Width of the text transformer.
        text_layers: Depth of the text transformer.
    """

    embed_dim: int
    vision_layers: tuple[int, int, int, int]
    vision_width: int
    image_size: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "ClipArchitecture":
        """Infers the sizes from tensor shapes, as OpenAI's ``build_model`` does.

        Raises:
            KeyError: A tensor needed to infer a size is absent.
        """
        layers = tuple(
            len({m.group(1) for k in state if (m := re.match(rf"visual\.layer{stage}\.(\d+)\.", k))})
            for stage in range(1, 5)
        )
        grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        text_layers = len({m.group(1) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))})
        return cls(
            embed_dim=int(state["text_projection"].shape[1]),
            vision_layers=layers,  # type: ignore[arg-type]
            vision_width=int(state["visual.layer1.0.conv1.weight"].shape[0]),
            image_size=grid * 32,
            context_length=int(state["positional_embedding"].shape[0]),
            vocab_size=int(state["token_embedding.weight"].shape[0]),
            text_width=int(state["ln_final.weight"].shape[0]),
            text_layers=text_layers,
        )

    @property
    def vision_heads(self) -> int:
        return self.vision_width * 32 // _HEAD_WIDTH

    def open_clip_config(self) -> dict:
        """The ``open_clip.CLIP`` keyword arguments for this architecture (QuickGELU, as OpenAI trained it)."""
        return dict(
            embed_dim=self.embed_dim,
            vision_cfg=dict(
                layers=list(self.vision_layers),
                width=self.vision_width,
                image_size=self.image_size,
                head_width=_HEAD_WIDTH,
            ),
            text_cfg=dict(
                context_length=self.context_length,
                vocab_size=self.vocab_size,
                width=self.text_width,
                heads=self.text_width // _HEAD_WIDTH,
                layers=self.text_layers,
            ),
            quick_gelu=True,
        )

    def build_clip(self) -> CLIP:
        """A randomly initialised open_clip ``CLIP`` (both towers) of this architecture."""
        return CLIP(**self.open_clip_config())

    def build_image_tower(self) -> ModifiedResNet:
        """A randomly initialised ModifiedResNet with a :class:`PositionFreeAttentionPool`."""
        trunk = ModifiedResNet(
            layers=list(self.vision_layers),
            output_dim=self.embed_dim,
            heads=self.vision_heads,
            image_size=self.image_size,
            width=self.vision_width,
        )
        trunk.attnpool = PositionFreeAttentionPool(
            grid=self.image_size // 32,
            embed_dim=self.vision_width * 32,
            num_heads=self.vision_heads,
            output_dim=self.embed_dim,
        )
        return trunk


class PositionFreeAttentionPool(nn.Module):
    """CLIP's attention pool with no positional embedding, computed for the mean-token query only.

    Parameter names and shapes match OpenAI's ``AttentionPool2d`` so checkpoints load unchanged.
    ``positional_embedding`` is kept for that reason alone: QualiCLIP never adds it.

    For one query ``q`` and head ``h`` the logits are ``q_h . (W_k,h t + b_k,h)``; the bias term is the same for
    every token and cancels in the softmax, so they equal ``(W_k,h^T q_h) . t``. Likewise the output
    ``sum_t a_t (W_v,h t + b_v,h)`` equals ``W_v,h (sum_t a_t t) + b_v,h`` because the weights sum to one. Both
    avoid projecting every token, which dominates the cost of full attention on large images.
    """

    def __init__(self, grid: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(grid**2 + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pools ``N x C x H x W`` trunk features into ``N x output_dim`` image features."""
        n, c = x.shape[:2]
        heads, head_dim = self.num_heads, c // self.num_heads
        tokens = x.flatten(2).transpose(1, 2)  # N, HW, C
        query_token = tokens.mean(dim=1, keepdim=True)
        tokens = torch.cat([query_token, tokens], dim=1)

        q = self.q_proj(query_token).view(n, heads, head_dim) * head_dim**-0.5
        q_in_token_space = torch.einsum("nhd,hdc->nhc", q, self.k_proj.weight.view(heads, head_dim, c))
        attention = torch.bmm(q_in_token_space, tokens.transpose(1, 2)).softmax(dim=-1)  # N, heads, 1+HW
        pooled = torch.bmm(attention.to(tokens.dtype), tokens)  # N, heads, C
        values = torch.einsum("nhc,hdc->nhd", pooled, self.v_proj.weight.view(heads, head_dim, c))
        values = values.reshape(n, c) + self.v_proj.bias
        return self.c_proj(values)


class QualiCLIP(nn.Module):
    """QualiCLIP: image tower plus antonym-prompt score head. ``forward`` maps normalised images to scores.

    Args:
        image_tower: A ModifiedResNet whose pool is a :class:`PositionFreeAttentionPool`.
        prompt_features: ``(2P, D)`` L2-normalised text features, rows ``2k``/``2k+1`` the positive/negative
            prompt of pair ``k``. Used exactly as given, as the official model uses the stored ones.
        logit_scale: Multiplier of the cosine similarities before the per-pair softmax. 100 is the official
            model; pyiqa's ``qualiclip`` divides by a temperature of 2, i.e. 50.
    """

    def __init__(self, image_tower: nn.Module, prompt_features: torch.Tensor, logit_scale: float = OFFICIAL_LOGIT_SCALE):
        super().__init__()
        if prompt_features.ndim != 2 or prompt_features.shape[0] % 2 or prompt_features.shape[0] == 0:
            raise ValueError(f"prompt_features must be (2P, D) with P >= 1 pairs, got {tuple(prompt_features.shape)}")
        self.visual = image_tower
        self.logit_scale = float(logit_scale)
        self.register_buffer("prompt_features", prompt_features.detach().float().clone())
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def num_pairs(self) -> int:
        return self.prompt_features.shape[0] // 2

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP-normalises ``N x 3 x H x W`` images in [0, 1]."""
        return (images - self.mean) / self.std

    def encode_image(self, normalized: torch.Tensor) -> torch.Tensor:
        """Image features (not L2-normalised) of CLIP-normalised images."""
        return self.visual(normalized)

    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        """Scores image features: mean over prompt pairs of the softmax probability of the positive prompt.

        Always in fp32, even under autocast: at a logit scale of 100, bf16 cosines would move logits by ~0.03.
        """
        device_type = features.device.type
        with torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else nullcontext():
            features = F.normalize(features.float(), dim=-1)
            logits = self.logit_scale * features @ self.prompt_features.float().T
            return logits.view(-1, self.num_pairs, 2).softmax(dim=-1)[..., 0].mean(dim=1)

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        """Scores CLIP-normalised images ``N x 3 x H x W`` (H, W >= 32), returning ``(N,)`` values in [0, 1]."""
        return self.score_features(self.encode_image(normalized))

