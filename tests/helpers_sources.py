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


SHARD_IMAGES_A = ["000000.jpg", "000001.jpg", "000002.png"]


def build_shards(root: Path) -> Path:
    """Four shards under ``root/shards``: whole (with a non-image member), gzip (with a truncated jpg), cut inside a
    member's data, and cut inside a header; plus ``extracted/``, the images of the whole samples as plain files."""
    (root / "shards").mkdir()
    a = (sample_members("000000", 1) + sample_members("000001", 2)
         + [("000002.png", png_bytes(3)), ("000002.cls", b"7"), ("000003.jpg", b"caption, not a jpeg")])
    write_tar(root / "shards" / "00000.tar", a)
    broken_jpeg = jpeg_bytes(5)[:900]
    b = sample_members("000010", 4) + sample_members("000011", 5, image=broken_jpeg)
    write_tar(root / "shards" / "00001.tar.gz", b, gzipped=True)
    c = sample_members("000020", 6) + sample_members("000021", 7)
    (root / "shards" / "00002.tar").write_bytes(tar_bytes(c)[:member_offset(c, 3) + 200])
    d = sample_members("000030", 8) + sample_members("000031", 9)
    (root / "shards" / "00003.tar").write_bytes(tar_bytes(d)[:member_offset(d, 3) - 300])
    extract_images(a, root / "extracted" / "a", SHARD_IMAGES_A)
    extract_images(b, root / "extracted" / "b", ["000010.jpg"])
    extract_images(c, root / "extracted" / "c", ["000020.jpg"])
    extract_images(d, root / "extracted" / "d", ["000030.jpg"])
    return root


def build_parquet_files(root: Path) -> Path:
    """``img2dataset.parquet`` (``key``, ``caption``, ``jpg`` with a null and a non-image) and ``hf.parquet`` (Hugging
    Face's ``image`` struct, an int ``label``), both in row groups of 2, and the five images as ``root/I.jpg``."""
    images = [jpeg_bytes(20 + i) for i in range(5)]
    for i, data in enumerate(images):
        (root / f"{i}.jpg").write_bytes(data)
    write_parquet(root / "img2dataset.parquet", {
        "key": [f"k{i}" for i in range(5)], "caption": [f"c{i}" for i in range(5)],
        "jpg": images[:3] + [None, b"not an image"]}, row_group_size=2)
    write_parquet(root / "hf.parquet", {
        "image": [{"bytes": data, "path": f"{i}.jpg"} for i, data in enumerate(images)],
        "label": list(range(5))}, row_group_size=2)
    return root
