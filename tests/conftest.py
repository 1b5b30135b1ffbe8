"""Shared fixtures: checkpoints in the official QualiCLIP format, built locally with random weights.

Nothing is downloaded: ``tiny`` is a small CLIP ResNet for fast tests, ``rn50`` the full-size architecture.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

TINY_CONFIG = dict(
    embed_dim=32,
    vision_cfg=dict(layers=[1, 1, 1, 1], width=8, image_size=64, head_width=64),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
    quick_gelu=True,
)
RN50_CONFIG = dict(
    embed_dim=1024,
    vision_cfg=dict(layers=[3, 4, 6, 3], width=64, image_size=224, head_width=64),
    text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
    quick_gelu=True,
)
OFFICIAL_TEXTS = [
    "Good photo.", "Bad photo.", "Sharp image.", "Blurry image.", "Sharp edges.", "Blurry edges.",
    "High-resolution image.", "Low-resolution image.", "Noise-free image.", "Noisy image.",
    "High-quality image.", "Low-quality image.", "Good picture.", "Bad picture.",
]


def random_clip(config: dict, seed: int) -> open_clip.CLIP:
    """A CLIP with random weights, including BatchNorm statistics and a non-zero positional table."""
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**config).eval()
    with torch.no_grad():
        for module in clip.visual.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
        # The official model ignores this table; a large one makes any accidental use visible.
        clip.visual.attnpool.positional_embedding.normal_(0, 1)
    return clip


def official_state(clip: open_clip.CLIP, texts=OFFICIAL_TEXTS) -> dict:
    """The checkpoint dict in the official format: ``clip_model.*`` plus ``prompts_features``."""
    with torch.no_grad():
        features = clip.encode_text(open_clip.tokenize(texts), normalize=True)
    state = {f"clip_model.{k}": v.clone() for k, v in clip.state_dict().items()}
    state["prompts_features"] = features
    return state


def write_checkpoint(path: Path, config: dict, seed: int) -> Path:
    torch.save(official_state(random_clip(config, seed)), path)
    return path


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's caches, and none reaches a real hub."""
    cache = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("QUALICLIP_INFER_CACHE", str(cache / "qualiclip"))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hf" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: any real request fails fast
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pth", TINY_CONFIG, seed=0)


@pytest.fixture(scope="session")
def rn50_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("weights") / "rn50.pth", RN50_CONFIG, seed=1)


def natural_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 RGB picture with smooth regions, edges and texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([
        0.5 + 0.4 * np.sin(x / (7 + 5 * rng.random()) + rng.random() * 6),
        0.5 + 0.4 * np.cos(y / (5 + 9 * rng.random())),
        (x + y) / (width + height),
    ], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.random() * width, rng.random() * height, 4 + rng.random() * min(width, height) / 3
        image[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.random(3)
    image += rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def save_image(path: Path, array: np.ndarray, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path
