"""An independent, plain-torch implementation of the official QualiCLIP forward, straight from a state dict.

Written from OpenAI CLIP's published architecture (ModifiedResNet + AttentionPool2d) and the QualiCLIP score
formula, with no code shared with the package: full multi-head attention over *all* tokens (the mean token
first, no positional embedding), then the softmax of ``100 * cos`` over each antonym pair. It reads the checkpoint
file itself (:func:`read_checkpoint`), so a fault in the package's loader cannot hide in both sides of a comparison.
"""

from __future__ import annotations

import os
from typing import Tuple

import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def read_checkpoint(path: "str | os.PathLike") -> Tuple[dict, torch.Tensor]:
    """The CLIP tensors (``clip_model.`` prefix stripped) and the stored prompt features of an official-format file."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    clip_state = {key[len("clip_model."):]: value for key, value in raw.items() if key.startswith("clip_model.")}
    return clip_state, raw["prompts_features"]


def _bn(x, sd, prefix):
    return F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"], sd[prefix + ".weight"],
                        sd[prefix + ".bias"], training=False, eps=1e-5)


def _conv_bn_relu(x, sd, conv, bn, stride=1, padding=0, relu=True):
    x = _bn(F.conv2d(x, sd[conv + ".weight"], stride=stride, padding=padding), sd, bn)
    return F.relu(x) if relu else x


def _bottleneck(x, sd, prefix, stride):
    out = _conv_bn_relu(x, sd, prefix + ".conv1", prefix + ".bn1")
    out = _conv_bn_relu(out, sd, prefix + ".conv2", prefix + ".bn2", padding=1)
    if stride > 1:
        out = F.avg_pool2d(out, stride)
    out = _conv_bn_relu(out, sd, prefix + ".conv3", prefix + ".bn3", relu=False)
    identity = x
    if prefix + ".downsample.0.weight" in sd:  # OpenAI names them -1 (avg pool), 0 (conv), 1 (batch norm)
        if stride > 1:
            identity = F.avg_pool2d(identity, stride)
        identity = _conv_bn_relu(identity, sd, prefix + ".downsample.0", prefix + ".downsample.1", relu=False)
    return F.relu(out + identity)


def trunk_features(sd: dict, images: torch.Tensor) -> torch.Tensor:
    """The ResNet trunk's ``N x C x h x w`` output (before the attention pool) of CLIP-normalised images."""
    v = {k[len("visual."):]: t.double() for k, t in sd.items() if k.startswith("visual.")}
    x = images.double()
    x = _conv_bn_relu(x, v, "conv1", "bn1", stride=2, padding=1)
    x = _conv_bn_relu(x, v, "conv2", "bn2", padding=1)
    x = _conv_bn_relu(x, v, "conv3", "bn3", padding=1)
    x = F.avg_pool2d(x, 2)
    for stage in range(1, 5):
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in v:
            x = _bottleneck(x, v, f"layer{stage}.{block}", stride=2 if stage > 1 and block == 0 else 1)
            block += 1
    return x


def image_features(sd: dict, images: torch.Tensor) -> torch.Tensor:
    """Image features of CLIP-normalised images; ``sd`` holds OpenAI-layout ``visual.*`` keys."""
    v = {k[len("visual."):]: t.double() for k, t in sd.items() if k.startswith("visual.")}
    x = trunk_features(sd, images)
    n, c, h, w = x.shape
    tokens = x.reshape(n, c, h * w).permute(0, 2, 1)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # no positional embedding
    heads = c // 64

    def project(name):
        out = tokens @ v[f"attnpool.{name}.weight"].T + v[f"attnpool.{name}.bias"]
        return out.reshape(n, -1, heads, c // heads).transpose(1, 2)  # n, heads, L, d

    q, k, val = project("q_proj"), project("k_proj"), project("v_proj")
    attention = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)  # every token queries
    out = (attention @ val).transpose(1, 2).reshape(n, -1, c)
    out = out @ v["attnpool.c_proj.weight"].T + v["attnpool.c_proj.bias"]
    return out[:, 0]


def pair_probabilities(sd: dict, prompt_features: torch.Tensor, images01: torch.Tensor,
                       logit_scale: float = 100.0) -> torch.Tensor:
    """``N x P``: probability of each pair's positive prompt for ``N x 3 x H x W`` images in [0, 1]."""
    features = image_features(sd, (images01.double() - MEAN.double()) / STD.double())
    features = features / features.norm(dim=-1, keepdim=True)
    logits = logit_scale * features @ prompt_features.double().T  # stored features are used as they are
    positive, negative = logits[:, 0::2], logits[:, 1::2]
    return torch.exp(positive) / (torch.exp(positive) + torch.exp(negative))


def score(sd: dict, prompt_features: torch.Tensor, images01: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """Official QualiCLIP scores of ``N x 3 x H x W`` images in [0, 1]: the mean over pairs."""
    return pair_probabilities(sd, prompt_features, images01, logit_scale).mean(dim=1)
