"""Throughput of reading images where they lie: tar shards and Parquet against the same JPEGs as files.

The same ``--count`` JPEGs (``--size``, default 2,000 of 512x384, ``tests/helpers.natural_image``, quality 90) are
written as a folder of files, as 4 WebDataset tar shards (``KEY.jpg`` + ``KEY.json`` + ``KEY.txt``), as 40 shards
(memory must not grow with the number of shards) and as one Parquet file (a ``jpg`` column, row groups of 500 rows,
as img2dataset writes them). Each run is a fresh process that scores one of them with ``qualiclip-score``'s
``main`` and reports its wall time from the model loaded to the last row written, images/s, the peak RSS of the
process and how far RSS rose above its level once the model was loaded (sampled every 10 ms): the memory the
scoring took. Runs alternate between the inputs, ``--repeats`` times; figures are medians, and the ratio against
the folder is per round (each input's run next to the folder's run of that round) so that load from other processes
hits both alike.

The model is the tiny test CLIP by default (``--model tiny``): reading and decoding then dominate, the harshest
comparison for the readers. ``--model rn50`` uses a full-size RN50 with random weights, where the model dominates.

    python benchmarks/bench_sources.py [--count 2000] [--repeats 3] [--model tiny|rn50] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, os, resource, sys, threading, time
import qualiclip_infer.cli as cli
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
loaded, peak = {}, [0.0]
def sample():
    while True:
        peak[0] = max(peak[0], rss())
        time.sleep(0.01)
original = cli.load_scorer
def timed_load(args, prompts):
    scorer = original(args, prompts)
    loaded["rss"], loaded["at"] = rss(), time.perf_counter()
    threading.Thread(target=sample, daemon=True).start()
    return scorer
cli.load_scorer = timed_load
status = cli.main(sys.argv[1:])
wall = time.perf_counter() - loaded["at"]
print(json.dumps({"status": status, "scoring_s": wall, "growth_mib": max(peak[0], rss()) - loaded["rss"],
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _images(folder: Path, count: int, width: int, height: int) -> List[bytes]:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import natural_image
    from PIL import Image

    data = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(natural_image(width, height, seed=index)).save(buffer, format="JPEG", quality=90)
        data.append(buffer.getvalue())
    return data


def _write_inputs(root: Path, images: List[bytes]) -> Dict[str, str]:
    (root / "folder").mkdir()
    for index, data in enumerate(images):
        (root / "folder" / f"{index:09d}.jpg").write_bytes(data)
    for shards in (4, 40):
        folder = root / f"shards{shards}"
        folder.mkdir()
        per = -(-len(images) // shards)
        for shard in range(shards):
            with tarfile.open(folder / f"{shard:05d}.tar", "w") as archive:
                for index in range(shard * per, min(len(images), (shard + 1) * per)):
                    key = f"{index:09d}"
                    for name, member in ((f"{key}.jpg", images[index]),
                                         (f"{key}.json", json.dumps({"key": key}).encode()),
                                         (f"{key}.txt", b"a caption")):
                        info = tarfile.TarInfo(name)
                        info.size = len(member)
                        archive.addfile(info, io.BytesIO(member))
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = [f"{index:09d}" for index in range(len(images))]
    pq.write_table(pa.table({"key": keys, "jpg": images}), root / "images.parquet", row_group_size=500)
    return {"folder": str(root / "folder"), "4 shards": str(root / "shards4" / "{00000..00003}.tar"),
            "40 shards": str(root / "shards40" / "{00000..00039}.tar"), "Parquet": str(root / "images.parquet")}


def _checkpoint(folder: Path, model: str) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import RN50_CONFIG, TINY_CONFIG, write_checkpoint

    return str(write_checkpoint(folder / f"{model}.pth", TINY_CONFIG if model == "tiny" else RN50_CONFIG, seed=0))


def _run(path: str, weights: str, threads: int, out: Path) -> dict:
    command = [sys.executable, "-c", CHILD, path, "--weights", weights, "--device", "cpu", "--threads", str(threads),
               "-q", "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(f"{path}: {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", default="512x384")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=("tiny", "rn50"), default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        inputs = _write_inputs(root, _images(root, args.count, width, height))
        weights = _checkpoint(root, args.model)
        runs: Dict[str, List[dict]] = {name: [] for name in inputs}
        for _ in range(args.repeats):
            for name, path in inputs.items():
                runs[name].append(_run(path, weights, args.threads, root / "rows.csv"))
    _report(args, runs)


def _report(args: argparse.Namespace, runs: Dict[str, List[dict]]) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"- Date: {datetime.date.today()}; machine: {cpu}, {os.cpu_count()} CPUs; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"- Command: `python benchmarks/bench_sources.py --count {args.count} --size {args.size} --repeats "
          f"{args.repeats} --model {args.model} --threads {args.threads}`\n")
    print("| input | images/s (median) | per-round ratio to the folder (median) | RSS rise while scoring MiB "
          "(median) | peak RSS MiB (median) |")
    print("|---|---:|---:|---:|---:|")
    folder = runs["folder"]
    for name, results in runs.items():
        rates = [args.count / result["scoring_s"] for result in results]
        ratios = [f["scoring_s"] / result["scoring_s"] for f, result in zip(folder, results)]
        print(f"| {name} | {statistics.median(rates):.1f} | {statistics.median(ratios):.3f}x | "
              f"{statistics.median(result['growth_mib'] for result in results):.0f} | "
              f"{statistics.median(result['peak_mib'] for result in results):.0f} |")
    each = "; ".join(f"{name}: " + ", ".join(f"{args.count / result['scoring_s']:.1f}" for result in results)
                     for name, results in runs.items())
    print(f"\n- Each run's images/s: {each}")

if __name__ == "__main__":
    main()
