"""Reading files of human opinion scores (MOS): a generic CSV/TSV, and the published layouts of common datasets.

Every row either becomes an ``(image path, MOS)`` pair or is reported: unreadable rows (by line number), images
that do not exist, and repeated images are counted and named, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

# How many names of excluded rows or images a report lists; the counts are always complete.
EXAMPLES = 5


class MosFileError(ValueError):
    """A MOS file that cannot be read as asked; the message names the file and the cause on one line."""


@dataclass(frozen=True)
class Layout:
    """How a dataset's MOS file is laid out.

    Attributes:
        title: The dataset's name, for messages.
        file_name: The file's published name, used to recognise it.
        path_col: Column of the image names: a header name, or a 1-based number for files without a header.
        mos_col: Column of the opinion scores, likewise.
        header: Whether the first line names the columns.
        delimiter: Field separator; ``None`` for runs of whitespace.
        image_folders: Folders (relative to the MOS file's folder or ``--root``) where the published archive puts
            the images, tried when the names are not found directly there.
        ignore_case: Match image names to files regardless of case.
    """

    title: str
    file_name: str
    path_col: Union[str, int]
    mos_col: Union[str, int]
    header: bool = True
    delimiter: Optional[str] = ","
    image_folders: Tuple[str, ...] = ()
    ignore_case: bool = False


# The published layouts (docs/evaluation.md, "MOS files"). All these MOS rise with quality: KADID-10k's column is
# called "dmos" but holds 1-5 ratings where 5 is best.
LAYOUTS: Dict[str, Layout] = {
    "koniq10k": Layout("KonIQ-10k", "koniq10k_scores_and_distributions.csv", "image_name", "MOS",
                       image_folders=("1024x768", "512x384")),
    "kadid10k": Layout("KADID-10k", "dmos.csv", "dist_img", "dmos", image_folders=("images",)),
    # The archive was made on Windows: some names in the list differ in case from the files.
    "tid2013": Layout("TID2013", "mos_with_names.txt", 2, 1, header=False, delimiter=None,
                      image_folders=("distorted_images",), ignore_case=True),
    "flive": Layout("FLIVE", "labels_image.csv", "name", "mos"),
    "spaq": Layout("SPAQ", "MOS and Image attribute scores.csv", "Image name", "MOS", image_folders=("TestImage",)),
}
GENERIC = "csv"
DATASETS = (GENERIC, *LAYOUTS)


@dataclass
class Excluded:
    """Rows or images left out of an evaluation, and why.

    Attributes:
        count: How many.
        examples: The first few (image names, or ``line N: reason``).
    """

    count: int = 0
    examples: List[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    def describe(self) -> str:
        """``first, second, ...``: the examples, with an ellipsis when there are more."""
        return ", ".join(self.examples) + (", ..." if self.count > len(self.examples) else "")

    def as_dict(self) -> dict:
        return {"count": self.count, "first": list(self.examples)}


@dataclass
class MosTable:
    """The usable rows of a MOS file, and what was left out.

    Attributes:
        source: The MOS file.
        dataset: The layout it was read with (``csv`` or a key of :data:`LAYOUTS`).
        image_dir: The folder image names were resolved against.
        images: Image paths of the usable rows (existing files, each once).
        mos: Their opinion scores, as in the file.
        lower_better: Whether lower values mean better quality (DMOS-style).
        rows: Data rows in the file.
        unreadable: Rows without a usable name or a finite MOS.
        missing: Rows whose image does not exist.
        duplicates: Rows naming an image already listed (the first row is kept).
    """

    source: str
    dataset: str
    image_dir: str
    images: List[str]
    mos: List[float]
    lower_better: bool = False
    rows: int = 0
    unreadable: Excluded = field(default_factory=Excluded)
    missing: Excluded = field(default_factory=Excluded)
    duplicates: Excluded = field(default_factory=Excluded)

    def problems(self) -> List[str]:
        """One line per kind of excluded row, for messages."""
        lines = []
        for what, excluded in (("unreadable rows", self.unreadable), ("images not found", self.missing),
                               ("repeated images", self.duplicates)):
            if excluded.count:
                lines.append(f"{self.source}: {excluded.count} {what}, left out: {excluded.describe()}")
        return lines


def guess_dataset(path: Union[str, os.PathLike]) -> str:
    """The layout whose published file name ``path`` has (case-insensitive), else ``csv``."""
    name = os.path.basename(os.fspath(path)).lower()
    for key, layout in LAYOUTS.items():
        if layout.file_name.lower() == name:
            return key
    return GENERIC


def read_mos(path: Union[str, os.PathLike], *, dataset: Optional[str] = None,
             root: Union[str, os.PathLike, None] = None, path_col: Union[str, int, None] = None,
             mos_col: Union[str, int, None] = None, header: Optional[bool] = None, delimiter: Optional[str] = None,
             lower_better: bool = False) -> MosTable:
    """Reads a file of opinion scores.

    Args:
        path: The MOS file (CSV, TSV, or whitespace-separated for TID2013).
        dataset: ``csv`` (generic) or a key of :data:`LAYOUTS`; default: recognised by the file's published name,
            else ``csv``.
        root: Folder the image names are relative to (absolute names are kept); default: the MOS file's folder.
            For a dataset layout, the folder its archive puts the images in (e.g. ``1024x768/``) is also tried.
        path_col: Column of image names: a header name (matched exactly, else ignoring case), or a 1-based column
            number. Default: the layout's, or ``path`` (``1`` without a header) for ``csv``.
        mos_col: Column of opinion scores, likewise; default the layout's, or ``mos`` (``2`` without a header).
        header: Whether the first line names the columns; default the layout's, or ``True`` for ``csv``.
        delimiter: Field separator; default the layout's, or for ``csv`` a tab if the first line has one, else a
            comma. ``" "`` splits on runs of whitespace.
        lower_better: The file holds DMOS-style values (lower = better quality).

    Returns:
        The usable rows and the excluded ones.

    Raises:
        MosFileError: The file cannot be read, lacks a column, or is not text.
    """
    source = os.fspath(path)
    dataset = dataset or guess_dataset(source)
    if dataset not in DATASETS:
        raise MosFileError(f"{source}: unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    layout = LAYOUTS.get(dataset)
    if header is None:
        header = layout.header if layout else True
    if path_col is None:
        path_col = layout.path_col if layout else ("path" if header else 1)
    if mos_col is None:
        mos_col = layout.mos_col if layout else ("mos" if header else 2)
    text = _read_text(source)
    if delimiter is None:
        delimiter = layout.delimiter if layout else ("\t" if "\t" in text.split("\n", 1)[0] else ",")
    records = _records(source, text, None if delimiter == " " else delimiter)
    described = f"{source} (read as {layout.title})" if layout else source
    if not any(fields for _, fields in records):
        raise MosFileError(f"{described}: no rows")
    names: List[str] = []
    if header:
        first = next(index for index, (_, fields) in enumerate(records) if fields)
        names = [name.strip() for name in records[first][1]]
        records = records[first + 1:]
    path_index = _column(described, names, path_col, "--path-col", layout is not None)
    mos_index = _column(described, names, mos_col, "--mos-col", layout is not None)

    base = os.fspath(root) if root is not None else (os.path.dirname(source) or os.curdir)
    table = MosTable(source, dataset, base, [], [], lower_better)
    parsed: List[Tuple[int, str, float]] = []
    for line, fields in records:
        if not fields or all(not value.strip() for value in fields):
            continue
        table.rows += 1
        if max(path_index, mos_index) >= len(fields):
            table.unreadable.add(f"line {line}: {len(fields)} fields, expected at least {max(path_index, mos_index) + 1}")
            continue
        name, value = fields[path_index].strip(), fields[mos_index].strip()
        mos = _number(value)
        if not name:
            table.unreadable.add(f"line {line}: no image name")
        elif mos is None:
            table.unreadable.add(f"line {line}: MOS {value!r} is not a number")
        else:
            parsed.append((line, name, mos))

    table.image_dir = _image_dir(described, base, layout, [name for _, name, _ in parsed])
    finder = _CaseInsensitive() if layout is not None and layout.ignore_case else None
    seen: Dict[str, int] = {}
    for line, name, mos in parsed:
        image = os.path.normpath(os.path.join(table.image_dir, name))
        if not os.path.isfile(image) and finder is not None:
            image = finder.find(image) or image
        if not os.path.isfile(image):
            table.missing.add(name)
        elif image in seen:
            table.duplicates.add(f"line {line}: {name} (first on line {seen[image]})")
        else:
            seen[image] = line
            table.images.append(image)
            table.mos.append(mos)
    return table


def _read_text(source: str) -> str:
    try:
        with open(source, "rb") as file:
            data = file.read()
    except OSError as error:
        raise MosFileError(f"{source}: {error.strerror or error}") from None
    if data.startswith(b"PK\x03\x04"):
        raise MosFileError(f"{source}: a zip archive or Excel workbook, not text; export the sheet as CSV (UTF-8)")
    if b"\0" in data[:4096]:
        raise MosFileError(f"{source}: a binary file, not CSV/TSV text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MosFileError(f"{source}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None


def _records(source: str, text: str, delimiter: Optional[str]) -> List[Tuple[int, List[str]]]:
    """``(line number, fields)`` per record; ``delimiter=None`` splits on whitespace."""
    if delimiter is None:
        return [(number, line.split()) for number, line in enumerate(text.splitlines(), 1)]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records = []
    try:
        for fields in reader:
            records.append((reader.line_num, fields))
    except csv.Error as error:
        raise MosFileError(f"{source}, line {reader.line_num}: {error}") from None
    return records


def _column(source: str, names: Sequence[str], column: Union[str, int], option: str, preset: bool) -> int:
    """The 0-based index of a column given by header name or 1-based number."""
    if isinstance(column, int) or (isinstance(column, str) and column.strip().isdigit() and column not in names):
        number = int(column)
        if number < 1 or (names and number > len(names)):
            raise MosFileError(f"{source}: {option} {number}: no such column"
                               + (f" (it has {len(names)})" if names else ""))
        return number - 1
    if not names:
        raise MosFileError(f"{source}: {option} {column!r} names a column, but the file has no header; give a "
                           f"1-based column number")
    if column in names:
        return names.index(column)
    folded = [name.casefold() for name in names]
    if folded.count(column.casefold()) == 1:
        return folded.index(column.casefold())
    raise MosFileError(f"{source}: no column {column!r} (columns: {', '.join(names)}); choose one with {option}"
                       + (", or read it as a generic file with --dataset csv" if preset else ""))


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _image_dir(source: str, base: str, layout: Optional[Layout], names: List[str]) -> str:
    """``base``, or the one of the layout's image folders under it that holds the images.

    The first rows decide: the folder where most of them exist wins. Two folders holding them equally (KonIQ-10k's
    1024x768/ and 512x384/ hold the same names) is an error, since the scores differ with resolution.
    """
    if layout is None or not layout.image_folders or not names:
        return base
    sample = names[:20]

    def hits(folder: str) -> int:
        return sum(os.path.isfile(os.path.join(folder, name)) for name in sample)

    found = {base: hits(base)}
    for sub in layout.image_folders:
        folder = os.path.join(base, sub)
        if os.path.isdir(folder):
            found[folder] = hits(folder)
    best = max(found.values())
    winners = [folder for folder, count in found.items() if count == best]
    if best and len(winners) > 1:
        raise MosFileError(f"{source}: images found in both {' and '.join(winners)}; choose one with --root "
                           f"(scores depend on the resolution)")
    return winners[0] if best else base


class _CaseInsensitive:
    """Finds a file whose name differs only in case, listing each folder once."""

    def __init__(self) -> None:
        self._folders: Dict[str, Dict[str, List[str]]] = {}

    def find(self, path: str) -> Optional[str]:
        folder, name = os.path.split(path)
        if folder not in self._folders:
            listing: Dict[str, List[str]] = {}
            try:
                entries = os.listdir(folder or ".")
            except OSError:
                entries = []
            for entry in entries:
                listing.setdefault(entry.casefold(), []).append(entry)
            self._folders[folder] = listing
        matches = self._folders[folder].get(name.casefold(), [])
        return os.path.join(folder, matches[0]) if len(matches) == 1 else None
