"""The reference text side of the preset tests: tiny prompt-learner files in the published formats and an
independent, plain double-precision computation of learned and plain prompt features (shared with the backend
tests, which need a QualiCLIP+ prompt file)."""

from __future__ import annotations

import math

import open_clip
import torch
import torch.nn.functional as F
from helpers import random_clip
from reference_qualiclip import MEAN, STD, image_features

N_CTX = 16
# BPE tokens of each official prompt ("High-resolution image." is high, -, resolution, image, .), in score order.
QUALICLIP_PROMPT_TOKENS = [3, 3, 3, 3, 3, 3, 5, 5, 5, 3, 5, 5, 3, 3]
QUALICLIP_TEXTS = [
    "Good photo.", "Bad photo.", "Sharp image.", "Blurry image.", "Sharp edges.", "Blurry edges.",
    "High-resolution image.", "Low-resolution image.", "Noise-free image.", "Noisy image.",
    "High-quality image.", "Low-quality image.", "Good picture.", "Bad picture.",
]
CLIPIQA_TEXTS = ["Good image", "bad image", "Sharp image", "blurry image", "sharp edges", "blurry edges",
                 "High resolution image", "low resolution image", "Noise-free image", "noisy image"]
CLIPIQA_PLUS_TEXTS = ["Good photo..", "Bad photo.."]
CLIPIQA_PLUS_PROMPT_TOKENS = [3, 3]  # good, photo, ".." (one BPE token)
# exp(logit_scale) of the fixtures' CLIP: large enough that the prompts decide the scores, small enough that the
# per-pair probabilities stay away from 0 and 1, where a wrong text feature could hide.
FIXTURE_SCALE = 10.0
CONTEXT_STD = 0.5


# ---------------------------------------------------------------------------------------------------------------
# Reference


def _layer_norm(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"].double(), sd[name + ".bias"].double(), eps=1e-5)


def reference_text_features(sd: dict, embeddings: torch.Tensor, end_positions) -> torch.Tensor:
    """CLIP's text transformer on given token embeddings ``(P, L, W)``: causal pre-norm blocks with QuickGELU,
    final norm, the end token's output times ``text_projection``, L2-normalised."""
    x = embeddings.double() + sd["positional_embedding"].double()
    length, width = x.shape[1:]
    heads = width // 64
    causal = torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)
    block = 0
    while f"transformer.resblocks.{block}.ln_1.weight" in sd:
        p = f"transformer.resblocks.{block}."
        h = _layer_norm(x, sd, p + "ln_1")
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].double().T + sd[p + "attn.in_proj_bias"].double()).chunk(3, -1)
        q, k, v = (t.reshape(len(x), length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads) + causal, dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(len(x), length, width)
        x = x + out @ sd[p + "attn.out_proj.weight"].double().T + sd[p + "attn.out_proj.bias"].double()
        h = _layer_norm(x, sd, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].double().T + sd[p + "mlp.c_fc.bias"].double()
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ sd[p + "mlp.c_proj.weight"].double().T + sd[p + "mlp.c_proj.bias"].double()
        block += 1
    x = _layer_norm(x, sd, "ln_final")
    features = x[torch.arange(len(x)), torch.as_tensor(end_positions)] @ sd["text_projection"].double()
    return features / features.norm(dim=-1, keepdim=True)


def placeholder_tokens(texts):
    """Token ids of ``"X X ... X <prompt>"``: the positions the official prompt learners give their context."""
    return open_clip.tokenize(["X " * N_CTX + text for text in texts])


def assemble(prefix, context, suffix, prompt_tokens, order="official"):
    """Prompt embeddings from raw tensors: start, context[:8], prompt tokens, context[8:], end token and padding."""
    rows = []
    for i, m in enumerate(prompt_tokens):
        first, second = context[i, :N_CTX // 2], context[i, N_CTX // 2:]
        words, rest = suffix[i, :m], suffix[i, m:]
        parts = {"official": [prefix[i], first, words, second, rest],
                 "context_first": [prefix[i], first, second, words, rest]}[order]
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def reference_probabilities(sd: dict, text_features: torch.Tensor, scale: float, images01) -> torch.Tensor:
    """``(N, P)`` probability of each pair's positive prompt; the score is their mean."""
    rows = []
    for image in images01:
        x = torch.as_tensor(image).permute(2, 0, 1)[None].double() / 255
        f = image_features(sd, (x - MEAN.double()) / STD.double())
        f = f / f.norm(dim=-1, keepdim=True)
        logits = scale * f @ text_features.T
        rows.append(torch.softmax(logits.view(-1, 2), dim=-1)[:, 0])
    return torch.stack(rows)


def embed(sd: dict, tokens: torch.Tensor) -> torch.Tensor:
    return sd["token_embedding.weight"].double()[tokens]


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: files in every format


def fixture_clip(config: dict, seed: int) -> open_clip.CLIP:
    # A weaker common text component than conftest's: at FIXTURE_SCALE, prompt features a few hundredths apart would
    # leave every probability near 0.5 and the prompts hardly mattering.
    clip = random_clip(config, seed, text_common_component=1.0)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(FIXTURE_SCALE))
    return clip


def qualiclip_plus_params(clip: open_clip.CLIP, seed: int) -> dict:
    """A QualiCLIP+ prompt learner: one context per prompt, and the start/suffix embeddings stored beside it
    (perturbed, so that only code which uses the stored ones, as pyiqa does, matches)."""
    generator = torch.Generator().manual_seed(seed)
    width = clip.ln_final.weight.shape[0]
    with torch.no_grad():
        embedded = clip.token_embedding(placeholder_tokens(QUALICLIP_TEXTS))
    noise = 0.01 * torch.randn(embedded.shape, generator=generator)
    return {"params": {
        "prompt_learner.ctx": CONTEXT_STD * torch.randn(14, N_CTX, width, generator=generator),
        "prompt_learner.token_prefix": (embedded + noise)[:, :1].clone(),
        "prompt_learner.token_suffix": (embedded + noise)[:, 1 + N_CTX:].clone(),
    }}


def qualiclip_plus_text(sd: dict, params: dict, order: str = "official") -> torch.Tensor:
    p = params["params"]
    embeddings = assemble(p["prompt_learner.token_prefix"].double(), p["prompt_learner.ctx"].double(),
                          p["prompt_learner.token_suffix"].double(), QUALICLIP_PROMPT_TOKENS, order)
    return reference_text_features(sd, embeddings, [1 + N_CTX + m for m in QUALICLIP_PROMPT_TOKENS])


def clipiqa_plus_text(sd: dict, context: torch.Tensor, order: str = "official") -> torch.Tensor:
    tokens = placeholder_tokens(CLIPIQA_PLUS_TEXTS)
    embedded = embed(sd, tokens)
    shared = context.double().expand(len(CLIPIQA_PLUS_TEXTS), -1, -1)
    embeddings = assemble(embedded[:, :1], shared, embedded[:, 1 + N_CTX:], CLIPIQA_PLUS_PROMPT_TOKENS, order)
    return reference_text_features(sd, embeddings, tokens.argmax(dim=-1))


def clipiqa_text(sd: dict) -> torch.Tensor:
    tokens = open_clip.tokenize(CLIPIQA_TEXTS)
    return reference_text_features(sd, embed(sd, tokens), tokens.argmax(dim=-1))
