"""Fine-tune a tiny QualiCLIP end to end on the CPU in under a minute, with nothing downloaded.

The real recipe starts from the published RN50 checkpoint and a folder of pristine photos::

    qualiclip-train fit --images pristine/ -o model.pth

Here a tiny CLIP with random weights stands in for it, written in the official checkpoint format, and a few
synthetic pictures stand in for the photos. The settings differ from the defaults where a random network needs it
(see the comments). Run: ``python examples/finetune_tiny.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from qualiclip_infer import QualityScorer, save_checkpoint
from qualiclip_infer.presets import OFFICIAL_PROMPT_PAIRS
from qualiclip_infer.prompts import interleave
from qualiclip_infer.train import LossConfig, TrainConfig, degrade, fit

# A CLIP ResNet a few hundred times smaller than RN50, with the same layout.
TINY_CLIP = dict(
    embed_dim=32,
    vision_cfg=dict(layers=[1, 1, 1, 1], width=8, image_size=64, head_width=64),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
    quick_gelu=True,
)
CROP = 64


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random tiny CLIP as an official-format QualiCLIP checkpoint (CLIP tensors plus prompt features)."""
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**TINY_CLIP).eval()
    with torch.no_grad():
        features = clip.encode_text(open_clip.tokenize(interleave(OFFICIAL_PROMPT_PAIRS)), normalize=True)
    return save_checkpoint(path, clip.state_dict(), features)


def synthetic_picture(size: int, seed: int) -> np.ndarray:
    """A uint8 RGB picture with smooth shading, hard-edged shapes and fine texture, like a small photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    picture = np.stack([0.5 + 0.4 * np.sin(6 * x + rng.uniform(0, 6)), 0.3 + 0.5 * y, 0.6 - 0.3 * x * y], axis=-1)
    for _ in range(6):
        cx, cy, radius = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.3)]
        picture[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = rng.uniform(0, 1, 3)
    picture += rng.normal(0, 0.02, picture.shape)
    return (picture.clip(0, 1) * 255).astype(np.uint8)


def main(steps: int = 300) -> None:
    torch.set_num_threads(1)  # the tiny network is too small to gain from more, and loses when cores are shared
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        init = write_tiny_checkpoint(work / "tiny-init.pth")
        (work / "pristine").mkdir()
        for seed in range(12):
            Image.fromarray(synthetic_picture(96, seed)).save(work / "pristine" / f"{seed}.png")

        config = TrainConfig(
            images=work / "pristine", out=work / "tiny-tuned.pth", init=init, device="cpu",
            steps=steps, batch_size=8, crop_size=CROP, workers=0, checkpoint_every=0,
            val_fraction=0.25, val_crops=96, val_every=0,
            distortions=("gaussian_blur", "lens_blur", "motion_blur", "white_noise", "pixelate"),
            # A random network: image-text cosines spread ten times wider than RN50's, so wider margins; BatchNorm
            # statistics never measured on images, so they train; and a higher learning rate than fine-tuning uses.
            loss=LossConfig(margin_pos=0.05, margin_neg=0.05, margin_cons=0.025), train_bn=True, lr=1e-3,
        )
        started = time.perf_counter()
        history = fit(config, log=print)
        print(f"held-out level SRCC {history[0]['level_srcc']:.3f} -> {history[-1]['level_srcc']:.3f} "
              f"in {time.perf_counter() - started:.0f} s")

        clean = torch.from_numpy(synthetic_picture(96, seed=1000)).permute(2, 0, 1).float().div(255)
        blurred = degrade(clean[None], "gaussian_blur", level=4, generator=torch.Generator().manual_seed(0))[0]
        for name, weights in (("random init", init), ("fine-tuned", config.out)):
            scorer = QualityScorer(weights=weights, device="cpu")
            print(f"{name:>11}: clean {scorer.score(clean):.3f}  blurred {scorer.score(blurred):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    main(parser.parse_args().steps)
