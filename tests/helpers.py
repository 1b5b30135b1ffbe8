"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` RGB pixels, with almost no pixel data: its size can be read, but
    it cannot be decoded (and costs nothing to write)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def as_displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The ``H x W x C`` pixels a viewer shows for ``stored`` pixels tagged with EXIF ``orientation`` (1-8), from the
    EXIF definition: 2 mirrored, 3 turned 180 degrees, 4 flipped, 5 transposed, 6 to be turned 90 degrees clockwise,
    7 transversed, 8 to be turned 90 degrees anticlockwise."""
    transforms = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(transforms[orientation](stored))
