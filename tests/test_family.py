"""Model presets (QualiCLIP+, CLIP-IQA, CLIP-IQA+): every file format built here with random weights, scores against
an independent computation, the text-feature cache, wrong-kind files, the CLI, torch.hub and the Hub path.

The reference below is written from the published description of the prompt learners (start token, first half of the
context, the prompt's own tokens, second half, end token and padding; feature at the end token, projected) and of
CLIP's text transformer, in plain double-precision torch, sharing no code with the package.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import RN50_CONFIG, TINY_CONFIG, natural_image, official_state, random_clip, save_image
from hub_server import FakeHub
from reference_qualiclip import MEAN, STD, image_features

import qualiclip_infer.prompts as prompts_module
from qualiclip_infer import CheckpointError, QualityScorer, load_model
from qualiclip_infer.presets import PRESETS

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
    clip = random_clip(config, seed)
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


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict:
    """Tiny files of every kind, and the tensors the reference reads."""
    root = tmp_path_factory.mktemp("family")
    qualiclip, openai = fixture_clip(TINY_CONFIG, 10), fixture_clip(TINY_CONFIG, 11)
    files = {"qualiclip": root / "QualiCLIP.pth", "openai": root / "open_clip_model.safetensors"}
    torch.save(official_state(qualiclip), files["qualiclip"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in openai.state_dict().items()}, files["openai"])
    plus = {}
    for seed, dataset in enumerate(("koniq", "clive", "flive", "spaq")):
        plus[dataset] = qualiclip_plus_params(qualiclip, 20 + seed)
        files[dataset] = root / f"QualiCLIP+_{dataset}.pth"
        torch.save(plus[dataset], files[dataset])
    clipiqa_context = CONTEXT_STD * torch.randn(N_CTX, openai.ln_final.weight.shape[0],
                                                generator=torch.Generator().manual_seed(30))
    files["clipiqa+"] = root / "CLIP-IQA+_learned_prompts-603f3273.pth"
    torch.save(clipiqa_context, files["clipiqa+"])
    return dict(files=files, plus=plus, clipiqa_context=clipiqa_context,
                qualiclip_sd={k: v.detach() for k, v in qualiclip.state_dict().items()},
                openai_sd={k: v.detach() for k, v in openai.state_dict().items()},
                images=[natural_image(80, 64, seed=1), natural_image(64, 96, seed=2), natural_image(72, 72, seed=3)])


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


def _scores(scorer: QualityScorer, images) -> torch.Tensor:
    return torch.tensor(scorer.score(list(images)), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Scores equal the independent computation


@pytest.mark.parametrize("dataset", ["koniq", "spaq"])
def test_qualiclip_plus_matches_reference(family, dataset):
    files, sd = family["files"], family["qualiclip_sd"]
    scorer = QualityScorer(files["qualiclip"], model=f"qualiclip+{dataset}", prompt_weights=files[dataset],
                           device="cpu")
    assert scorer.model.logit_scale == pytest.approx(FIXTURE_SCALE / 2)  # pyiqa's temperature of 2
    assert scorer.prompts == PRESETS["qualiclip"].pairs
    text = qualiclip_plus_text(sd, family["plus"][dataset])
    probabilities = reference_probabilities(sd, text, FIXTURE_SCALE / 2, family["images"])
    assert ((probabilities > 0.05) & (probabilities < 0.95)).all(), probabilities
    scores = _scores(scorer, family["images"])
    torch.testing.assert_close(scores, probabilities.mean(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(scorer.model.prompt_features.double(), text, atol=1e-5, rtol=0)

    # The test can tell the token order apart: the context in one piece before the words scores differently.
    shuffled = reference_probabilities(sd, qualiclip_plus_text(sd, family["plus"][dataset], "context_first"),
                                       FIXTURE_SCALE / 2, family["images"]).mean(dim=1)
    assert (shuffled - scores).abs().max() > 1e-3
    # And the prompts matter: the stored features of QualiCLIP give other scores.
    official = _scores(QualityScorer(files["qualiclip"], device="cpu", logit_scale=FIXTURE_SCALE / 2),
                       family["images"])
    assert (official - scores).abs().max() > 1e-2


def test_clipiqa_plus_matches_reference(family):
    files, sd = family["files"], family["openai_sd"]
    scorer = QualityScorer(files["openai"], model="clipiqa+", prompt_weights=files["clipiqa+"], device="cpu")
    assert scorer.model.logit_scale == pytest.approx(FIXTURE_SCALE)  # exp(logit_scale), no temperature
    assert scorer.prompts == (("Good photo..", "Bad photo.."),)
    text = clipiqa_plus_text(sd, family["clipiqa_context"])
    probabilities = reference_probabilities(sd, text, FIXTURE_SCALE, family["images"])
    assert ((probabilities > 0.05) & (probabilities < 0.95)).all(), probabilities
    scores = _scores(scorer, family["images"])
    torch.testing.assert_close(scores, probabilities.mean(dim=1), atol=1e-5, rtol=0)
    shuffled = reference_probabilities(sd, clipiqa_plus_text(sd, family["clipiqa_context"], "context_first"),
                                       FIXTURE_SCALE, family["images"]).mean(dim=1)
    assert (shuffled - scores).abs().max() > 1e-3


def test_clipiqa_matches_reference(family):
    files, sd = family["files"], family["openai_sd"]
    scorer = QualityScorer(files["openai"], model="clipiqa", device="cpu")
    assert scorer.model.logit_scale == pytest.approx(FIXTURE_SCALE) and scorer.model.num_pairs == 5
    probabilities = reference_probabilities(sd, clipiqa_text(sd), FIXTURE_SCALE, family["images"])
    assert ((probabilities > 0.05) & (probabilities < 0.95)).all(), probabilities
    torch.testing.assert_close(_scores(scorer, family["images"]), probabilities.mean(dim=1), atol=1e-5, rtol=0)
    # Custom prompts replace the five pairs, on the same stock CLIP.
    custom = QualityScorer(files["openai"], model="clipiqa", prompts=[("Good photo.", "Bad photo.")], device="cpu")
    assert custom.model.num_pairs == 1


def test_half_precision_prompt_files_are_read_as_float32(family, tmp_path):
    files = family["files"]
    half_plus = {"params": {k: v.half() for k, v in family["plus"]["koniq"]["params"].items()}}
    torch.save(half_plus, tmp_path / "plus_fp16.pth")
    torch.save(family["clipiqa_context"].half(), tmp_path / "clipiqa_fp16.pth")
    plus = QualityScorer(files["qualiclip"], model="qualiclip+koniq", prompt_weights=tmp_path / "plus_fp16.pth",
                         device="cpu")
    expected = qualiclip_plus_text(family["qualiclip_sd"], half_plus)
    torch.testing.assert_close(plus.model.prompt_features.double(), expected, atol=1e-5, rtol=0)
    clipiqa = QualityScorer(files["openai"], model="clipiqa+", prompt_weights=tmp_path / "clipiqa_fp16.pth",
                            device="cpu")
    expected = clipiqa_plus_text(family["openai_sd"], family["clipiqa_context"].half())
    torch.testing.assert_close(clipiqa.model.prompt_features.double(), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# The text side is computed once


def test_text_tower_runs_once_per_weights_and_prompt_file(family, monkeypatch, tmp_path):
    files = family["files"]
    monkeypatch.setenv("QUALICLIP_INFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prompts_module, "_memory_cache", {})
    builds = []
    real_build, real_read = prompts_module.build_text_tower, prompts_module.read_learned_context
    monkeypatch.setattr(prompts_module, "build_text_tower", lambda c: builds.append(c.path) or real_build(c))
    options = dict(model="qualiclip+koniq", prompt_weights=files["koniq"], device="cpu")
    first = QualityScorer(files["qualiclip"], **options)
    assert builds == [files["qualiclip"]]
    assert len(list((tmp_path / "cache" / "prompt_features").glob("*.pt"))) == 1

    # A new process: only the disk cache is left, and neither the text tower nor the prompt file may be touched.
    monkeypatch.setattr(prompts_module, "_memory_cache", {})

    def refuse(*args):
        raise AssertionError("the text side was recomputed on a cache hit")

    monkeypatch.setattr(prompts_module, "build_text_tower", refuse)
    monkeypatch.setattr(prompts_module, "read_learned_context", refuse)
    second = QualityScorer(files["qualiclip"], **options)
    assert torch.equal(second.model.prompt_features, first.model.prompt_features)
    # Scoring holds the image tower only, exactly as for the official model.
    assert not any(name.startswith(("transformer", "token_embedding", "ln_final"))
                   for name, _ in second.model.named_parameters())
    assert set(second.model.state_dict()) == set(QualityScorer(files["qualiclip"], device="cpu").model.state_dict())

    # Another prompt file (or another model name over the same files) is another entry.
    monkeypatch.setattr(prompts_module, "build_text_tower", lambda c: builds.append(c.path) or real_build(c))
    monkeypatch.setattr(prompts_module, "read_learned_context", real_read)
    QualityScorer(files["qualiclip"], model="qualiclip+clive", prompt_weights=files["clive"], device="cpu")
    QualityScorer(files["qualiclip"], model="qualiclip+spaq", prompt_weights=files["koniq"], device="cpu")
    assert len(builds) == 3
    assert len(list((tmp_path / "cache" / "prompt_features").glob("*.pt"))) == 3
