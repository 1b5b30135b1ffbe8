"""Reading Parquet files of encoded images row group by row group (memory bounded whatever the file size).

The image column holds encoded bytes (img2dataset's ``jpg``) or Hugging Face's ``{"bytes": ..., "path": ...}``
struct. Each row becomes an :class:`~.entries.Entry` named ``FILE::ROW`` (the row's number in the file, from 0),
carrying the id columns.
"""

from __future__ import annotations

from typing import IO, Any, AbstractSet, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..extras import require
from ..messages import first_line
from .entries import SOURCE_SEPARATOR, Entry, SourceError

DEFAULT_IMAGE_COLUMNS = ("jpg", "png", "webp", "image", "bytes")
# Rows read at a time: the engine already holds a window of 256 encoded images, so a smaller batch adds little to
# it (a batch of 64 large photos is still a few hundred MB).
_BATCH_ROWS = 64
_READ_BUFFER = 1 << 20


def _is_image_type(column_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type):
        return True
    return pa.types.is_struct(column_type) and any(
        column_type.field(i).name == "bytes" for i in range(column_type.num_fields))


def image_column(schema: Any, requested: Optional[str], path: str) -> str:
    """The column holding the images: ``requested``, else the first of :data:`DEFAULT_IMAGE_COLUMNS` that is binary
    (or a struct with a ``bytes`` field).

    Raises:
        SourceError: No such column, or it holds no bytes.
    """
    if requested is not None:
        if requested not in schema.names:
            raise SourceError(f"{path}: no column {requested!r} (--image-col); columns: {', '.join(schema.names)}")
        if not _is_image_type(schema.field(requested).type):
            raise SourceError(f"{path}: column {requested!r} holds {schema.field(requested).type}, not image bytes")
        return requested
    for name in DEFAULT_IMAGE_COLUMNS:
        if name in schema.names and _is_image_type(schema.field(name).type):
            return name
    raise SourceError(f"{path}: no binary image column among {', '.join(DEFAULT_IMAGE_COLUMNS)}; name it with "
                      f"--image-col (columns: {', '.join(schema.names)})")


def _parquet_file(path: str, handle: IO[bytes]) -> Any:
    pq = require("pyarrow.parquet", "ray", "Reading Parquet files")

    try:
        # Without pre-buffering, pyarrow reads the column chunks of the row groups it is decoding, not the whole file
        # ahead (which it otherwise does for iter_batches over every row group: memory as large as the file).
        return pq.ParquetFile(handle, pre_buffer=False, buffer_size=_READ_BUFFER)
    except Exception as error:  # pyarrow raises its own types for files that are not Parquet
        raise SourceError(f"{path}: not a Parquet file: {first_line(error)}") from error


def _opened(path: str, opener: Callable[[str], IO[bytes]]) -> IO[bytes]:
    try:
        return opener(path)
    except OSError as error:
        raise SourceError(f"{path}: {'no such file' if isinstance(error, FileNotFoundError) else first_line(error)}"
                          ) from None


def check_columns(path: str, opener: Callable[[str], IO[bytes]], image_col: Optional[str],
                  id_cols: Optional[Sequence[str]]) -> Dict[str, Any]:
    """Checks that a Parquet file has its image column (see :func:`image_column`) and returns its id columns with
    their Arrow types: ``id_cols`` (each must exist), else ``key`` when present, else ``row`` (the row number, int64).

    Raises:
        SourceError: The file cannot be read, or lacks a column.
    """
    import pyarrow as pa

    with _opened(path, opener) as handle:
        schema = _parquet_file(path, handle).schema_arrow
        image_column(schema, image_col, path)
        return {name: schema.field(name).type if name in schema.names else pa.int64()
                for name in _id_columns(path, id_cols, schema.names)}


def _id_columns(path: str, requested: Optional[Sequence[str]], names: Sequence[str]) -> List[str]:
    if requested:
        missing = [name for name in requested if name not in names]
        if missing:
            raise SourceError(f"{path}: no column {', '.join(map(repr, missing))} (--id-col); "
                              f"columns: {', '.join(names)}")
        return list(requested)
    return ["key"] if "key" in names else ["row"]


def iter_parquet(path: str, opener: Callable[[str], IO[bytes]], image_col: Optional[str],
                 id_cols: Optional[Sequence[str]], skip: AbstractSet[str] = frozenset(),
                 row_groups: Optional[Tuple[int, int]] = None) -> Iterator[Entry]:
    """The rows of a Parquet file as entries, a batch of rows at a time; a file that cannot be used gives one error
    entry named ``FILE``. Names in ``skip`` are not yielded (``--resume``).

    Args:
        row_groups: ``(first, stop)``: only the rows of those row groups, numbered as in the whole file (a Ray run
            splits a large file between actors); the part starting at group 0 reports a file that cannot be used.
    """
    first = row_groups[0] if row_groups else 0
    try:
        handle = _opened(path, opener)
    except SourceError as error:
        if path not in skip and first == 0:
            yield Entry(path, None, {}, str(error)[len(path) + 2:])
        return
    with handle:
        yield from _rows(path, handle, image_col, id_cols, skip, row_groups)


def row_group_count(path: str, opener: Callable[[str], IO[bytes]]) -> Optional[int]:
    """The number of row groups of a Parquet file, or ``None`` when it cannot be read (its reader will say why)."""
    try:
        with _opened(path, opener) as handle:
            return _parquet_file(path, handle).metadata.num_row_groups
    except SourceError:
        return None


def _rows(path: str, handle: IO[bytes], image_col: Optional[str], id_cols: Optional[Sequence[str]],
          skip: AbstractSet[str], row_groups: Optional[Tuple[int, int]]) -> Iterator[Entry]:
    first = row_groups[0] if row_groups else 0
    try:
        parquet = _parquet_file(path, handle)
        schema = parquet.schema_arrow
        column = image_column(schema, image_col, path)
        ids = _id_columns(path, id_cols, schema.names)
    except SourceError as error:
        if path not in skip and first == 0:
            yield Entry(path, None, {}, str(error)[len(path) + 2:])
        return
    stored_ids = [name for name in ids if name != "row" or "row" in schema.names]
    groups = range(*row_groups) if row_groups else range(parquet.metadata.num_row_groups)
    row = sum(parquet.metadata.row_group(group).num_rows for group in range(first))
    try:
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, row_groups=list(groups),
                                          columns=[column, *stored_ids]):
            images = batch.column(column).to_pylist()
            carried = {name: batch.column(name).to_pylist() for name in stored_ids}
            for position, value in enumerate(images):
                name = f"{path}{SOURCE_SEPARATOR}{row}"
                if name not in skip:
                    extra = {key: carried[key][position] if key in carried else row for key in ids}
                    yield _entry(name, value, column, extra)
                row += 1
    except Exception as error:  # a corrupt row group: report it and keep the rows already read
        if f"{path}{SOURCE_SEPARATOR}{row}" not in skip:
            yield Entry(f"{path}{SOURCE_SEPARATOR}{row}", None, {}, f"cannot read row {row} onwards: {first_line(error)}")


def _entry(name: str, value: Any, column: str, extra: dict) -> Entry:
    if isinstance(value, dict):  # Hugging Face's Image feature as stored: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if value is None:
        return Entry(name, None, extra, f"no image bytes in column {column!r}")
    return Entry(name, value, extra)
