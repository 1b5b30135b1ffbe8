"""Training data: pristine images, seeded overlapping crops, and their degradation on the device.

Every random choice is drawn from a generator keyed by ``(seed, purpose, index)`` rather than from a running
state, so a sample depends only on its index: runs are reproducible whatever the number of loader workers, and a
resumed run only needs to know how many samples it has consumed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..files import image_extensions
from ..images import open_image
from .degradations import NUM_LEVELS, degrade

CROPS_PER_SAMPLE = 2
# A crop's offset from its partner is at most this fraction of the crop side in each direction, so the two always
# share at least a quarter of their area (our choice: the paper only says "overlapping").
MAX_CROP_SHIFT = 0.5

# Purposes that key the random streams.
TRAIN_SAMPLES, TRAIN_DEGRADATIONS, VALIDATION_SAMPLES, VALIDATION_DEGRADATIONS, SPLIT = range(5)

def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on all ``keys`` (non-negative ints) and on nothing else."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def keyed_rng(*keys: int) -> np.random.Generator:
    """A numpy generator keyed by ``keys``: the same keys always give the same draws."""
    return np.random.default_rng([int(k) for k in keys])


def list_images(root: Union[str, os.PathLike]) -> List[Path]:
    """Image files under ``root``, recursively, by suffix (any format Pillow reads), in sorted order.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in image_extensions() and path.is_file())


def split_images(paths: Sequence[Path], val_fraction: float, seed: int) -> Tuple[List[Path], List[Path]]:
    """Splits images into disjoint training and validation lists, by a seeded shuffle.

    Args:
        paths: The images.
        val_fraction: Share held out, in [0, 1). Any positive share holds out at least one image and leaves at
            least one for training.
        seed: Seed of the shuffle.

    Returns:
        ``(train, validation)``, each in the order of ``paths``.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1), or too few images to hold any out.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    count = round(len(paths) * val_fraction)
    if val_fraction > 0:
        if len(paths) < 2:
            raise ValueError(f"{len(paths)} image(s): need at least 2 to hold one out for validation")
        count = min(max(count, 1), len(paths) - 1)
    held_out = set(keyed_rng(seed, SPLIT).permutation(len(paths))[:count].tolist())
    return ([p for i, p in enumerate(paths) if i not in held_out], [p for i, p in enumerate(paths) if i in held_out])


def overlapping_boxes(width: int, height: int, size: int, count: int,
                      rng: np.random.Generator) -> List[Tuple[int, int]]:
    """Top-left corners of ``count`` square crops of side ``size`` that all overlap the first one.

    The first crop is uniform over the image; each other is shifted from it by at most ``MAX_CROP_SHIFT * size``
    along each axis, staying inside the image.

    Raises:
        ValueError: The image is smaller than a crop.
    """
    if width < size or height < size:
        raise ValueError(f"a {width}x{height} image cannot hold a {size}x{size} crop")
    shift = int(MAX_CROP_SHIFT * size)
    left, top = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
    boxes = [(left, top)]
    for _ in range(count - 1):
        boxes.append((int(rng.integers(max(0, left - shift), min(width - size, left + shift) + 1)),
                      int(rng.integers(max(0, top - shift), min(height - size, top + shift) + 1))))
    return boxes


def fit_for_crops(image: Image.Image, size: int) -> Image.Image:
    """Upscales (bicubic) an image whose shorter side is below ``size`` so that a crop fits; others are unchanged."""
    width, height = image.size
    if min(width, height) >= size:
        return image
    scale = size / min(width, height)
    return image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)


class CropStream(Dataset):
    """An endless, seeded stream of crop groups: sample ``k`` is fully determined by ``(seed, k)``.

    Epoch ``e`` is samples ``e * len(paths)`` to ``(e + 1) * len(paths) - 1``: every image once, in an order
    shuffled per epoch. A sample is ``crops`` overlapping crops of one image (``crops x 3 x size x size`` uint8) and
    the index of the distortion type that will degrade them all. Index it with any sampler of sample numbers, e.g.
    a ``range``.

    Args:
        paths: The images.
        crop_size: Side of the square crops; smaller images are upscaled to fit.
        crops: Crops per sample.
        num_distortions: Distortion types to choose from (uniformly), as indices ``0 .. num_distortions - 1``.
        seed: Seed of the stream.
        purpose: Keys the stream, so that e.g. validation samples differ from training samples.
    """

    def __init__(self, paths: Sequence[Path], crop_size: int, crops: int, num_distortions: int, seed: int,
                 purpose: int = TRAIN_SAMPLES):
        if not paths:
            raise ValueError("no images to sample from")
        self.paths = list(paths)
        self.crop_size = crop_size
        self.crops = crops
        self.num_distortions = num_distortions
        self.seed = seed
        self.purpose = purpose
        self._order: Tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))

    def image_index(self, sample: int) -> int:
        """Which image sample ``sample`` is cut from."""
        epoch, position = divmod(sample, len(self.paths))
        if self._order[0] != epoch:
            self._order = (epoch, keyed_rng(self.seed, self.purpose, epoch).permutation(len(self.paths)))
        return int(self._order[1][position])

    def __getitem__(self, sample: int) -> Tuple[torch.Tensor, int]:
        rng = keyed_rng(self.seed, self.purpose, sample)
        image = fit_for_crops(open_image(self.paths[self.image_index(sample)]), self.crop_size)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        boxes = overlapping_boxes(image.width, image.height, self.crop_size, self.crops, rng)
        crops = torch.stack([pixels[:, top:top + self.crop_size, left:left + self.crop_size]
                             for left, top in boxes])
        return crops, int(rng.integers(self.num_distortions))


def spread_levels(count: int) -> Tuple[int, ...]:
    """``count`` increasing levels spread evenly over 1..NUM_LEVELS, always including both ends.

    Raises:
        ValueError: ``count`` is not in 2..NUM_LEVELS.
    """
    if not 2 <= count <= NUM_LEVELS:
        raise ValueError(f"the number of levels must be from 2 to {NUM_LEVELS}, got {count}")
    return tuple(int(level) for level in np.linspace(1, NUM_LEVELS, count).round())


def degrade_levels(crops: torch.Tensor, distortions: torch.Tensor, names: Sequence[str], levels: Sequence[int],
                   seed: int) -> torch.Tensor:
    """Degrades every crop of every sample at every level, on the crops' device.

    Every level of a crop uses the same random draws (e.g. one motion-blur angle), so its levels differ in intensity
    alone: the ranking losses then compare like with like.

    Args:
        crops: ``B x C x 3 x H x W`` float crops in [0, 1].
        distortions: ``(B,)`` indices into ``names``: the type that degrades each sample.
        names: Distortion type names.
        levels: Levels to apply, mildest first.
        seed: Seed of the degradations' random draws.

    Returns:
        ``B x C x L x 3 x H x W`` degraded crops.
    """
    batch, count = crops.shape[:2]
    out = crops.new_empty(batch, len(levels), count, *crops.shape[2:])
    generator = torch.Generator(device=crops.device)
    for index in distortions.unique().tolist():
        members = (distortions == index).nonzero().flatten().to(crops.device)
        # One call per type and level: the per-call cost, not the pixel count, dominates small batches.
        group = crops[members].flatten(0, 1)
        type_seed = derive_seed(seed, index)
        for position, level in enumerate(levels):
            generator.manual_seed(type_seed)
            out[members, position] = degrade(group, names[index], level, generator).unflatten(0, (-1, count))
    return out.transpose(1, 2)


def read_mos_csv(path: Union[str, os.PathLike]) -> List[Tuple[Path, float]]:
    """Reads a ``path,mos`` CSV of human quality scores; relative image paths are relative to the CSV's folder.

    Raises:
        FileNotFoundError: The CSV or an image it names does not exist.
        ValueError: No ``path`` or ``mos`` column, a MOS that is not a finite number, or fewer than 2 rows.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        if not {"path", "mos"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: needs the columns 'path' and 'mos', found {reader.fieldnames}")
        rows = []
        for row in reader:
            image = path.parent / row["path"].strip()
            try:
                mos = float(row["mos"])
            except (TypeError, ValueError):
                mos = float("nan")
            if not np.isfinite(mos):
                raise ValueError(f"{path}, line {reader.line_num}: MOS {row['mos']!r} is not a number")
            if not image.is_file():
                raise FileNotFoundError(f"{path}, line {reader.line_num}: no such image {image}")
            rows.append((image, mos))
    if len(rows) < 2:
        raise ValueError(f"{path}: {len(rows)} row(s); correlations need at least 2")
    return rows
