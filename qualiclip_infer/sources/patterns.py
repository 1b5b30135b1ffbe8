"""Finding shard and Parquet inputs: brace lists as WebDataset writes them, folders, globs and object-store URIs.

``qualiclip-score`` and ``qualiclip-filter`` ask :func:`plan_sources` first: when no PATH names a tar shard or a
Parquet file it returns ``None`` and the PATHs are plain images; otherwise it lists every input in order, images
included, as a :class:`SourcePlan` that streams their entries.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any, AbstractSet, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..files import find_images, image_extensions
from ..messages import first_line
from ..uris import InputOpener, is_uri, list_uri, open_input
from .entries import Entry, SourceError
from .parquet import check_columns, iter_parquet
from .tar import iter_tar

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_GLOB_MAGIC = re.compile(r"[*?[]")
_MAX_EXPANSION = 10_000_000


def source_kind(path: str) -> Optional[str]:
    """``"tar"``, ``"parquet"`` or ``None`` (an image, or anything else), from the file name."""
    lower = path.lower()
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def expand_braces(pattern: str) -> List[str]:
    """Expands ``{00000..00999}`` ranges (zero padding kept) and ``{a,b,c}`` lists, left to right, as WebDataset does.

    Raises:
        SourceError: The expansion would give more than ten million names.
    """
    match = _BRACE.search(pattern)
    if not match:
        return [pattern]
    inner = match[1]
    ranged = _RANGE.fullmatch(inner)
    if ranged:
        first, last = int(ranged[1]), int(ranged[2])
        width = len(ranged[1]) if ranged[1].lstrip("-").startswith("0") else 0
        step = 1 if last >= first else -1
        choices = [f"{value:0{width}d}" for value in range(first, last + step, step)]
    elif "," in inner:
        choices = inner.split(",")
    else:  # a literal brace, not a pattern
        return [pattern[:match.end()] + rest for rest in expand_braces(pattern[match.end():])]
    tails = expand_braces(pattern[match.end():])
    if len(choices) * len(tails) > _MAX_EXPANSION:
        raise SourceError(f"{pattern}: the brace pattern names over {_MAX_EXPANSION} files")
    return [pattern[:match.start()] + choice + tail for choice in choices for tail in tails]


@dataclass
class SourcePlan:
    """Every input of a run, in order, as ``(kind, path)``: kind ``tar``, ``parquet`` or ``image``.

    Attributes:
        inputs: The inputs.
        image_col: The Parquet image column (``None``: the default choice, see :mod:`.parquet`).
        id_cols: Parquet columns carried into the rows (``None``: ``key`` when present, else the row number).
    """

    inputs: List[Tuple[str, str]]
    image_col: Optional[str] = None
    id_cols: Optional[Sequence[str]] = None
    # extra_column_types, once read: it opens the first Parquet file (a round trip on an object store), and the
    # command, the Ray driver and the actors' options all ask for it.
    _column_types: Optional[Dict[str, Any]] = field(default=None, init=False, repr=False, compare=False)

    def extra_columns(self) -> List[str]:
        """The columns rows carry beyond ``path, score, width, height, error``: ``key`` when there are shards, and
        the id columns of the first Parquet input (whose image and id columns are checked here, before any scoring;
        later files with other columns get an error row each).

        Raises:
            SourceError: The first Parquet input cannot be read, or lacks the image or id columns.
        """
        return list(self.extra_column_types())

    def extra_column_types(self) -> Dict[str, Any]:
        """:meth:`extra_columns` with the Arrow type each has in the first Parquet input (``None``: text, as the
        WebDataset ``key``). Rows written as Parquet or handed over by Ray hold these columns as text; the types
        turn them back into the values a local run gives.

        Raises:
            SourceError: As for :meth:`extra_columns`.
        """
        if self._column_types is None:
            columns: Dict[str, Any] = {}
            if any(kind == "tar" for kind, _ in self.inputs):
                columns["key"] = None
            parquet = [path for kind, path in self.inputs if kind == "parquet"]
            if parquet:
                columns.update(check_columns(parquet[0], open_input, self.image_col, self.id_cols))
            self._column_types = columns
        return dict(self._column_types)

    def is_images(self) -> bool:
        """Whether every input is an image file (no shard, no Parquet file)."""
        return all(kind == "image" for kind, _ in self.inputs)

    def select(self, keep: Callable[[str], bool]) -> "SourcePlan":
        """The plan with only the inputs (shard files, Parquet files, images) whose path ``keep`` accepts."""
        return SourcePlan([(kind, path) for kind, path in self.inputs if keep(path)], self.image_col, self.id_cols)

    def entries(self, skip: AbstractSet[str] = frozenset()) -> Iterator[Entry]:
        """Every image of every input, in order, except those whose name is in ``skip`` (resumed runs)."""
        for kind, path in self.inputs:
            yield from input_entries(kind, path, image_col=self.image_col, id_cols=self.id_cols, skip=skip)


def input_entries(kind: str, path: str, *, image_col: Optional[str] = None, id_cols: Optional[Sequence[str]] = None,
                  skip: AbstractSet[str] = frozenset(), opener: InputOpener = open_input,
                  row_groups: Optional[Tuple[int, int]] = None) -> Iterator[Entry]:
    """The entries of one input of a :class:`SourcePlan` (kind ``tar``, ``parquet`` or ``image``), except those named
    in ``skip``; ``opener`` finds the files (a Ray actor's opener knows the driver's working directory);
    ``row_groups`` ``(first, stop)`` reads only those row groups of a Parquet file."""
    if kind == "tar":
        yield from iter_tar(path, opener, skip)
    elif kind == "parquet":
        yield from iter_parquet(path, opener, image_col, id_cols, skip, row_groups)
    elif path not in skip:
        yield image_entry(path, opener)


def image_entry(path: str, opener: InputOpener = open_input) -> Entry:
    """An image file as an entry: a local path (the engine opens it), or a URI's bytes (read here, through
    ``opener``'s filesystems), or the one-line reason a URI cannot be read."""
    if not is_uri(path):
        return Entry(path, opener.local_path(path))
    try:
        return Entry(path, opener.read(path))
    except OSError as error:  # missing object, permissions, network: an error row
        return Entry(path, None, {}, f"cannot read: {first_line(error)}")


def plan_sources(paths: Sequence[str], *, recursive: bool = True, hidden: bool = False,
                 image_col: Optional[str] = None, id_cols: Optional[Sequence[str]] = None) -> Optional[SourcePlan]:
    """Lists the inputs of PATHs when any of them is (or holds) a tar shard or a Parquet file, else ``None``.

    A PATH may be a file, a folder (searched for shards, Parquet files and images), a glob, a brace pattern
    (``shards/{00000..00999}.tar``) or a URI (``s3://bucket/shards/00042.tar``, or a prefix to list); braces are
    expanded first, and every name they give must exist.

    Raises:
        InputNotFoundError: A PATH (or a name its braces give) names nothing.
        SourceError: A bad brace pattern, or a URI that cannot be listed.
    """
    # A name that exists as written is not a pattern; shards are looked for first, so that a run of images only
    # costs one walk of names here before the image listing.
    names = [name for arg in paths for name in ([arg] if os.path.lexists(arg) else expand_braces(arg))]
    sources = {name: _sources(name, recursive, hidden) for name in names}
    if not any(sources.values()):
        return None
    found: Dict[Tuple[str, str], None] = {}
    for name in names:
        images = [("image", image) for image in _images(name, recursive, hidden)]
        found.update(dict.fromkeys(sorted(sources[name] + images, key=lambda item: item[1])))
    return SourcePlan(list(found), image_col, list(id_cols) if id_cols else None)


def _sources(path: str, recursive: bool, hidden: bool) -> List[Tuple[str, str]]:
    """The shard and Parquet files a name gives (a file, a folder, a glob or a URI); ``[]`` for anything else."""
    if is_uri(path):
        return _list_uri(path, recursive, hidden)
    if os.path.isfile(path):
        return [(source_kind(path), os.path.normpath(path))] if source_kind(path) else []
    if os.path.isdir(path):
        return _walk_sources(path, recursive, hidden)
    found = []
    for match in sorted(glob.glob(path, recursive=True)) if _GLOB_MAGIC.search(path) else []:
        found += _sources(match, recursive, hidden)
    return found


def _images(path: str, recursive: bool, hidden: bool) -> List[str]:
    """The image files a name gives, beside its shards (a URI gives itself when its extension is an image's)."""
    if is_uri(path):
        return [path] if os.path.splitext(path)[1].lower() in image_extensions() else []
    if os.path.isfile(path) and source_kind(path):
        return []
    if _GLOB_MAGIC.search(path) and not os.path.lexists(path) and not glob.glob(path, recursive=True):
        return []
    return find_images([path], recursive=recursive, hidden=hidden)


def _walk_sources(folder: str, recursive: bool, hidden: bool) -> List[Tuple[str, str]]:
    found = []
    for top, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if recursive and (hidden or not name.startswith("."))]
        found += [(source_kind(name), os.path.normpath(os.path.join(top, name))) for name in names
                  if source_kind(name) and (hidden or not name.startswith("."))]
    return found


def _list_uri(uri: str, recursive: bool, hidden: bool) -> List[Tuple[str, str]]:
    return [(source_kind(found), found) for found in list_uri(uri, source_kind, recursive=recursive, hidden=hidden)
            if source_kind(found)]
