"""Finding the training images and checking them before training: the unusable ones are left out with one warning.

Discovery is :func:`qualiclip_infer.files.find_images`, the same as ``qualiclip-score``'s (same extensions, hidden
files skipped unless asked). The check reads each header with the scorer's probe (``images.probe``); a full decode,
which also catches a file truncated after a readable header, is done up front only when it is cheap (see
:func:`decode_up_front`).
Whatever slips through (or breaks later) is skipped when the training loader meets it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

from PIL import Image

from ..messages import first_line
from ..files import find_images
from ..images import ImageError, describe_error, probe

DECODE_CHECKS = ("auto", "upfront", "lazy")
# Decode rate assumed for the up-front estimate, per process (our measurement, rounded down: a 2-core AMD EPYC
# decodes JPEG at 1/8 scale at 25-55 Mpx/s and PNG at 9-15 Mpx/s; see benchmarks/RESULTS.md).
DECODE_PIXELS_PER_SECOND = 10e6
# ``auto`` decodes up front when that is estimated to take at most this long (our choice): a small folder gets its
# truncated files named before training; 100,000 photos of 12 Mpx would take hours, so they are checked lazily.
UP_FRONT_DECODE_BUDGET_S = 60.0
# How many bad files the warning names before "and N more".
NAMED_IN_WARNING = 5


class Rejected(NamedTuple):
    """An image left out, and why (one line, starting with its path)."""

    path: Path
    reason: str


def list_images(root: Union[str, os.PathLike], hidden: bool = False) -> List[Path]:
    """Image files under ``root``, recursively, by the rules of ``qualiclip-score``, in sorted order.

    Args:
        root: A folder.
        hidden: Also take files and folders whose names start with '.' (e.g. macOS ``._photo.jpg``).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    return sorted(Path(path) for path in find_images([os.fspath(root)], recursive=True, hidden=hidden))


def probe_size(path: Path, min_side: int) -> Tuple[int, int]:
    """Upright ``(width, height)`` from the header (the scorer's probe); raises :class:`ImageError` when unreadable or
    under ``min_side``."""
    width, height = probe(path, os.fspath(path))
    if min(width, height) < min_side:
        raise ImageError(f"{os.fspath(path)}: image is {width}x{height}, smaller than the {min_side}x{min_side} crop")
    return width, height


def decode_check(path: Path) -> None:
    """Decodes every byte of the image's pixel data, at 1/8 scale where the format allows it (JPEG).

    Raises:
        ImageError: The data are truncated or corrupt.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # as in images.open_image: Pillow's plugins raise many types on corrupt data
        raise ImageError(f"{os.fspath(path)}: {describe_error(error)}") from error


def decode_up_front(pixels: int, workers: int, mode: str) -> bool:
    """Whether :func:`check_images` should decode every image (``mode`` ``auto``: when estimated to be cheap)."""
    if mode not in DECODE_CHECKS:
        raise ValueError(f"decode check must be one of {', '.join(DECODE_CHECKS)}, got {mode!r}")
    if mode != "auto":
        return mode == "upfront"
    return pixels / DECODE_PIXELS_PER_SECOND / max(1, workers) <= UP_FRONT_DECODE_BUDGET_S


class _Check:
    """Checks one image: its reason for rejection (``None`` if usable) and its pixel count (picklable, so that loader
    worker processes can run it)."""

    def __init__(self, paths: Sequence[Path], min_side: int, decode: bool):
        self.paths, self.min_side, self.decode = paths, min_side, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[Optional[str], int]:
        path = self.paths[index]
        try:
            if self.decode:
                decode_check(path)
                return None, 0
            width, height = probe_size(path, self.min_side)
        except ImageError as error:
            return first_line(error), 0
        return None, width * height


def _run_checks(check: _Check, workers: int) -> List[Tuple[Optional[str], int]]:
    # Worker processes pay off only for many files: starting one costs about as much as checking 100 headers.
    if workers < 2 or len(check) < 100 * workers:
        return [check[index] for index in range(len(check))]
    from torch.utils.data import DataLoader

    loader = DataLoader(check, batch_size=32, num_workers=workers, collate_fn=list)
    return [result for batch in loader for result in batch]


def check_images(paths: Sequence[Path], min_side: int, workers: int = 0,
                 decode: str = "auto") -> Tuple[List[Path], List[Rejected], bool]:
    """Splits images into usable ones and rejected ones, by header (always) and full decode (see ``decode``).

    Args:
        paths: The images.
        min_side: Least width and height (the crop size).
        workers: Processes to check with (0 or 1: this one).
        decode: ``upfront``: decode every image; ``lazy``: headers only, the loader skips what fails to decode;
            ``auto``: decode up front when estimated to take at most ``UP_FRONT_DECODE_BUDGET_S``.

    Returns:
        ``(usable, rejected, decoded)``: the usable images in the order given, the others with their reasons, and
        whether every usable image was decoded.
    """
    rejected: List[Rejected] = []
    usable, pixels = [], 0
    for path, (reason, count) in zip(paths, _run_checks(_Check(paths, min_side, decode=False), workers)):
        if reason is None:
            usable.append(path)
            pixels += count
        else:
            rejected.append(Rejected(path, reason))
    decoded = decode_up_front(pixels, workers, decode)
    if decoded and usable:
        failures = [reason for reason, _ in _run_checks(_Check(usable, min_side, decode=True), workers)]
        rejected += [Rejected(path, reason) for path, reason in zip(usable, failures) if reason is not None]
        usable = [path for path, reason in zip(usable, failures) if reason is None]
    order = {path: index for index, path in enumerate(paths)}
    return usable, sorted(rejected, key=lambda entry: order[entry.path]), decoded


def rejection_warning(rejected: Sequence[Rejected], total: int, min_side: int) -> str:
    """One line naming the first few rejected images and their reasons, and how many there are."""
    named = "; ".join(entry.reason for entry in rejected[:NAMED_IN_WARNING])
    more = f"; and {len(rejected) - NAMED_IN_WARNING} more" if len(rejected) > NAMED_IN_WARNING else ""
    return (f"warning: left out {len(rejected)} of {total} images (unreadable, truncated or smaller than the "
            f"{min_side}x{min_side} crop): {named}{more}")
