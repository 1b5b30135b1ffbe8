"""Streaming WebDataset tar shards member by member, never extracting them.

A shard is read once, front to back (also from an object store, and gzip-compressed); each image member becomes an
:class:`~.entries.Entry` named ``SHARD::MEMBER`` with its WebDataset ``key``. What tarfile forgives is caught here:
a shard cut off inside a header ends the iteration silently in :mod:`tarfile`, so the end-of-archive block is checked.
"""

from __future__ import annotations

import gzip
import os
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import IO, AbstractSet, Callable, Iterator, List, Optional, Tuple

from ..messages import first_line
from ..files import image_extensions
from .entries import SOURCE_SEPARATOR, Entry

# WebDataset's split of a member name: the key is everything up to the first dot of the file name (folders kept).
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_BLOCK = 512
_BROKEN = (tarfile.TarError, OSError, EOFError, zlib.error)


def sample_key(member: str) -> str:
    """The WebDataset ``__key__`` of a member name (``a/000123.seg.png`` -> ``a/000123``)."""
    match = _KEY.match(member)
    return match[1] if match else member


def is_image_member(member: str) -> bool:
    """Whether a member is scored: its last extension is one Pillow opens (``.json``, ``.txt`` are not)."""
    return os.path.splitext(member)[1].lower() in image_extensions()


@dataclass
class Sample:
    """The members of one WebDataset sample, in shard order, with their bytes.

    Attributes:
        shard: The shard's path.
        key: The sample's key.
        members: ``(TarInfo, bytes)`` of every regular-file member.
        error: Why the sample is incomplete (the shard broke inside it); empty when whole.
    """

    shard: str
    key: str
    members: List[Tuple[tarfile.TarInfo, bytes]] = field(default_factory=list)
    error: str = ""


class _TailReader:
    """A binary stream that remembers what it read last, so the block after the last member can be examined."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self.position = 0
        self._tail = b""
        self._tail_start = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        kept = self._tail[-2 * tarfile.RECORDSIZE:] + data
        self._tail_start = self.position + len(data) - len(kept)
        self._tail = kept
        self.position += len(data)
        return data

    def clean_end(self, offset: int) -> bool:
        """Whether the archive has a whole zero block at ``offset`` (where tarfile stopped reading headers)."""
        block = self._tail[offset - self._tail_start:offset - self._tail_start + _BLOCK]
        return offset >= self._tail_start and len(block) == _BLOCK and not block.strip(b"\0")


def _members(shard: str, opener: Callable[[str], IO[bytes]]) -> Iterator[Tuple[Optional[tarfile.TarInfo], bytes, str]]:
    """``(member, data, "")`` for each regular file of the shard, then ``(member or None, b"", error)`` if it breaks.

    The error names where it broke: inside ``member`` (the shard ends in its data), or after it.
    """
    member: Optional[tarfile.TarInfo] = None
    try:
        with opener(shard) as raw:
            head = raw.read(2)
            stream = _Prefixed(head, raw)
            reader = _TailReader(gzip.GzipFile(fileobj=stream) if head == b"\x1f\x8b" else stream)
            archive = tarfile.open(fileobj=reader, mode="r|")
            for member in archive:
                if not member.isfile():
                    continue
                try:
                    data = archive.extractfile(member).read()
                except _BROKEN as error:
                    yield member, b"", f"the shard ends inside this member ({first_line(error)})"
                    return
                yield member, data, ""
            if not reader.clean_end(archive.offset):
                yield member, b"", "the shard is truncated (it ends inside a header, with no end-of-archive block)"
    except _BROKEN as error:
        cause = "not a tar shard" if member is None else "the shard is broken"
        yield member, b"", f"{cause}: {_describe(error)}"


class _Prefixed:
    """``raw`` with the bytes already read from it put back in front."""

    def __init__(self, head: bytes, raw: IO[bytes]):
        self._head = head
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._raw.read(size)
        if size < 0:
            data, self._head = self._head + self._raw.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data + (self._raw.read(size - len(data)) if size > len(data) else b"")


def _describe(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, EOFError) or "end of" in str(error):
        return f"truncated ({first_line(error)})"
    return first_line(error)


def iter_tar(shard: str, opener: Callable[[str], IO[bytes]], skip: AbstractSet[str] = frozenset()) -> Iterator[Entry]:
    """The image members of a shard as entries, then one error entry if the shard is broken.

    A broken shard's error entry is named ``SHARD::MEMBER`` when it broke inside that member's data, else
    ``SHARD`` (with the last member read named in the error). Names in ``skip`` are not yielded (``--resume``).
    """
    for member, data, error in _members(shard, opener):
        if error:
            inside = member is not None and error.startswith("the shard ends inside")
            if inside and not is_image_member(member.name):
                error = f"the shard ends inside {member.name}"
                inside = False
            elif member is not None and not inside:
                error = f"{error}; the last member read was {member.name}"
            name = f"{shard}{SOURCE_SEPARATOR}{member.name}" if inside else shard
            if name not in skip:
                yield Entry(name, None, {"key": sample_key(member.name) if inside else ""}, error)
            return
        name = f"{shard}{SOURCE_SEPARATOR}{member.name}"
        if is_image_member(member.name) and name not in skip:
            yield Entry(name, data, {"key": sample_key(member.name)})


def iter_samples(shard: str, opener: Callable[[str], IO[bytes]]) -> Iterator[Sample]:
    """The samples of a shard: consecutive members sharing a key, as WebDataset groups them.

    A shard that breaks leaves its last sample with an ``error``; a shard that cannot be read at all gives one
    sample with key ``""`` and the error.
    """
    sample: Optional[Sample] = None
    for member, data, error in _members(shard, opener):
        if error:
            key = "" if member is None else sample_key(member.name)
            if sample is not None and sample.key != key:
                yield sample  # complete: the shard broke in the next sample
                sample = None
            yield Sample(shard, key, [], error) if sample is None else _broken(sample, error)
            return
        key = sample_key(member.name)
        if sample is not None and key != sample.key:
            yield sample
            sample = None
        if sample is None:
            sample = Sample(shard, key)
        sample.members.append((member, data))
    if sample is not None:
        yield sample


def _broken(sample: Sample, error: str) -> Sample:
    sample.error = error
    return sample
