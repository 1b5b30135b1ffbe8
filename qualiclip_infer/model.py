"""The QualiCLIP network: CLIP's ModifiedResNet trunk, a position-free attention pool and the antonym score head.

The trunk is written here from OpenAI CLIP's published architecture, with OpenAI's module names so that checkpoints
load strictly. Scoring therefore never imports open_clip (and the torchvision it pulls in, seconds of start-up):
only encoding custom prompts needs CLIP's text tower, and :meth:`ClipArchitecture.build_clip` imports it then.

The official QualiCLIP model feeds whole images at their native resolution, so its attention pool drops CLIP's
fixed 7x7 positional table. Only the pooled (mean) token is ever read, so the pool here computes attention for
that single query and folds the key and value projections into it: the result equals full multi-head attention
over all tokens (to float rounding) while time and memory grow linearly with the number of pixels.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .constants import MIN_IMAGE_SIDE, OFFICIAL_LOGIT_SCALE  # noqa: F401 (part of this module's API)

if TYPE_CHECKING:
    from open_clip import CLIP

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
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

    def build_clip(self) -> "CLIP":
        """A randomly initialised open_clip ``CLIP`` (both towers) of this architecture.

        Only the text tower needs it (encoding custom prompts); open_clip is imported here, not at module load.
        """
        from open_clip import CLIP

        return CLIP(**self.open_clip_config())

    def build_image_tower(self) -> "ModifiedResNet":
        """A randomly initialised :class:`ModifiedResNet` with a :class:`PositionFreeAttentionPool`."""
        return ModifiedResNet(self.vision_layers, self.vision_width, self.vision_heads, self.embed_dim,
                              self.image_size // 32)

    def state_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Key and shape of every tensor in an OpenAI-layout CLIP state dict of this architecture (both towers).

        Computed without building open_clip's model: the image tower's from :meth:`build_image_tower` on the meta
        device, the text tower's from the layout of OpenAI's text transformer.
        """
        with torch.device("meta"):
            tower = self.build_image_tower()
        shapes = {f"visual.{k}": tuple(v.shape) for k, v in tower.state_dict().items()}
        width = self.text_width
        shapes.update({
            "positional_embedding": (self.context_length, width),
            "text_projection": (width, self.embed_dim),
            "logit_scale": (),
            "token_embedding.weight": (self.vocab_size, width),
            "ln_final.weight": (width,),
            "ln_final.bias": (width,),
        })
        block = {
            "ln_1.weight": (width,), "ln_1.bias": (width,),
            "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
            "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
            "ln_2.weight": (width,), "ln_2.bias": (width,),
            "mlp.c_fc.weight": (4 * width, width), "mlp.c_fc.bias": (4 * width,),
            "mlp.c_proj.weight": (width, 4 * width), "mlp.c_proj.bias": (width,),
        }
        for layer in range(self.text_layers):
            shapes.update({f"transformer.resblocks.{layer}.{k}": v for k, v in block.items()})
        return shapes


class Bottleneck(nn.Module):
    """CLIP's ResNet bottleneck: 1x1, 3x3, 1x1 convolutions (4x expansion), each followed by a BatchNorm.

    Unlike torchvision's, a strided block keeps every convolution at stride 1 and downsamples with an average pool
    ("anti-aliased"), after the 3x3 convolution on the main path and before the 1x1 projection on the shortcut.
    Each BatchNorm is registered right after its convolution: :func:`fold_batch_norms`
    relies on that order.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or in_channels != out_channels:
            # OpenAI's names: "-1" the pool (no tensors), "0" the projection, "1" its BatchNorm.
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(in_channels, out_channels, 1, bias=False)),
                ("1", nn.BatchNorm2d(out_channels)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        out += x if self.downsample is None else self.downsample(x)  # in place: one activation less to allocate
        return self.act3(out)


class ModifiedResNet(nn.Module):
    """CLIP's image tower: a three-convolution stem, four stages of :class:`Bottleneck` blocks, an attention pool.

    The stem (3x3 convolutions at stride 2, 1, 1, then a 2x2 average pool) and the strided stages reduce each side
    32-fold; the last stage has ``width * 32`` channels, pooled by :class:`PositionFreeAttentionPool`.

    Args:
        layers: Blocks in each of the four stages ((3, 4, 6, 3) for RN50).
        width: Channels of the first stage (64 for RN50); the stem runs at half of it.
        heads: Attention heads of the pool.
        output_dim: Size of the image features (1024 for RN50).
        grid: Side of the (unused) positional table: training resolution / 32.
    """

    def __init__(self, layers: Sequence[int], width: int, heads: int, output_dim: int, grid: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        in_channels = width
        for stage, blocks in enumerate(layers):
            channels = width * 2**stage
            stage_blocks = []
            for block in range(blocks):
                stage_blocks.append(Bottleneck(in_channels, channels, stride=2 if stage > 0 and block == 0 else 1))
                in_channels = channels * Bottleneck.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*stage_blocks))
        self.attnpool = PositionFreeAttentionPool(grid, in_channels, heads, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x 3 x H x W`` CLIP-normalised images (H, W >= 32) to ``N x output_dim`` image features."""
        return self.attnpool(self.trunk(x))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The stem and the four stages: ``N x 3 x H x W`` images to the pool's ``N x C x h x w`` input (stride 32)."""
        x = x.to(self.conv1.weight.dtype)  # as open_clip does, so a half-precision copy accepts float images
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


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

    def project_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Projects every position of ``N x C x h x w`` trunk features as the pool projects values (value, then
        output projection), giving ``N x h x w x output_dim``.

        The pooled feature is the attention-weighted mean of these projections (the weights sum to one), so each
        is the feature the image would get if the pool attended to that position alone.
        """
        return self.c_proj(self.v_proj(x.permute(0, 2, 3, 1)))


class QualiCLIP(nn.Module):
    """QualiCLIP: image tower plus antonym-prompt score head. ``forward`` maps normalised images to scores.

    Args:
        image_tower: A :class:`ModifiedResNet` (or any module) whose pool is a :class:`PositionFreeAttentionPool`.
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

    def trunk_features(self, normalized: torch.Tensor) -> torch.Tensor:
        """The ResNet trunk's ``N x C x h x w`` output (stride 32), the input of the attention pool."""
        return self.visual.trunk(normalized)

    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        """Scores image features ``(..., D)``: mean over prompt pairs of the softmax probability of the positive
        prompt, ``(...)``.

        Always in at least fp32, even under autocast: at a logit scale of 100, bf16 cosines would move logits by ~0.03.
        The softmax of a pair's two logits is the sigmoid of their difference, ``scale * (cos+ - cos-)``; taking the
        difference of the prompt features first avoids rounding each logit (up to 100 in size) before subtracting,
        which would cost ~1e-6 of score in fp32 and make scores depend on how features were batched.
        """
        device_type = features.device.type
        with torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else nullcontext():
            if features.dtype in (torch.float16, torch.bfloat16):
                features = features.float()
            prompts = self.prompt_features.to(features.dtype)
            margins = F.normalize(features, dim=-1) @ (prompts[0::2] - prompts[1::2]).T
            return torch.sigmoid(self.logit_scale * margins).mean(dim=-1)

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        """Scores CLIP-normalised images ``N x 3 x H x W`` (H, W >= 32), returning ``(N,)`` values in [0, 1]."""
        return self.score_features(self.encode_image(normalized))

    def token_scores(self, normalized: torch.Tensor) -> torch.Tensor:
        """A dense quality map: ``N x h x w`` scores, one per position of the trunk's stride-32 feature grid.

        Each position is projected as the attention pool projects values
        (:meth:`PositionFreeAttentionPool.project_tokens`) and scored like an image feature. This is a dense
        approximation of local quality, not the score of any crop: each position sees far beyond its 32x32 cell
        (the trunk's receptive field spans hundreds of pixels), and the whole-image score scores the attention-weighted
        mean of these projections, not a mean of their scores.
        """
        return self.score_features(self.visual.attnpool.project_tokens(self.trunk_features(normalized)))

    def scores_and_token_scores(self, normalized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(N,)`` image scores and the ``N x h x w`` :meth:`token_scores`, from one pass of the trunk."""
        trunk = self.trunk_features(normalized)
        scores = self.score_features(self.visual.attnpool(trunk))
        return scores, self.score_features(self.visual.attnpool.project_tokens(trunk))


def fold_batch_norms(module: nn.Module, memory_format: torch.memory_format = torch.contiguous_format) -> None:
    """Folds each BatchNorm into the convolution registered just before it, leaving an Identity in its place.

    In CLIP's ModifiedResNet every BatchNorm is registered right after the convolution it normalises (``convK`` then
    ``bnK``; ``downsample`` is ``avgpool, conv, bn``). In eval mode such a pair is one convolution with a bias: the
    same scores to float rounding, without a pass over every activation (about 15% of RN50's time on a CPU). The
    folded weights are new tensors in ``memory_format``; the convolution modules are updated in place.
    """
    for parent in list(module.modules()):
        previous = None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and isinstance(previous, nn.Conv2d):
                _fold_into_conv(previous, child, memory_format)
                setattr(parent, name, nn.Identity())
            previous = child


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d, memory_format: torch.memory_format) -> None:
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    weight = torch.empty_like(conv.weight, memory_format=memory_format)
    torch.mul(conv.weight, scale.view(-1, 1, 1, 1), out=weight)
    shift = norm.running_mean if conv.bias is None else norm.running_mean - conv.bias
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(norm.bias - shift * scale, requires_grad=False)
