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


def test_a_checkpoint_rewritten_in_place_gets_its_new_features(tmp_path, monkeypatch, one_thread):
    """The remembered SHA-256 of a checkpoint file is keyed by its identity, modification time included: a file
    written over in place (same path, inode and size, as a training run saving again would) is hashed anew."""
    import os

    monkeypatch.setenv("QUALICLIP_INFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prompts_module, "_memory_cache", {})
    path = write_checkpoint(tmp_path / "model.pth", TINY_CONFIG, seed=0)
    torch.testing.assert_close(QualityScorer(path, device="cpu", prompts=PAIRS).model.prompt_features,
                               _open_clip_features(0), atol=1e-5, rtol=0)
    before = os.stat(path)
    with open(path, "r+b") as f:  # over the same inode
        f.write(write_checkpoint(tmp_path / "next.pth", TINY_CONFIG, seed=1).read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    after = os.stat(path)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    monkeypatch.setattr(prompts_module, "_memory_cache", {})  # a new process
    torch.testing.assert_close(QualityScorer(path, device="cpu", prompts=PAIRS).model.prompt_features,
                               _open_clip_features(1), atol=1e-5, rtol=0)
