"""The pictures of a report: for each scored image a small thumbnail and a larger view, JPEG files in the report's
``report_files/`` folder, and, when a quality map was drawn, the map part of its PNG at the view's size.

One pass: each image file is decoded once (JPEGs at a reduced scale straight from the decoder), the view is shrunk
from it and the thumbnail from the view. Files are named by a digest of the image path and are kept when newer than
their source, so building the report of a grown collection again only makes the new ones.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from PIL import Image, ImageOps

from ..constants import default_workers
from ..messages import first_line
from .rows import ReportRow

THUMBNAIL_SIDE = 240
VIEW_SIDE = 1280
_QUALITY = 82


@dataclass(frozen=True)
class Preview:
    """Where a row's pictures are, relative to the report's folder (``map`` is empty without a quality map)."""

    thumbnail: str
    view: str
    map: str = ""


@dataclass
class PreviewSet:
    """The pictures made for a report.

    Attributes:
        previews: Per image path, its :class:`Preview` (images that could not be read have none).
        failures: ``path: reason`` for each image or map that could not be read.
        made: How many images were decoded (the others' files were up to date).
    """

    previews: Dict[str, Preview]
    failures: List[str]
    made: int


def make_previews(rows: Sequence[ReportRow], report_dir: str, files_dir: str, *,
                  maps: Optional[Mapping[str, str]] = None, root: Optional[str] = None,
                  workers: Optional[int] = None) -> PreviewSet:
    """Makes the thumbnails, views and map views of the scored rows.

    Args:
        rows: The rows; only scored ones get pictures.
        report_dir: The folder of the report page.
        files_dir: The name of the pictures' folder inside it.
        maps: Per image path, its quality map PNG (as ``qualiclip-score --maps`` drew it), where there is one.
        root: The folder relative image paths are relative to (default: the current folder).
        workers: Decoding threads (default: the CPUs, at most 8); Pillow decodes and encodes without the GIL.

    Returns:
        The :class:`PreviewSet`.
    """
    maps = maps or {}
    scored = [row for row in rows if row.score is not None]
    jobs = [(row, _source(row.path, root), maps.get(row.path), os.path.join(report_dir, files_dir)) for row in scored]
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        outcomes = list(pool.map(lambda job: _make(*job), jobs))
    previews, failures, made = {}, [], 0
    for row, (files, problems, decoded) in zip(scored, outcomes):
        failures.extend(f"{row.path}: {problem}" for problem in problems)
        made += decoded
        if files is not None:
            previews[row.path] = Preview(*(f"{files_dir}/{name}" if name else "" for name in files))
    return PreviewSet(previews, failures, made)


def _source(path: str, root: Optional[str]) -> str:
    return path if root is None or os.path.isabs(path) else os.path.join(root, path)


def _make(row: ReportRow, source: str, map_file: Optional[str], folder: str
          ) -> Tuple[Optional[Tuple[str, str, str]], List[str], int]:
    """``(thumbnail, view, map)`` names for a row (``None`` if its image cannot be read), problems, whether decoded."""
    digest = hashlib.sha1(os.fsencode(row.path)).hexdigest()[:20]
    stem = f"{digest[:2]}/{digest[2:]}"
    thumbnail, view, map_view = f"{stem}-t.jpg", f"{stem}-v.jpg", f"{stem}-m.jpg"
    problems: List[str] = []
    decoded = 0
    try:
        if not (_fresh(source, folder, thumbnail) and _fresh(source, folder, view)):
            os.makedirs(os.path.join(folder, digest[:2]), exist_ok=True)
            _write_image_previews(source, os.path.join(folder, view), os.path.join(folder, thumbnail))
            decoded = 1
    except Exception as error:  # Pillow raises many types on unreadable files; each is this image's problem
        return None, [f"no preview: {_describe(error)}"], 0
    if map_file is None or not os.path.exists(map_file):
        return (thumbnail, view, ""), problems, decoded
    try:
        if not _fresh(map_file, folder, map_view):
            _write_map_view(map_file, row, os.path.join(folder, map_view))
        return (thumbnail, view, map_view), problems, decoded
    except Exception as error:  # as above: a broken map only loses its overlay
        problems.append(f"quality map {map_file} not shown: {_describe(error)}")
        return (thumbnail, view, ""), problems, decoded


def _fresh(source: str, folder: str, name: str) -> bool:
    target = os.path.join(folder, name)
    try:
        return os.path.getmtime(target) >= os.path.getmtime(source)
    except OSError:
        return False


def _write_image_previews(source: str, view_path: str, thumbnail_path: str) -> None:
    with Image.open(source) as image:
        # JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers the view: the main saving on large photos.
        image.draft("RGB", (VIEW_SIDE, VIEW_SIDE))
        picture = ImageOps.exif_transpose(image).convert("RGB")
    picture.thumbnail((VIEW_SIDE, VIEW_SIDE), Image.Resampling.LANCZOS)
    picture.save(view_path, "JPEG", quality=_QUALITY)
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    picture.save(thumbnail_path, "JPEG", quality=_QUALITY)


def _write_map_view(map_file: str, row: ReportRow, target: str) -> None:
    """The photo part of a rendered map (its left ``width x height`` pixels; the legend panel is on the right)."""
    with Image.open(map_file) as image:
        width, height = row.width or image.width, row.height or image.height
        if width > image.width or height > image.height:
            raise ValueError(f"the map is {image.width}x{image.height}, smaller than the {width}x{height} photo")
        picture = image.convert("RGB").crop((0, 0, width, height))
    picture.thumbnail((VIEW_SIDE, VIEW_SIDE), Image.Resampling.LANCZOS)
    picture.save(target, "JPEG", quality=_QUALITY)


def _describe(error: BaseException) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
