"""The custom-prompt feature cache is keyed by the checkpoint: two checkpoints with the same prompt strings get their
own features (each equal to open_clip's encoding with that checkpoint's text tower) and their own cache entries, in
memory and on disk."""

from __future__ import annotations

import open_clip
import torch
from helpers import TINY_CONFIG, random_clip, write_checkpoint

import qualiclip_infer.prompts as prompts_module
from qualiclip_infer import QualityScorer

PAIRS = [("Sharp photo.", "Blurry photo."), ("Clean photo.", "Noisy photo.")]


def _open_clip_features(seed: int) -> torch.Tensor:
    """The prompts encoded by open_clip itself, with the CLIP the checkpoint of ``seed`` was written from."""
    clip = random_clip(TINY_CONFIG, seed)
    with torch.no_grad():
        return clip.encode_text(open_clip.tokenize([text for pair in PAIRS for text in pair]), normalize=True)


def test_two_checkpoints_with_the_same_prompts_get_their_own_features(tiny_checkpoint, tmp_path, monkeypatch,
                                                                       one_thread):
    monkeypatch.setenv("QUALICLIP_INFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prompts_module, "_memory_cache", {})
    calls = []
    real_encode = prompts_module.encode_prompts
    monkeypatch.setattr(prompts_module, "encode_prompts", lambda *a: calls.append(a) or real_encode(*a))
    other = write_checkpoint(tmp_path / "other.pth", TINY_CONFIG, seed=1)
    expected = {tiny_checkpoint: _open_clip_features(0), other: _open_clip_features(1)}
    assert (expected[tiny_checkpoint] - expected[other]).abs().max() > 0.1  # the checkpoints' texts differ

    for path in (tiny_checkpoint, other):
        features = QualityScorer(path, device="cpu", prompts=PAIRS).model.prompt_features
        torch.testing.assert_close(features, expected[path], atol=1e-5, rtol=0)
    assert len(calls) == 2
    assert len(list((tmp_path / "cache" / "prompt_features").glob("*.pt"))) == 2

    monkeypatch.setattr(prompts_module, "_memory_cache", {})  # a new process: each comes from its own disk entry
    for path in (other, tiny_checkpoint):
        features = QualityScorer(path, device="cpu", prompts=PAIRS).model.prompt_features
        torch.testing.assert_close(features, expected[path], atol=1e-5, rtol=0)
    assert len(calls) == 2
