"""Helpers of tests/test_robustness.py: running qualiclip-score as a subprocess, with a read that never ends or a disk
that fills up staged inside it, and files of many formats made on the spot.

Run as a script (``python helpers_robust.py MODE ARG... -- CLI-ARGS``) it is the patched command:

- ``stuck NAME:N``: the Nth opening of the input whose path ends with NAME (1: its header, 2: its decode) blocks
  forever, as on a stalled network mount, after writing ``stuck`` to standard error.
- ``full BYTES``: the ``-o`` file takes BYTES bytes, then every write fails with ENOSPC (a full disk).
"""

from __future__ import annotations

import errno
import io
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Sequence

import numpy as np
from PIL import Image

TIMEOUT = 120  # no subprocess of these tests may hang the suite


def score_command(*args: object, env: dict = None, stdin=None, timeout: float = TIMEOUT, **options
                  ) -> subprocess.CompletedProcess:
    """``qualiclip-score ARGS`` as a subprocess, its output captured as text."""
    return subprocess.run([sys.executable, "-m", "qualiclip_infer", *map(os.fspath, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=stdin, **options)


def patched_command(mode: str, argument: object, *args: object) -> List[str]:
    """The command line of qualiclip-score with one of this module's patches (see the module docstring)."""
    return [sys.executable, os.path.abspath(__file__), mode, str(argument), "--", *map(str, args)]


def wait_for_text(path: Path, seconds: float = 60) -> bytes:
    """The content of ``path`` once it has some (a running command writing its first row)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return path.read_bytes()
        time.sleep(0.05)
    raise AssertionError(f"{path} still empty after {seconds} s")


def mixed_formats(folder: Path) -> List[Path]:
    """One small picture in each of TGA, ICO, MPO, PCX, SGI, XBM, PNG and JPEG, written with Pillow's own writers.

    The ICO file's directory says its icon takes 0x84AC4 bytes (Pillow's ICO reader ignores that field), which
    makes its first 18 bytes a valid TGA header too: once Pillow's TGA plugin is ahead of its ICO plugin (after a
    .tga file was opened), ``Image.open`` reads the ICO file as a 32x19140 TGA image that cannot be decoded.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for index, (suffix, fmt, options) in enumerate([
            (".tga", "TGA", {}), (".ico", "ICO", {"sizes": [(48, 48)]}), (".mpo", "MPO", {}),
            (".pcx", "PCX", {}), (".sgi", "SGI", {}), (".xbm", "XBM", {}), (".png", "PNG", {}),
            (".jpg", "JPEG", {})]):
        pixels = rng.integers(0, 256, (48 + index, 56, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if fmt == "XBM":
            image = image.convert("1")
        if fmt == "ICO":
            image = image.resize((48, 48))
        path = folder / f"picture{index}{suffix}"
        if fmt == "MPO":
            image.save(path, "MPO", save_all=True, append_images=[image.rotate(90)])
        else:
            image.save(path, fmt, **options)
        if fmt == "ICO":
            _claim_tga_header(path)
        paths.append(path)
    return paths


class _MeteredFile(io.FileIO):
    """A file that delivers at most ``budget`` bytes in all, then fails the read (a probe that must stay bounded)."""

    def __init__(self, path: object, budget: int):
        super().__init__(path, "rb")
        self.left = budget

    def readinto(self, buffer) -> int:
        count = super().readinto(buffer)
        self.left -= count or 0
        if self.left < 0:
            raise AssertionError(f"read past its budget of bytes ({self.name})")
        return count


def metered_open(budget: int):
    """A stand-in for ``qualiclip_infer.images.open_regular`` whose files refuse to deliver over ``budget`` bytes."""
    return lambda path: io.BufferedReader(_MeteredFile(path, budget))


def _claim_tga_header(path: Path) -> None:
    """Sets the byte count of an ICO file's first icon so that its header also reads as TGA's: depth 8 (byte 16),
    height 19140 (bytes 14-15); byte 12 is already the icon's 32 bits per pixel, read as a width of 32."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 14, 0x00084AC4)
    path.write_bytes(bytes(data))


def _stuck(spec: str) -> None:
    from qualiclip_infer import images

    name, _, nth = spec.partition(":")
    real_open = images.open_regular
    opened = []
    never = threading.Event()

    def open_regular(path):
        if os.fspath(path).endswith(name):
            opened.append(path)
            if len(opened) == int(nth or 1):
                print("stuck", file=sys.stderr, flush=True)
                never.wait()
        return real_open(path)

    images.open_regular = open_regular


class _FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left."""

    room = 0

    def write(self, data) -> int:
        if _FullDisk.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken = min(len(data), _FullDisk.room)
        _FullDisk.room -= taken
        return super().write(bytes(data[:taken]))


def _full(room: str) -> None:
    from qualiclip_infer import cli, output

    _FullDisk.room = int(room)
    real_open = output.open_output

    def open_output(path, append=False):
        if path is None:
            return real_open(path, append)
        raw = _FullDisk(path, "a" if append else "w")
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", errors="surrogateescape", newline="")

    cli.open_output = open_output


def main(argv: Sequence[str]) -> int:
    mode, argument, separator, *rest = argv
    assert separator == "--"
    {"stuck": _stuck, "full": _full}[mode](argument)
    from qualiclip_infer.cli import main as score

    return score(rest)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    raise SystemExit(main(sys.argv[1:]))
