"""Building WebDataset shards and Parquet files of encoded images for the source and filter tests."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

from PIL import Image

from helpers import natural_image

Members = List[Tuple[str, bytes]]


def jpeg_bytes(seed: int, width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(width, height, seed=seed)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(seed: int, width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(width, height, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_members(key: str, seed: int, image: bytes = b"") -> Members:
    """A WebDataset sample as img2dataset writes it: ``KEY.jpg``, ``KEY.json``, ``KEY.txt``."""
    return [(f"{key}.jpg", image or jpeg_bytes(seed)),
            (f"{key}.json", json.dumps({"key": key, "url": f"http://example.com/{key}.jpg"}).encode()),
            (f"{key}.txt", f"caption {key}".encode())]


def tar_bytes(members: Members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_tar(path: Path, members: Members, *, gzipped: bool = False) -> Path:
    data = tar_bytes(members)
    path.write_bytes(gzip.compress(data, mtime=0) if gzipped else data)
    return path


def member_offset(members: Members, index: int) -> int:
    """Where member ``index``'s data starts in :func:`tar_bytes` (PAX headers make it vary; found by search)."""
    data = tar_bytes(members)
    return data.index(members[index][1])


def read_tar(path: Path) -> Members:
    with tarfile.open(path) as archive:
        return [(member.name, archive.extractfile(member).read()) for member in archive if member.isfile()]


def write_parquet(path: Path, columns: Dict[str, list], row_group_size: int = 1_000_000) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def csv_rows(path: Path) -> List[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def file_bytes(paths: Iterable[Path]) -> Dict[str, bytes]:
    return {str(path): path.read_bytes() for path in paths}


def extract_images(members: Members, folder: Path, names: Sequence[str]) -> Dict[str, Path]:
    """The named members written as plain files (the folder the scores must equal)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = dict(members)
    out = {}
    for name in names:
        out[name] = folder / name.replace("/", "_")
        out[name].write_bytes(data[name])
    return out


def run_module(module: str, *args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``python -m module args`` in ``cwd`` with one torch thread (the tiny model gains nothing from more)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)


def memory_growth_mb(run: Callable[[], object]) -> Tuple[float, float]:
    """How far the memory that Python objects and pyarrow buffers hold rises above its level at the start while
    ``run()`` runs: tracemalloc's peak, and the peak of pyarrow's allocations (sampled every 2 ms). Unlike the
    resident size, neither depends on what the allocator keeps from earlier tests."""
    import threading
    import time
    import tracemalloc

    import pyarrow as pa

    arrow_start, arrow_peak, done = pa.total_allocated_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            arrow_peak[0] = max(arrow_peak[0], pa.total_allocated_bytes() - arrow_start)
            time.sleep(0.002)

    tracemalloc.start()
    python_start = tracemalloc.get_traced_memory()[0]
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
        python_peak = tracemalloc.get_traced_memory()[1] - python_start
        tracemalloc.stop()
    return python_peak / 2**20, arrow_peak[0] / 2**20
