"""Test helpers: checkpoints in the official QualiCLIP format built locally with random weights, and pictures.

Nothing is downloaded: ``TINY_CONFIG`` is a small CLIP ResNet for fast tests, ``RN50_CONFIG`` the full-size
architecture.
"""


from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
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


# Scales that make every part of the tiny model matter (checked by tests/test_model.py): pool queries and keys
# multiplied so that attention is far from uniform, and a common component added to every text feature so that each
# antonym pair's features differ by a few hundredths, as CLIP's do, leaving each pair's probability between 0.05 and
# 0.95 at a logit scale of 100 instead of at 0 or 1, where a wrong image feature would hardly change a score.
ATTENTION_SHARPNESS = 3.0
TEXT_COMMON_COMPONENT = 12.0


def random_clip(config: dict, seed: int, text_common_component: float = TEXT_COMMON_COMPONENT) -> open_clip.CLIP:
    """A CLIP with random weights in which every part of the forward moves the scores.

    - BatchNorm statistics are measured on a few natural images (as training would leave them), then the affine
      weights are drawn at random: features keep their spatial variation through all four stages. With made-up
      statistics they are almost constant over the image, and attention over them uniform whatever its weights.
    - The pool's query and key projections are scaled up (see ``ATTENTION_SHARPNESS``).
    - The final text LayerNorm gets a large random bias: prompt features share one direction and the positive and
      negative prompt of a pair are close (see ``TEXT_COMMON_COMPONENT``).
    - The positional table is large and random: the official model ignores it, so any accidental use shows.
    """
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**config).eval()
    visual = clip.visual
    norms = [module for module in visual.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in norms:
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.1, 0.1)
            module.reset_running_stats()
            module.momentum = None  # running statistics = plain averages over the calibration batch
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        calibration = torch.stack([torch.from_numpy(natural_image(64, 64, seed=100 + i)).permute(2, 0, 1)
                                   for i in range(8)]).float() / 255
        visual.train()
        visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem((calibration - mean) / std)))))
        visual.eval()
        for module in norms:
            module.momentum = 0.1
        visual.attnpool.q_proj.weight.mul_(ATTENTION_SHARPNESS)
        visual.attnpool.k_proj.weight.mul_(ATTENTION_SHARPNESS)
        visual.attnpool.positional_embedding.normal_(0, 1)
        width = clip.ln_final.bias.shape[0]
        common = torch.nn.functional.normalize(torch.randn(width), dim=0)
        clip.ln_final.bias.add_(text_common_component * width**0.5 * common)
    return clip


def untrained_clip(config: dict, seed: int) -> open_clip.CLIP:
    """A CLIP as open_clip initialises it, with made-up BatchNorm statistics: the tiny CLIP issue 12 trained.

    Its image features hardly vary over an image, so scores of degraded crops start near a tie (level SRCC near 0)
    and fine-tuning with the defaults moves them decisively (0.002 -> 0.45 in 90 steps of the ten-photo run). From
    :func:`random_clip`, whose features and prompt pairs make every part of the forward matter, the same run starts
    anywhere in [-0.2, 0.35] and moves by 0.1-0.3 (three seeds): the paper's margins of 0.01 are sized for CLIP's
    cosines, not for a random network's. Training tests that need learning to show start from this one.
    """
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**config).eval()
    with torch.no_grad():
        for module in clip.visual.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
        clip.visual.attnpool.positional_embedding.normal_(0, 1)
    return clip


def official_state(clip: open_clip.CLIP, texts=OFFICIAL_TEXTS) -> dict:
    """The checkpoint dict in the official format: ``clip_model.*`` plus ``prompts_features``."""
    with torch.no_grad():
        features = clip.encode_text(open_clip.tokenize(texts), normalize=True)
    state = {f"clip_model.{k}": v.clone() for k, v in clip.state_dict().items()}
    state["prompts_features"] = features
    return state


def write_checkpoint(path: Path, config: dict, seed: int, build=random_clip, **options) -> Path:
    """Saves ``official_state(build(config, seed, **options))`` to ``path``; ``build`` is :func:`random_clip` or
    :func:`untrained_clip`."""
    torch.save(official_state(build(config, seed, **options)), path)
    return path


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
