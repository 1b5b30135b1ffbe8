"""Model presets (QualiCLIP+, CLIP-IQA, CLIP-IQA+): every file format built here with random weights, scores against
an independent computation, the text-feature cache, wrong-kind files, the CLI, torch.hub and the Hub path.

The reference below is written from the published description of the prompt learners (start token, first half of the
context, the prompt's own tokens, second half, end token and padding; feature at the end token, projected) and of
CLIP's text transformer, in plain double-precision torch, sharing no code with the package.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import RN50_CONFIG, TINY_CONFIG, natural_image, official_state, random_clip, save_image
from hub_server import FakeHub
from reference_qualiclip import MEAN, STD, image_features

import qualiclip_infer.prompts as prompts_module
from qualiclip_infer import CheckpointError, QualityScorer, load_checkpoint, load_model
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


# ---------------------------------------------------------------------------------------------------------------
# Files of the wrong kind, and options a model cannot honour


def _one_line_error(error_type, call, *needles) -> str:
    with pytest.raises(error_type) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, message
    return message


def test_wrong_kind_of_prompt_file(family, tmp_path):
    files = family["files"]

    def plus(prompt_file):
        return lambda: QualityScorer(files["qualiclip"], model="qualiclip+koniq", prompt_weights=prompt_file,
                                     device="cpu")

    # The image-tower checkpoint passed as the prompt file: named, with its keys.
    _one_line_error(CheckpointError, plus(files["qualiclip"]), files["qualiclip"], "not a learned prompt file",
                    "clip_model.", "prompt_learner.ctx")
    params = dict(family["plus"]["koniq"]["params"])
    params["prompt_learner.extra"] = params.pop("prompt_learner.token_prefix")
    torch.save({"params": params}, tmp_path / "renamed.pth")
    _one_line_error(CheckpointError, plus(tmp_path / "renamed.pth"), tmp_path / "renamed.pth",
                    "prompt_learner.extra")
    torch.save(torch.zeros(2, N_CTX, 64), tmp_path / "cube.pth")
    _one_line_error(CheckpointError, plus(tmp_path / "cube.pth"), tmp_path / "cube.pth", "(2, 16, 64)")
    torch.save({"params": {**family["plus"]["koniq"]["params"],
                           "prompt_learner.ctx": torch.zeros(7, N_CTX, 64)}}, tmp_path / "seven.pth")
    _one_line_error(CheckpointError, plus(tmp_path / "seven.pth"), tmp_path / "seven.pth", "ctx (7, 16, 64)")
    torch.save(torch.zeros(N_CTX, 48), tmp_path / "narrow.pth")
    _one_line_error(CheckpointError, plus(tmp_path / "narrow.pth"), tmp_path / "narrow.pth", "width 48")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    _one_line_error(CheckpointError, plus(tmp_path / "garbage.pth"), tmp_path / "garbage.pth")
    _one_line_error(FileNotFoundError, plus(tmp_path / "missing.pth"), "prompt_weights file not found",
                    tmp_path / "missing.pth")


def test_wrong_kind_of_weights_file(family, tmp_path):
    files = family["files"]
    # A prompt file passed as the weights says where it belongs.
    _one_line_error(CheckpointError, lambda: QualityScorer(files["koniq"], device="cpu"), files["koniq"],
                    "learned prompts", "prompt_weights")
    _one_line_error(CheckpointError, lambda: QualityScorer(files["clipiqa+"], model="clipiqa+", device="cpu"),
                    files["clipiqa+"], "(16, 64)", "prompt_weights")
    # A plain CLIP file is checked key by key, named without any prefix.
    state = dict(family["openai_sd"])
    del state["visual.layer1.0.conv2.weight"]
    state["visual.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken_clip.pth")
    _one_line_error(CheckpointError, lambda: QualityScorer(tmp_path / "broken_clip.pth", model="clipiqa"),
                    tmp_path / "broken_clip.pth", "missing keys [visual.layer1.0.conv2.weight]",
                    "unexpected keys [visual.extra]")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    _one_line_error(CheckpointError, lambda: QualityScorer(tmp_path / "other.pth", model="clipiqa"),
                    tmp_path / "other.pth", "[weight]")
    # The official model needs stored prompt features, which a plain CLIP file has not.
    _one_line_error(CheckpointError, lambda: QualityScorer(files["openai"], device="cpu"), files["openai"],
                    "stores no prompt features", "clipiqa")


def test_options_a_model_cannot_honour():
    _one_line_error(ValueError, lambda: QualityScorer(model="qualiclip+"), "qualiclip+koniq", "clipiqa+")
    _one_line_error(ValueError, lambda: QualityScorer(model="clipiqa+", prompts=[("a", "b")]), "learned prompts")
    _one_line_error(ValueError, lambda: QualityScorer(prompt_weights="x.pth"), "'qualiclip' has no learned prompts")
    _one_line_error(ValueError, lambda: QualityScorer(model="clipiqa", prompt_revision="v1"), "no learned prompts")


# ---------------------------------------------------------------------------------------------------------------
# Front ends: CLI, load_model, torch.hub


def test_cli_model_option(family, tmp_path):
    from qualiclip_infer.cli import build_parser

    model_option = next(action for action in build_parser()._actions if "--model" in action.option_strings)
    assert list(model_option.choices) == list(PRESETS)
    files = family["files"]
    image = save_image(tmp_path / "a.png", family["images"][0])
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "qualiclip_infer", str(image), "--format", "jsonl", "--model", "qualiclip+flive",
               "--weights", str(files["qualiclip"]), "--prompt-weights", str(files["flive"])]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=180)
    assert result.returncode == 0, result.stderr
    expected = QualityScorer(files["qualiclip"], model="qualiclip+flive", prompt_weights=files["flive"],
                             device="cpu").score(image)
    assert json.loads(result.stdout)["score"] == pytest.approx(expected, abs=1e-7)

    wrong = subprocess.run([*command[:-2], "--prompt-weights", str(files["qualiclip"])], capture_output=True,
                           text=True, env=environment, timeout=180)
    assert wrong.returncode == 2 and str(files["qualiclip"]) in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    unknown = subprocess.run([sys.executable, "-m", "qualiclip_infer", str(image), "--model", "qualiclip+nope"],
                             capture_output=True, text=True, env=environment, timeout=180)
    assert unknown.returncode == 2 and "qualiclip+nope" in unknown.stderr


def _hub_load(entry_point: str, **kwargs):
    return torch.hub.load(str(Path(__file__).resolve().parents[1]), entry_point, source="local", trust_repo=True,
                          **kwargs)


def test_load_model_and_torch_hub(family):
    files = family["files"]
    images = torch.randn(2, 3, 64, 96)
    entries = [("CLIP_IQA_plus", {}, "clipiqa+", dict(weights=files["openai"], prompt_weights=files["clipiqa+"])),
               ("CLIP_IQA", {}, "clipiqa", dict(weights=files["openai"])),
               ("QualiCLIP_plus", {"dataset": "clive"}, "qualiclip+clive",
                dict(weights=files["qualiclip"], prompt_weights=files["clive"]))]
    for entry, extra, name, options in entries:
        model = load_model(model=name, **options)
        assert torch.equal(_hub_load(entry, **extra, **options)(images), model(images)), entry
    scorer = _hub_load("qualiclip_scorer", preset="clipiqa+", device="cpu", weights=files["openai"],
                       prompt_weights=files["clipiqa+"])
    assert scorer.model_name == "clipiqa+" and "clipiqa+" in repr(scorer)
    assert scorer.model.logit_scale == pytest.approx(FIXTURE_SCALE)


# ---------------------------------------------------------------------------------------------------------------
# The Hub: every preset's files, downloaded once, then offline


def _run_python(tmp_path: Path, endpoint: str, code: str) -> dict:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
           "HF_HUB_DISABLE_XET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


_SCORE_EVERY_PRESET = """
import json, numpy as np
from qualiclip_infer import QualityScorer
from qualiclip_infer.presets import PRESETS
image = np.full((64, 80, 3), 120, np.uint8)
image[::7] = 30
offline = %s
scores = {name: QualityScorer(model=name, device="cpu", local_files_only=offline).score(image) for name in PRESETS}
if not offline:
    from qualiclip_infer.presets import QUALICLIP_FILE
    from qualiclip_infer.checkpoint import file_sha256
    from qualiclip_infer.hub import resolve_weights
    scores["cached_sha256"] = file_sha256(resolve_weights(None, default=QUALICLIP_FILE))
    scores["pinned"] = QualityScorer(model="qualiclip+koniq", prompt_revision="v1", device="cpu").score(image)
print(json.dumps(scores))
"""


def test_hub_serves_every_preset_then_offline(family, tmp_path):
    files = family["files"]
    repo = "chaofengc/IQA-PyTorch-Weights"
    served = {
        (repo, "main", "QualiCLIP.pth"): files["qualiclip"],
        **{(repo, "main", f"QualiCLIP+_{d}.pth"): files[d] for d in ("koniq", "clive", "flive", "spaq")},
        (repo, "main", "CLIP-IQA+_learned_prompts-603f3273.pth"): files["clipiqa+"],
        ("timm/resnet50_clip.openai", "main", "open_clip_model.safetensors"): files["openai"],
        (repo, "v1", "QualiCLIP+_koniq.pth"): files["spaq"],
    }
    assert {(p.weights.repo_id, p.weights.filename) for p in PRESETS.values()} | {
        (p.prompt_file.repo_id, p.prompt_file.filename) for p in PRESETS.values() if p.prompt_file
    } == {(r, f) for r, rev, f in served if rev == "main"}
    with FakeHub(served) as hub:
        online = _run_python(tmp_path, hub.endpoint, _SCORE_EVERY_PRESET % "False")
        endpoint = hub.endpoint
    asked = {urllib.parse.unquote(path) for _, path, _ in hub.requests}
    assert {f"/{r}/resolve/{rev}/{f}" for r, rev, f in served} <= asked
    pinned = online.pop("pinned")
    # In the Hub cache, the file's hash is its blob's name (the LFS ETag), and equals the hash of its bytes.
    assert online.pop("cached_sha256") == hashlib.sha256(files["qualiclip"].read_bytes()).hexdigest()
    assert len(set(online.values())) == len(PRESETS)  # seven different models

    offline = _run_python(tmp_path, endpoint, _SCORE_EVERY_PRESET % "True")  # the server is gone
    assert offline == online
    # The pinned revision's file (here the SPAQ context) is the one used.
    image = np.full((64, 80, 3), 120, np.uint8)
    image[::7] = 30
    local = QualityScorer(files["qualiclip"], model="qualiclip+koniq", prompt_weights=files["spaq"], device="cpu")
    assert pinned == pytest.approx(local.score(image), abs=1e-7) and pinned != online["qualiclip+koniq"]


def test_training_starts_from_a_plain_clip_file(family, tmp_path):
    """OpenAI's RN50 (the paper's starting point) as the trainer's init: the exported checkpoint stores the
    features of the prompts it was trained against, and loads as an official-format QualiCLIP checkpoint."""
    from qualiclip_infer.train.loop import TrainConfig, Trainer

    folder = tmp_path / "pristine"
    folder.mkdir()
    for seed in range(4):
        save_image(folder / f"{seed}.png", natural_image(80, 80, seed=seed))
    pairs = (("Good photo.", "Bad photo."),)
    config = TrainConfig(images=folder, out=tmp_path / "out.pth", init=family["files"]["openai"], prompts=pairs,
                         device="cpu", steps=1, batch_size=2, crop_size=64, val_fraction=0.5, val_crops=2,
                         workers=0, checkpoint_every=0, distortions=("gaussian_blur",))
    Trainer(config).export(config.out)
    exported = load_checkpoint(config.out)
    expected = reference_text_features(family["openai_sd"], embed(family["openai_sd"], open_clip.tokenize(
        ["Good photo.", "Bad photo."])), open_clip.tokenize(["Good photo.", "Bad photo."]).argmax(dim=-1))
    torch.testing.assert_close(exported.prompt_features.double(), expected, atol=1e-5, rtol=0)


def test_hash_of_a_hub_cache_blob_is_its_name(tmp_path):
    from qualiclip_infer.checkpoint import file_sha256

    name = "ab" * 32
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / name).write_bytes(b"weights")
    (tmp_path / "snapshot.pth").symlink_to(tmp_path / "blobs" / name)
    assert file_sha256(tmp_path / "snapshot.pth") == name
    (tmp_path / "elsewhere.pth").write_bytes(b"weights")
    assert file_sha256(tmp_path / "elsewhere.pth") == hashlib.sha256(b"weights").hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Full size


@pytest.mark.slow
def test_full_size_learned_prompts_match_reference(tmp_path):
    """RN50 with OpenAI's text tower sizes (width 512, 12 layers) and the published prompt-file shapes."""
    clip = fixture_clip(RN50_CONFIG, 40)
    torch.save(official_state(clip), tmp_path / "QualiCLIP.pth")
    params = qualiclip_plus_params(clip, 41)
    assert [tuple(v.shape) for v in params["params"].values()] == [(14, 16, 512), (14, 1, 512), (14, 60, 512)]
    torch.save(params, tmp_path / "QualiCLIP+_koniq.pth")
    context = CONTEXT_STD * torch.randn(N_CTX, 512, generator=torch.Generator().manual_seed(42))
    torch.save(context, tmp_path / "CLIP-IQA+.pth")
    sd = {k: v.detach() for k, v in clip.state_dict().items()}
    images = [natural_image(96, 64, seed=4), natural_image(64, 64, seed=5)]

    plus = QualityScorer(tmp_path / "QualiCLIP.pth", model="qualiclip+koniq",
                         prompt_weights=tmp_path / "QualiCLIP+_koniq.pth", device="cpu")
    expected = reference_probabilities(sd, qualiclip_plus_text(sd, params), FIXTURE_SCALE / 2, images).mean(dim=1)
    torch.testing.assert_close(_scores(plus, images), expected, atol=1e-5, rtol=0)
    # CLIP-IQA+'s shared context on the same (official-layout) weights.
    shared = QualityScorer(tmp_path / "QualiCLIP.pth", model="clipiqa+", prompt_weights=tmp_path / "CLIP-IQA+.pth",
                           device="cpu")
    expected = reference_probabilities(sd, clipiqa_plus_text(sd, context), FIXTURE_SCALE, images).mean(dim=1)
    torch.testing.assert_close(_scores(shared, images), expected, atol=1e-5, rtol=0)
