"""A tiny QualiCLIP checkpoint whose scores move, for tests of quality maps and of the loss.

``conftest.random_clip`` gives features dominated by one constant direction: every crop of a picture scores about the
same, and several prompt pairs sit at probability 0 or 1. Here the same tiny architecture is calibrated on a few
pictures, as training would: each BatchNorm gets the statistics of its input on them (so activations are centred and
ReLUs are half off), attention is sharpened (``q_proj`` scaled), and the prompt features are built around the
directions in which the pictures' features vary, each pair spread so that its probability moves around the middle of
(0, 1). Every tensor stays in the official checkpoint format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from helpers import TINY_CONFIG, natural_image, official_state, random_clip
from reference_qualiclip import MEAN, STD, image_features

# Pair k's logit difference 100 * (cos+ - cos-) gets this standard deviation over the calibration pictures. Larger
# makes scores steeper functions of the features, so float32 rounding (~5e-7 of a feature) shows more in scores.
_LOGIT_SPREAD = 1.0
_ATTENTION_SHARPNESS = 4.0


def calibration_images(seed: int) -> torch.Tensor:
    """Crops of natural pictures, clean and degraded (noise, blur), ``N x 3 x 64 x 64`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(8):
        picture = torch.from_numpy(natural_image(128, 96, seed * 100 + index)).permute(2, 0, 1).float() / 255
        for _ in range(4):
            x, y = rng.integers(0, 64), rng.integers(0, 32)
            crop = picture[:, y:y + 64, x:x + 64]
            kind = rng.integers(0, 3)
            if kind == 1:
                crop = crop + torch.from_numpy(rng.normal(0, 0.15, crop.shape)).float()
            elif kind == 2:
                crop = F.avg_pool2d(crop[None], 5, stride=1, padding=2, count_include_pad=False)[0]
            crops.append(crop.clamp(0, 1))
    return torch.stack(crops)


def lively_state(seed: int = 0) -> dict:
    """The checkpoint dict (``clip_model.*`` plus ``prompts_features``) of a calibrated tiny model."""
    clip = random_clip(TINY_CONFIG, seed)
    normalized = (calibration_images(seed) - MEAN) / STD
    trunk = clip.visual
    for module in trunk.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # one pass in train mode: running statistics = the batch's statistics
    trunk.train()
    with torch.no_grad():
        trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(trunk.stem(normalized)))))
    clip.eval()

    state = official_state(clip)
    weights = {k[len("clip_model."):]: v for k, v in state.items() if k.startswith("clip_model.")}
    weights["visual.attnpool.q_proj.weight"] = weights["visual.attnpool.q_proj.weight"] * _ATTENTION_SHARPNESS
    features = F.normalize(image_features(weights, normalized), dim=-1)

    pairs = state["prompts_features"].shape[0] // 2
    generator = torch.Generator().manual_seed(seed)
    directions = torch.linalg.svd(features - features.mean(0), full_matrices=False).Vh[:pairs]
    prompts = []
    for direction in directions:
        anchor = F.normalize(torch.randn(features.shape[1], generator=generator, dtype=torch.float64), dim=0)
        # cos(f, a + e d) - cos(f, a - e d) is about 2 e (f . d) for small e: scale e to the wanted spread.
        epsilon = _LOGIT_SPREAD / (100 * 2 * (features @ direction).std())
        prompts += [F.normalize(anchor + epsilon * direction, dim=0), F.normalize(anchor - epsilon * direction, dim=0)]
    state = {f"clip_model.{k}": v for k, v in weights.items()}
    state["prompts_features"] = torch.stack(prompts).float()
    return state


def write_lively_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.save(lively_state(seed), path)
    return path
