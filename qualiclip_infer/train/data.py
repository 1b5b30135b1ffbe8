"""Training data: pristine images, seeded overlapping crops, and their degradation on the device.

Every random choice is drawn from a generator keyed by ``(seed, purpose, index)`` rather than from a running
state, so a sample depends only on its index (and on which images turned out unusable): runs are reproducible
whatever the number of loader workers, and a resumed run only needs to know how many samples it has consumed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Iterator, List, NamedTuple, Sequence, Set, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..messages import first_line
from ..images import ImageError, open_image
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


class Sample(NamedTuple):
    """One sample of a :class:`CropStream`."""

    crops: torch.Tensor  # crops x 3 x size x size, uint8
    distortion: int  # index of the distortion type that degrades all its crops
    skipped: Tuple[str, ...]  # one line per image that failed to load for it (each starts with the image's path)


class Batch(NamedTuple):
    """Samples collated by :func:`collate_samples`."""

    crops: torch.Tensor  # B x crops x 3 x size x size, uint8
    distortions: torch.Tensor  # (B,) int64
    skipped: Tuple[str, ...]


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Stacks samples into a :class:`Batch` (a DataLoader ``collate_fn``)."""
    return Batch(torch.stack([sample.crops for sample in samples]),
                 torch.tensor([sample.distortion for sample in samples], dtype=torch.int64),
                 tuple(line for sample in samples for line in sample.skipped))


class StreamSampler(Sampler):
    """Sample numbers ``start, start + 1, ..., stop - 1`` of a :class:`CropStream`.

    One pass runs over as many epochs as the run needs, so one loader (and one set of worker processes) serves the
    whole run. The shuffle is the stream's, seeded per epoch, so the position to resume from is just the number of
    samples consumed.
    """

    def __init__(self, start: int, stop: int):
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, got {start} and {stop}")
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class CropStream(Dataset):
    """An endless, seeded stream of crop groups: sample ``k`` is determined by ``(seed, k)`` and the unusable images.

    Epoch ``e`` is samples ``e * len(paths)`` to ``(e + 1) * len(paths) - 1``: every image once, in an order
    shuffled per epoch. A sample is ``crops`` overlapping crops of one image and the index of the distortion type that
    will degrade them all. An image that cannot be used (unreadable, truncated, smaller than a crop, deleted) is
    skipped: the sample takes the next image of the epoch's order instead, with the same random draws, and reports
    the failure in :attr:`Sample.skipped`; this stream then avoids the image without opening it again. Skipping the
    same images thus gives the same samples, whether they were known to be bad up front (``unusable``) or found so
    on the way.

    Args:
        paths: The images.
        crop_size: Side of the square crops; images with a smaller side are unusable.
        crops: Crops per sample.
        num_distortions: Distortion types to choose from (uniformly), as indices ``0 .. num_distortions - 1``.
        seed: Seed of the stream.
        purpose: Keys the stream, so that e.g. validation samples differ from training samples.
        unusable: Images to skip without opening them.
    """

    def __init__(self, paths: Sequence[Path], crop_size: int, crops: int, num_distortions: int, seed: int,
                 purpose: int = TRAIN_SAMPLES, unusable: Iterable[Path] = ()):
        if not paths:
            raise ValueError("no images to sample from")
        self.paths = list(paths)
        self.crop_size = crop_size
        self.crops = crops
        self.num_distortions = num_distortions
        self.seed = seed
        self.purpose = purpose
        self.unusable: Set[Path] = set(unusable)
        self._order: Tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))

    def image_index(self, sample: int, offset: int = 0) -> int:
        """Which image sample ``sample`` is cut from; with ``offset``, the one that many places later in the epoch."""
        epoch, position = divmod(sample, len(self.paths))
        if self._order[0] != epoch:
            self._order = (epoch, keyed_rng(self.seed, self.purpose, epoch).permutation(len(self.paths)))
        return int(self._order[1][(position + offset) % len(self.paths)])

    def __getitem__(self, sample: int) -> Sample:
        rng = keyed_rng(self.seed, self.purpose, sample)
        skipped: List[str] = []
        for offset in range(len(self.paths)):
            path = self.paths[self.image_index(sample, offset)]
            if path in self.unusable:
                continue
            try:
                pixels = self._pixels(path)
            except ImageError as error:
                self.unusable.add(path)
                skipped.append(first_line(error))
                continue
            # Drawn only once an image has loaded, so that skipping one leaves the draws unchanged.
            boxes = overlapping_boxes(pixels.shape[2], pixels.shape[1], self.crop_size, self.crops, rng)
            crops = torch.stack([pixels[:, top:top + self.crop_size, left:left + self.crop_size]
                                 for left, top in boxes])
            return Sample(crops, int(rng.integers(self.num_distortions)), tuple(skipped))
        last = skipped[-1] if skipped else "every one had failed before"
        raise ImageError(f"none of the {len(self.paths)} images can be used any more (last failure: {last})")

    def _pixels(self, path: Path) -> torch.Tensor:
        """``3 x H x W`` uint8 pixels of an image that holds a crop; raises :class:`ImageError` otherwise."""
        image = open_image(path)
        if min(image.size) < self.crop_size:
            raise ImageError(f"{os.fspath(path)}: image is {image.width}x{image.height}, smaller than the "
                             f"{self.crop_size}x{self.crop_size} crop")
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


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
