"""Writing filtered datasets: numbered tar shards of whole samples and numbered Parquet files of rows.

Each writer fills ``FOLDER/00000.SUFFIX``, ``FOLDER/00001.SUFFIX``... with at most ``size`` samples or rows and
reports the files with their counts; the score of each sample goes into its ``.json`` (tar) or a column (Parquet).
"""

from __future__ import annotations

import copy
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, List, Optional

from ..atomic import AtomicFile
from .tar import Sample

_PARQUET_GROUP_ROWS = 10_000


@dataclass
class _Numbered:
    """Output files ``OUT/00000.SUFFIX``, ``OUT/00001.SUFFIX``..., each holding at most ``size`` units.

    Each is an :class:`~qualiclip_infer.atomic.AtomicFile`: a run that stops midway leaves the files it finished and
    no part of the one it was writing under a shard's name.
    """

    folder: str
    suffix: str
    size: int
    files: List[Dict[str, Any]] = field(default_factory=list)
    _open: Optional[AtomicFile] = None

    def next_file(self) -> BinaryIO:
        """Finishes the current file, and opens the next one (a temporary file until :meth:`finish`)."""
        self.finish()
        path = os.path.join(self.folder, f"{len(self.files):05d}{self.suffix}")
        self.files.append({"file": path, "count": 0})
        self._open = AtomicFile(path)
        return self._open.file

    def finish(self) -> None:
        """Gives the file being written its name."""
        if self._open is not None:
            opened, self._open = self._open, None
            try:
                opened.commit()
            except BaseException:
                opened.discard()
                raise

    def discard(self) -> None:
        """Removes the file being written, leaving the finished ones."""
        if self._open is not None:
            opened, self._open = self._open, None
            self.files.pop()
            opened.discard()

    def full(self) -> bool:
        return not self.files or self.files[-1]["count"] >= self.size


class TarShardWriter:
    """Writes kept samples whole into numbered tar shards, the score added to each sample's ``.json``."""

    def __init__(self, folder: str, size: int, score_key: str):
        self._numbered = _Numbered(folder, ".tar", size)
        self._score_key = score_key
        self._archive: Optional[tarfile.TarFile] = None

    @property
    def files(self) -> List[Dict[str, Any]]:
        return self._numbered.files

    def write(self, sample: Sample, score: float) -> None:
        if self._numbered.full():
            self.close()
            self._archive = tarfile.open(fileobj=self._numbered.next_file(), mode="w", format=tarfile.PAX_FORMAT)
        has_json = False
        for member, data in sample.members:
            if member.name.endswith(".json") and member.name[:-5] == sample.key:
                data, has_json = _with_score(data, self._score_key, score), True
            self._add(member, data)
        if not has_json:
            info = tarfile.TarInfo(f"{sample.key}.json")
            info.mtime = sample.members[0][0].mtime
            self._add(info, json.dumps({self._score_key: score}).encode())
        self._numbered.files[-1]["count"] += 1

    def _add(self, member: tarfile.TarInfo, data: bytes) -> None:
        info = copy.copy(member)
        info.size = len(data)
        info.pax_headers = {key: value for key, value in member.pax_headers.items() if key != "size"}
        self._archive.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        """Finishes the shard being written."""
        if self._archive is not None:
            self._archive.close()
            self._archive = None
        self._numbered.finish()

    def discard(self) -> None:
        """Removes the shard being written (the run failed inside it); the finished ones stay."""
        self._archive = None
        self._numbered.discard()


def _with_score(data: bytes, key: str, score: float) -> bytes:
    """The sample's json with the score added; json that is not an object is kept as it is."""
    try:
        value = json.loads(data)
    except ValueError:
        return data
    if not isinstance(value, dict):
        return data
    value[key] = score
    return json.dumps(value, ensure_ascii=False).encode()


class ParquetPartWriter:
    """Writes kept rows, with a score column, into numbered Parquet files (a new file also when columns change)."""

    def __init__(self, folder: str, size: int, score_key: str):
        self._numbered = _Numbered(folder, ".parquet", size)
        self._score_key = score_key
        self._writer: Any = None
        self._pending: List[Any] = []

    @property
    def files(self) -> List[Dict[str, Any]]:
        return self._numbered.files

    def write(self, table: Any, scores: List[float]) -> None:
        import pyarrow as pa

        table = table.append_column(pa.field(self._score_key, pa.float64()), pa.array(scores, pa.float64()))
        while table.num_rows:
            if self._writer is not None and not table.schema.equals(self._writer.schema):
                self.close()
            if self._writer is None or self._numbered.full():
                self._open(table.schema)
            room = self._numbered.size - self._numbered.files[-1]["count"]
            head, table = table.slice(0, room), table.slice(room)
            self._pending.append(head)
            self._numbered.files[-1]["count"] += head.num_rows
            if sum(part.num_rows for part in self._pending) >= _PARQUET_GROUP_ROWS:
                self._flush()

    def _open(self, schema: Any) -> None:
        import pyarrow.parquet as pq

        self.close()
        self._writer = pq.ParquetWriter(self._numbered.next_file(), schema)

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending))
            self._pending = []

    def close(self) -> None:
        """Finishes the file being written."""
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None
        self._numbered.finish()

    def discard(self) -> None:
        """Removes the file being written (the run failed inside it); the finished ones stay."""
        self._writer = None
        self._pending = []
        self._numbered.discard()
