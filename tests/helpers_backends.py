"""Files for the backend and export tests: a QualiCLIP+ prompt file for the tiny checkpoint, a folder of good and
broken images, custom prompts, and a corrupted copy of an exported ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import torch
from helpers import TINY_CONFIG, natural_image, random_clip, save_image
from helpers_presets import qualiclip_plus_params

CUSTOM_PROMPTS = [("A crisp, clean photo.", "A smeared, grainy photo."), ("Bright colours.", "Washed-out colours.")]
# (width, height): square, non-square and odd, as the issue asks.
SIZES = [(224, 224), (320, 192), (97, 131)]


def write_plus_prompt_file(path: Path, seed: int = 0) -> Path:
    """A QualiCLIP+ prompt-learner file fitted to the CLIP of conftest's ``tiny_checkpoint`` (``random_clip`` seed
    0), as ``tests/test_presets.py`` builds them."""
    torch.save(qualiclip_plus_params(random_clip(TINY_CONFIG, 0), 20 + seed), path)
    return path


def image_batches(count: int = 2) -> List[torch.Tensor]:
    """For each of :data:`SIZES`, ``count`` natural images as one ``N x 3 x H x W`` float batch in [0, 1]."""
    batches = []
    for width, height in SIZES:
        arrays = [natural_image(width, height, seed=7 * width + height + i) for i in range(count)]
        batches.append(torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays]).float() / 255)
    return batches


def folder_with_broken_files(root: Path) -> List[Path]:
    """Good JPEG/PNG photos of two sizes, a truncated PNG, a text file named ``.jpg``, an empty file and a 20x20 photo
    (under the 32-pixel minimum); returns the paths in a fixed order."""
    root.mkdir(parents=True, exist_ok=True)
    paths = [save_image(root / f"good{i}.jpg", natural_image(96, 64, seed=i), quality=92) for i in range(3)]
    paths += [save_image(root / f"tall{i}.png", natural_image(48, 80, seed=10 + i)) for i in range(2)]
    truncated = save_image(root / "truncated.png", natural_image(64, 64, seed=20))
    truncated.write_bytes(truncated.read_bytes()[:150])
    (root / "text.jpg").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    paths += [truncated, root / "text.jpg", root / "empty.png", save_image(root / "small.png", natural_image(20, 20))]
    return paths


def corrupt_onnx(source: Path, target: Path) -> Path:
    """A copy of an exported file with :func:`scale_largest_weight` applied."""
    import onnx

    model = onnx.load(str(source))
    scale_largest_weight(model)
    onnx.save_model(model, str(target))
    return target


def scale_largest_weight(model) -> None:
    """Scales the largest weight tensor of an ONNX ``ModelProto`` by 1.01 in place: the file still loads and runs,
    but scores differently (as a bad conversion or a damaged download would)."""
    from onnx import numpy_helper

    largest = max(model.graph.initializer, key=lambda tensor: int(np.prod(tensor.dims)))
    largest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(largest) * np.float32(1.01), largest.name))
